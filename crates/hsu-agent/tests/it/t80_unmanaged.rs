//! Unmanaged units: a process started outside HSU is found by pid file, by command line and by
//! port, reported alive, then dead once it is killed from outside; the agent signals it only
//! when the spec allows it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use hsu_agent::process::ProcId;
use hsu_agent::{Agent, OnExit, State};

use crate::{poll, units, wait_for, Cleanup};

/// A process started outside the agent, in its own group; killed on drop.
struct Outside(Child);

impl Outside {
    fn start(args: &[&str]) -> Outside {
        let child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Outside(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&self) -> bool {
        ProcId::of(self.pid()).is_some_and(|p| p.alive())
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn found_by_pid_file_name_and_port_alive_then_dead_and_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().join("data"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Outside::start(&["python3", "-m", "http.server", "--bind", "127.0.0.1", &port.to_string()]);
    let pid_file = dir.path().join("server.pid");
    std::fs::write(&pid_file, format!("{}\n", server.pid())).unwrap();
    let yaml = format!(
        "units:
  - {{name: by-pid-file, kind: unmanaged, attach: {{pid_file: {}}}}}
  - {{name: by-name, kind: unmanaged, attach: {{process: 'http.server --bind 127.0.0.1 {port}'}}}}
  - {{name: by-port, kind: unmanaged, attach: {{port: {port}}}}}
",
        pid_file.display()
    );
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    agent.apply(units(&yaml)).await;
    for name in ["by-pid-file", "by-name", "by-port"] {
        // Resource use is read every 250 ms; a process caught in exec has no resident pages yet.
        let s = wait_for(&agent, name, "attached and measured", |s| {
            s.state == State::Running && s.rss_bytes.is_some_and(|b| b > 0)
        })
        .await;
        assert_eq!(s.pid, Some(server.pid()), "{name}");
    }

    // Removing the units and stopping the agent leave the process alone: no permission.
    agent.apply(units("units: []\n")).await;
    agent.shutdown(OnExit::Stop).await;
    assert!(server.alive(), "the agent signalled a process it was not allowed to");

    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    agent.apply(units(&yaml)).await;
    for name in ["by-pid-file", "by-name", "by-port"] {
        wait_for(&agent, name, "attached", |s| s.pid == Some(server.pid())).await;
    }
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    for name in ["by-pid-file", "by-name", "by-port"] {
        let s = wait_for(&agent, name, "seen dead", |s| s.state == State::Exited).await;
        assert!(s.message.unwrap_or_default().starts_with("not found"), "{name}");
    }
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn signal_allowed_lets_the_agent_stop_it_and_start_command_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().join("data"));
    let allowed = Outside::start(&["sleep", "1001"]);
    let marker = dir.path().join("started");
    let yaml = format!(
        "units:
  - name: allowed
    kind: unmanaged
    attach: {{process: 'sleep 1001'}}
    signal_allowed: true
    stop: {{grace: 2s}}
  - name: restartable
    kind: unmanaged
    attach: {{process: 'sleep 1002'}}
    start_command: [sh, -c, 'touch {m}; exec sleep 1002']
    signal_allowed: true
",
        m = marker.display()
    );
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    agent.apply(units(&yaml)).await;
    wait_for(&agent, "allowed", "attached", |s| s.pid == Some(allowed.pid())).await;
    // Nobody runs `sleep 1002`: the agent runs the start command, then finds what it started.
    let s = wait_for(&agent, "restartable", "started and attached", |s| s.state == State::Running).await;
    assert!(marker.exists() && s.restarts == 1, "{s:?}");
    let started = s.pid.unwrap();
    agent.shutdown(OnExit::Stop).await;
    poll("the allowed process to be stopped", || (!allowed.alive()).then_some(())).await;
    poll("the started process to be stopped", || (!ProcId::of(started).is_some_and(|p| p.alive())).then_some(())).await;
}
