//! Real `hsu` processes on the test hosts: `init` on the first host, `join` through the real
//! join flow on the others, `run` to restart; signals for kill -9 and pause/resume; cluster
//! status over the public gRPC API from the root namespace.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hsu_proto::v1 as pb;
use hsu_sdk::client::{self, ClientConfig, Cluster as ClusterClient, Kv};

use crate::lazyfs::LazyFs;
use crate::net::{self, Host, Net};

pub const QUIC_PORT: u16 = 7000;
pub const API_PORT: u16 = 7001;

/// Raft timings given to every node.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat: &'static str,
    pub election_timeout: &'static str,
}

/// What a scenario's cluster looks like before its faults start.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Hosts (namespaces) created.
    pub hosts: usize,
    /// Nodes started before the workload: `init` on h1, then `join` on h2.. in order.
    pub initial: usize,
    /// `--voters` (3 or 5): joins with `--role auto` become voters up to this many.
    pub voters: u32,
    pub timing: Timing,
    /// FAILPOINTS given to every node from the start (e.g. `quic-send=return(50)`).
    pub failpoints: Option<&'static str>,
    /// Every node's data directory on its own [`LazyFs`], so that a power cut can be simulated.
    pub lazy_disks: bool,
}

/// One node: its host, data directory and process.
pub struct Node {
    pub host: Host,
    pub dir: PathBuf,
    /// The node id the cluster gave it (0 until it has joined).
    pub id: u64,
    child: Option<Child>,
    pub paused: bool,
    /// FAILPOINTS of this node's current process, if any.
    pub failpoints: Option<String>,
    /// The lazy filesystem its data directory is on (`Spec::lazy_disks`).
    pub disk: Option<LazyFs>,
}

impl Node {
    pub fn api(&self) -> String {
        format!("{}:{API_PORT}", self.host.ip)
    }

    pub fn listen(&self) -> String {
        format!("{}:{QUIC_PORT}", self.host.ip)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Exits the process if it has exited by itself (returns its status then).
    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status.to_string())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// The last `lines` lines of this node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The running cluster. Dropping it kills every node, removes the data directories and the
/// namespaces (in that order), also while unwinding from a panic.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub net: Net,
    pub admin: ClientConfig,
    pub spec: Spec,
    root: PathBuf,
    hsu: PathBuf,
    /// Arguments every node gets (`--unsafe-no-fsync` for the run that shows t90 can fail).
    extra_args: Vec<String>,
    /// Where to copy the node logs when the cluster is dropped (set when a scenario fails).
    pub keep_logs: Option<PathBuf>,
}

/// Data directories live under `/tmp/hsuct-run` (one run at a time: the namespace names are
/// fixed too).
pub fn data_root() -> PathBuf {
    std::env::temp_dir().join(format!("{}-run", net::PREFIX))
}

