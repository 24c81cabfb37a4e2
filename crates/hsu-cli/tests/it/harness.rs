//! Starting `hsu` processes and running `hsu` commands against them.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// The end of the tests' Python HTTP units, after their handler class `H`: quiet request logs,
/// exit once the script (`me`) is deleted, serve on the port in `argv[1]`.
pub const PY_SERVE: &str = r#"    def log_message(self, *a):
        pass
def watchdog():
    while os.path.exists(me):
        time.sleep(0.2)
    os._exit(0)
threading.Thread(target=watchdog, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

pub fn hsu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hsu"))
}

/// A port free for both TCP and UDP on 127.0.0.1 (QUIC listens on UDP, the API on TCP).
pub fn free_addr() -> SocketAddr {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for both TCP and UDP after 100 tries");
}

/// Polls `f` until it returns Some, failing after [`DEADLINE`] with `what` and the last state.
pub fn poll<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    poll_for(DEADLINE, what, f)
}

/// [`poll`] with its own deadline.
pub fn poll_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < deadline {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {deadline:?} waiting for {what}; last: {last}");
}

/// One running `hsu node` process.
pub struct NodeProc {
    pub name: String,
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    child: Option<Child>,
}

/// Faster than the defaults so failovers are quick, but an append (fsync included) still fits
/// in a heartbeat interval on a loaded machine: openraft times appends out after one interval.
/// A node that stops reporting is down after 3 s (instead of 10 s).
pub const NODE_GRACE: Duration = Duration::from_secs(3);
const TIMING: [&str; 6] = ["--heartbeat", "100ms", "--election-timeout", "400ms", "--node-grace", "3s"];

impl NodeProc {
    fn spawn(
        name: &str,
        dir: PathBuf,
        listen: SocketAddr,
        api: SocketAddr,
        args: &[String],
        token: Option<&str>,
    ) -> NodeProc {
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let log = std::fs::File::options().create(true).append(true).open(log_path(&dir)).unwrap();
        let child = hsu()
            .args(args)
            .args(TIMING)
            .env("HSU_LOG", "info,openraft=warn,hsu_control=debug")
            // The token travels in the environment, not on the command line where `ps` shows it.
            .envs(token.map(|t| ("HSU_TOKEN", t)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        NodeProc { name: name.into(), dir, listen, api, child: Some(child) }
    }

    pub fn init(root: &Path, name: &str) -> NodeProc {
        let (dir, listen, api) = (root.join(name), free_addr(), free_addr());
        let args = ["node", "init", "--name", name, "--data-dir"]
            .map(String::from)
            .into_iter()
            .chain([dir.display().to_string(), "--listen".into(), listen.to_string(), "--api".into(), api.to_string()])
            .collect::<Vec<_>>();
        let n = NodeProc::spawn(name, dir, listen, api, &args, None);
        poll(&format!("{name} to write its join token"), || {
            std::fs::read_to_string(n.dir.join("join-token")).map_err(|e| e.to_string()).map(drop)
        });
        n
    }

    pub fn join(root: &Path, name: &str, server: SocketAddr, token: &str) -> NodeProc {
        NodeProc::join_with(root, name, server, token, &[])
    }

    /// `join` with more arguments (`--role agent`, `--label k=v`).
    pub fn join_with(root: &Path, name: &str, server: SocketAddr, token: &str, extra: &[&str]) -> NodeProc {
        let (dir, listen, api) = (root.join(name), free_addr(), free_addr());
        let args = ["node", "join", &server.to_string(), "--name", name, "--data-dir"]
            .map(String::from)
            .into_iter()
            .chain([dir.display().to_string(), "--listen".into(), listen.to_string(), "--api".into(), api.to_string()])
            .chain(extra.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>();
        NodeProc::spawn(name, dir, listen, api, &args, Some(token))
    }

    /// `hsu node run` on the same data directory, listening for node-to-node traffic on a new
    /// address (as after a DHCP change): the node keeps its identity.
    pub fn restart_moved(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.listen = free_addr();
        let args = vec![
            "node".into(),
            "run".into(),
            "--data-dir".into(),
            self.dir.display().to_string(),
            "--listen".into(),
            self.listen.to_string(),
        ];
        let again = NodeProc::spawn(&self.name, self.dir.clone(), self.listen, self.api, &args, None);
        self.child = Some(again.into_child());
    }

    /// `hsu node run` on the same data directory and addresses.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        let args = vec!["node".into(), "run".into(), "--data-dir".into(), self.dir.display().to_string()];
        let again = NodeProc::spawn(&self.name, self.dir.clone(), self.listen, self.api, &args, None);
        self.child = Some(again.into_child());
    }

    fn into_child(mut self) -> Child {
        self.child.take().unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself (after `hsu node leave`).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("not running");
        poll(&format!("{} to exit", self.name), || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        })
    }

    /// The exit status once the process has exited by itself (for [`poll_for`]).
    pub fn try_exit(&mut self) -> Result<std::process::ExitStatus, String> {
        let child = self.child.as_mut().ok_or_else(|| format!("{} is not running", self.name))?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Ok(status)
            }
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.dir)).unwrap_or_default()
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log());
        }
    }
}

/// Runs an `hsu` client command with `config` against `endpoint`.
pub fn cli(config: &Path, endpoint: SocketAddr, args: &[&str]) -> Output {
    hsu()
        .arg("--config")
        .arg(config)
        .arg("--endpoint")
        .arg(endpoint.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns stdout.
pub fn cli_ok(config: &Path, endpoint: SocketAddr, args: &[&str]) -> Result<String, String> {
    let out = cli(config, endpoint, args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("hsu {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

pub fn status_json(config: &Path, endpoint: SocketAddr) -> Result<serde_json::Value, String> {
    let text = cli_ok(config, endpoint, &["status", "-o", "json"])?;
    serde_json::from_str(&text).map_err(|e| format!("status is not JSON: {e}: {text}"))
}

/// Three nodes (`init` n1, `join` n2 and n3) once they are three healthy voters; with n1's admin
/// config and the join token.
pub fn three_voters(root: &Path) -> ([NodeProc; 3], PathBuf, String) {
    let n1 = NodeProc::init(root, "n1");
    let config = n1.dir.join("admin.conf");
    let token = std::fs::read_to_string(n1.dir.join("join-token")).unwrap().trim().to_string();
    let n2 = NodeProc::join(root, "n2", n1.api, &token);
    let n3 = NodeProc::join(root, "n3", n1.api, &token);
    let nodes = [n1, n2, n3];
    poll("three healthy voters", || {
        let s = status_json(&config, nodes[0].api)?;
        let m = s["members"].as_array().unwrap();
        if m.len() == 3 && m.iter().all(|m| m["healthy"] == true && m["role"] == "voter") {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    (nodes, config, token)
}

/// A test unit (Python): writes its pid to `<its dir>/pids/<HSU_UNIT>` and runs until its
/// script file is removed (so a temporary directory's cleanup ends it).
pub const PID_UNIT: &str = r#"
import os, sys, time
me = os.path.abspath(__file__)
pids = os.path.join(os.path.dirname(me), "pids")
os.makedirs(pids, exist_ok=True)
with open(os.path.join(pids, os.environ["HSU_UNIT"]), "w") as f:
    f.write(str(os.getpid()))
while os.path.exists(me):
    time.sleep(0.2)
"#;

/// The pid a test unit wrote to `<dir>/pids/<unit>`.
pub fn pid_of(dir: &Path, unit: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join("pids").join(unit)).ok()?.trim().parse().ok()
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}
