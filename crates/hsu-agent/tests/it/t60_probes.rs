//! Each probe type passes and fails; readiness flips `ready` both ways; a failing liveness or
//! startup probe restarts the unit.

use hsu_agent::{Agent, OnExit, State};
use tonic_health::ServingStatus;

use crate::{units, wait_for};

#[tokio::test]
async fn exec_readiness_flips_ready_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("ready-flag");
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = format!(
        "units:\n  - name: u\n    command: [sleep, '1000']\n    readiness: {{exec: {{command: [test, -f, {}]}}, period: 100ms, failure_threshold: 1}}\n",
        flag.display()
    );
    agent.apply(units(&yaml)).await;
    let s = wait_for(&agent, "u", "running with a failed readiness check", |s| {
        s.state == State::Running && s.probe_failure.is_some()
    })
    .await;
    assert!(!s.ready);
    std::fs::write(&flag, "").unwrap();
    wait_for(&agent, "u", "ready", |s| s.ready).await;
    std::fs::remove_file(&flag).unwrap();
    let s = wait_for(&agent, "u", "not ready again", |s| !s.ready).await;
    assert!(s.probe_failure.unwrap_or_default().contains("exec test"), "the failure says which check");
    assert_eq!(s.restarts, 0, "readiness never restarts");
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn http_and_tcp_probes_pass_against_a_server_and_fail_against_a_missing_page_or_port() {
    // `good` gets its port through `${HSU_PORT_HTTP}` in its arguments, with no shell.
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let server = "[sh, -c, 'exec python3 -m http.server --bind 127.0.0.1 \"$HSU_PORT_HTTP\"']";
    let yaml = format!(
        "units:
  - name: good
    command: [python3, -m, http.server, --bind, 127.0.0.1, '${{HSU_PORT_HTTP}}']
    ports: [{{name: http}}]
    readiness: {{http: {{port: http, path: /}}, period: 100ms}}
  - name: missing-page
    command: {server}
    ports: [{{name: http}}]
    readiness: {{http: {{port: http, path: /no/such/page}}, period: 100ms, failure_threshold: 1}}
  - name: tcp-good
    command: {server}
    ports: [{{name: http}}]
    readiness: {{tcp: {{port: http}}, period: 100ms}}
  - name: tcp-closed
    command: [sleep, '1000']
    ports: [{{name: nothing}}]
    readiness: {{tcp: {{port: nothing}}, period: 100ms, failure_threshold: 1}}
"
    );
    agent.apply(units(&yaml)).await;
    wait_for(&agent, "good", "ready", |s| s.ready).await;
    wait_for(&agent, "tcp-good", "ready", |s| s.ready).await;
    // The server answers (tcp-good and good are ready), but this page is a 404.
    let s = wait_for(&agent, "missing-page", "refused by status", |s| {
        s.probe_failure.as_deref().is_some_and(|f| f.contains("status 404"))
    })
    .await;
    assert!(!s.ready);
    let s = wait_for(&agent, "tcp-closed", "refused by the port", |s| s.probe_failure.is_some()).await;
    assert!(!s.ready && s.probe_failure.unwrap().contains("tcp 127.0.0.1:"));
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn grpc_probe_follows_the_health_service() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("svc", ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = format!(
        "units:\n  - name: u\n    command: [sleep, '1000']\n    readiness: {{grpc: {{port: {port}, service: svc}}, period: 100ms, failure_threshold: 1}}\n"
    );
    agent.apply(units(&yaml)).await;
    wait_for(&agent, "u", "ready", |s| s.ready).await;
    reporter.set_service_status("svc", ServingStatus::NotServing).await;
    let s = wait_for(&agent, "u", "not ready", |s| !s.ready).await;
    assert!(s.probe_failure.unwrap_or_default().contains("NOT_SERVING"));
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("alive-flag");
    std::fs::write(&flag, "").unwrap();
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = format!(
        "units:\n  - name: u\n    command: [sleep, '1000']\n    stop: {{grace: 1s}}\n    restart: {{backoff: {{initial: 100ms}}}}\n    liveness: {{exec: {{command: [test, -f, {}]}}, period: 100ms, failure_threshold: 2}}\n",
        flag.display()
    );
    agent.apply(units(&yaml)).await;
    let first = wait_for(&agent, "u", "running", |s| s.state == State::Running).await.pid;
    std::fs::remove_file(&flag).unwrap();
    let s = wait_for(&agent, "u", "restarted", |s| s.restarts == 1 && s.state == State::Running).await;
    assert_ne!(s.pid, first, "a new process");
    assert!(s.probe_failure.unwrap_or_default().contains("liveness probe failed"));
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn a_failing_startup_probe_restarts_and_holds_back_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    // Readiness would pass at once, but it only runs after startup succeeds, which it never does.
    let yaml = "units:\n  - name: u\n    command: [sleep, '1000']\n    stop: {grace: 1s}\n    restart: {backoff: {initial: 50ms}, flap: {max_restarts: 1}}\n    startup: {exec: {command: ['false']}, period: 50ms, failure_threshold: 2}\n    readiness: {exec: {command: ['true']}, period: 50ms}\n";
    agent.apply(units(yaml)).await;
    let mut rx = agent.watch("u").unwrap();
    let mut ever_ready = false;
    let s = tokio::time::timeout(crate::DEADLINE, async {
        loop {
            rx.changed().await.unwrap();
            let s = rx.borrow().clone();
            ever_ready |= s.ready;
            if s.state == State::Failed {
                return s;
            }
        }
    })
    .await
    .expect("the unit gives up within the deadline");
    assert!(!ever_ready, "readiness is not checked before startup passes");
    assert_eq!(s.restarts, 1);
    assert!(s.probe_failure.unwrap_or_default().contains("startup probe failed"));
    agent.shutdown(OnExit::Stop).await;
}