impl Cluster {
    /// Creates the hosts and starts `spec.initial` nodes: init on h1, join on the others, each
    /// join waited for until the node is a member.
    pub async fn start(spec: Spec, hsu: &Path, extra_args: &[String]) -> Result<Cluster> {
        let root = data_root();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let net = Net::create(spec.hosts)?;
        crate::nft::setup(&net.hosts)?;
        net.wait_reachable(Duration::from_secs(10))?;
        let mut nodes = Vec::new();
        for h in &net.hosts {
            let dir = root.join(&h.name);
            let disk = match spec.lazy_disks {
                true => {
                    let disk = LazyFs::mount(&root.join(format!("{}.disk", h.name)), &dir)?;
                    disk.self_check().context("the lazy filesystem fails its own check")?;
                    Some(disk)
                }
                false => None,
            };
            nodes.push(Node {
                host: h.clone(),
                dir,
                id: 0,
                child: None,
                paused: false,
                failpoints: spec.failpoints.map(String::from),
                disk,
            });
        }
        let mut cluster = Cluster {
            nodes,
            net,
            admin: ClientConfig::default(),
            spec,
            root,
            hsu: hsu.to_path_buf(),
            extra_args: extra_args.to_vec(),
            keep_logs: None,
        };
        cluster.init().await?;
        for i in 1..cluster.spec.initial {
            cluster.join(i, "auto").await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize, args: &[String]) -> Result<()> {
        let node = &self.nodes[i];
        let log = File::options().create(true).append(true).open(node.log_path())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.host.ns])
            .arg(&self.hsu)
            .args(args)
            .args(["--heartbeat", self.spec.timing.heartbeat, "--election-timeout", self.spec.timing.election_timeout])
            .args(&self.extra_args)
            .env("HSU_LOG", "info,openraft=warn,quinn=warn,sled=warn")
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(fp) = &node.failpoints {
            cmd.env("FAILPOINTS", fp);
        }
        // `ip netns exec` execs the command, so the child's pid is the node's.
        let child = cmd.spawn().with_context(|| format!("cannot start {} in {}", self.hsu.display(), node.host.ns))?;
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        Ok(())
    }

    async fn init(&mut self) -> Result<()> {
        let n = &self.nodes[0];
        let args: Vec<String> = [
            "node",
            "init",
            "--name",
            &n.host.name,
            "--data-dir",
            &n.dir.display().to_string(),
            "--listen",
            &n.listen(),
            "--api",
            &n.api(),
            "--voters",
            &self.spec.voters.to_string(),
        ]
        .map(String::from)
        .to_vec();
        self.spawn(0, &args)?;
        let token_file = self.nodes[0].dir.join("join-token");
        let start = Instant::now();
        while std::fs::metadata(&token_file).is_err() {
            self.check_alive(0, "h1 to write its join token", start, Duration::from_secs(30), "no token file")?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.admin = ClientConfig::load(&self.nodes[0].dir.join("admin.conf"))?;
        self.nodes[0].id = 1;
        Ok(())
    }

    /// Starts `hsu node join` on host `i` (role auto|voter|learner) and waits until the cluster
    /// lists it as a member with that role (auto: whatever the leader chose).
    pub async fn join(&mut self, i: usize, role: &str) -> Result<()> {
        let token = std::fs::read_to_string(self.nodes[0].dir.join("join-token"))?.trim().to_string();
        let n = &self.nodes[i];
        let server = self.nodes[0].api();
        let args: Vec<String> = [
            "node",
            "join",
            &server,
            "--token",
            &token,
            "--name",
            &n.host.name,
            "--data-dir",
            &n.dir.display().to_string(),
            "--listen",
            &n.listen(),
            "--api",
            &n.api(),
            "--voters",
            &self.spec.voters.to_string(),
            "--role",
            role,
        ]
        .map(String::from)
        .to_vec();
        self.spawn(i, &args)?;
        let name = self.nodes[i].host.name.clone();
        let what = format!("{name} to join as {role}");
        let start = Instant::now();
        let id = loop {
            let last = match self.status_any().await {
                Ok(s) => match s.members.iter().find(|m| m.name == name) {
                    None => "not a member yet".to_string(),
                    Some(m) if role != "auto" && m.role != role => format!("member as {}", m.role),
                    // A voter is added only after it caught up as a learner: wait for the end.
                    Some(m) if self.nodes[i].log_tail(usize::MAX).contains("joined; this node is") => break m.id,
                    Some(_) => "join still in progress".to_string(),
                },
                Err(e) => e,
            };
            self.check_alive(i, &what, start, Duration::from_secs(60), &last)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.nodes[i].id = id;
        Ok(())
    }

    /// Fails when node `i` has exited or `timeout` has passed since `start`.
    fn check_alive(&mut self, i: usize, what: &str, start: Instant, timeout: Duration, last: &str) -> Result<()> {
        if let Some(status) = self.nodes[i].exited() {
            bail!(
                "{} exited ({status}) while waiting for {what}; its log ends:\n{}",
                self.nodes[i].host.name,
                self.nodes[i].log_tail(30)
            );
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        Ok(())
    }

    /// Endpoints of the nodes started so far (clients and pollers use these).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.id != 0).map(Node::api).collect()
    }

    /// Connected clients for `endpoint`, bounded in time.
    pub async fn connect(admin: &ClientConfig, endpoint: &str) -> Result<(ClusterClient, Kv), String> {
        match tokio::time::timeout(Duration::from_secs(2), client::connect(admin, Some(endpoint))).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("connecting to {endpoint} timed out")),
        }
    }

    /// `Cluster/Status` from node `i`, bounded in time.
    pub async fn status(&self, i: usize) -> Result<pb::StatusResponse, String> {
        status_at(&self.admin, &self.nodes[i].api()).await
    }

    /// Status from the first node that answers, skipping dead or paused ones.
    pub async fn status_any(&self) -> Result<pb::StatusResponse, String> {
        let mut last = "no running node".to_string();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.running() && !n.paused && n.id != 0 || i == 0 && n.running() {
                match self.status(i).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// The leader with the highest term that some running node reports, as (node index, term).
    pub async fn leader(&self) -> Option<(usize, u64)> {
        let asks = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.running() && !n.paused && n.id != 0)
            .map(|(i, _)| self.status(i));
        let answers = futures::future::join_all(asks).await;
        let best = answers.into_iter().flatten().filter(|s| s.leader_id != 0).max_by_key(|s| s.term)?;
        let i = self.nodes.iter().position(|n| n.id == best.leader_id)?;
        Some((i, best.term))
    }

    /// Waits (bounded) until some node reports a leader; returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<(usize, u64)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    // ----- faults on processes -----

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Power cut on host `i`: its node dies, and what its disk had not made durable (written
    /// but not fsynced) is gone. Returns the bytes lost.
    pub fn power_cut(&mut self, i: usize) -> Result<usize> {
        self.nodes[i].kill9();
        let disk = self.nodes[i].disk.as_ref().context("this scenario's hosts have no lazy disks")?;
        Ok(disk.power_cut())
    }

    /// `hsu node run --data-dir` on host `i` (same addresses).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].running() {
            return Ok(());
        }
        let dir = self.nodes[i].dir.display().to_string();
        self.spawn(i, &["node".into(), "run".into(), "--data-dir".into(), dir])
    }

    fn signal(&mut self, i: usize, sig: &str) -> Result<()> {
        let pid = self.nodes[i].pid().context("not running")?;
        net::run("kill", &[sig, &pid.to_string()])?;
        Ok(())
    }

    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, "-STOP")?;
        self.nodes[i].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].paused {
            self.signal(i, "-CONT")?;
            self.nodes[i].paused = false;
        }
        Ok(())
    }

    /// Ends every fault: resumes paused nodes, restarts dead ones (with the cluster's own
    /// FAILPOINTS), removes all nftables rules. Returns the nodes that had exited by themselves
    /// (not killed by the nemesis): a failure of its own.
    pub fn heal_all(&mut self) -> Result<Vec<String>> {
        let mut exited = Vec::new();
        crate::nft::apply(&self.net.hosts, &crate::nft::Rules::default())?;
        for i in 0..self.nodes.len() {
            if self.nodes[i].id == 0 {
                continue;
            }
            self.resume(i)?;
            if let Some(status) = self.nodes[i].exited() {
                let n = &self.nodes[i];
                exited.push(format!("{} exited by itself ({status}); log ends:\n{}", n.host.name, n.log_tail(15)));
            }
            if !self.nodes[i].running() {
                self.nodes[i].failpoints = self.spec.failpoints.map(String::from);
                self.restart(i)?;
            }
        }
        Ok(exited)
    }

    /// Nodes that exited without being killed (a crash is a failure of its own).
    pub fn crashed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if let Some(status) = n.exited() {
                out.push(format!("{} exited by itself ({status}); log ends:\n{}", n.host.name, n.log_tail(20)));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        // Unmounted before the directories under them are removed.
        for n in &mut self.nodes {
            n.disk = None;
        }
        if let Some(dest) = &self.keep_logs {
            let _ = std::fs::create_dir_all(dest);
            for n in &self.nodes {
                let _ = std::fs::copy(n.log_path(), dest.join(format!("{}.log", n.host.name)));
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub async fn status_at(admin: &ClientConfig, endpoint: &str) -> Result<pb::StatusResponse, String> {
    let (mut c, _) = Cluster::connect(admin, endpoint).await?;
    match tokio::time::timeout(Duration::from_secs(2), c.status(pb::StatusRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{endpoint}: {:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("{endpoint}: status timed out")),
    }
}
