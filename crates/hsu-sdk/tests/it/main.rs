//! The example integrated unit under a real agent: Core answers Ping, Info and Health; health
//! is the unit's readiness; stopping goes through Shutdown and the unit exits 0 within its
//! grace period, with no signal.

use std::time::Duration;

use hsu_agent::{Agent, Exit, OnExit, State};
use hsu_proto::core::v1::core_client::CoreClient;
use hsu_proto::core::v1::{HealthRequest, HealthStatus, InfoRequest, PingRequest};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_example_unit_answers_core_and_stops_through_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut agent = Agent::open(&data).unwrap();
    let yaml = format!(
        "units:\n  - name: example\n    kind: integrated\n    command: [{:?}]\n    stop: {{grace: 10s}}\n",
        env!("CARGO_BIN_EXE_hsu-example-unit")
    );
    agent.apply(hsu_model::unit::parse_units(&yaml).unwrap().units).await;
    let mut rx = agent.watch("example").unwrap();
    let s = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.ready))
        .await
        .expect("ready from Core/Health")
        .unwrap()
        .clone();
    let addr = s.core_addr.clone().expect("HSU_CORE_ADDR is reported");

    let mut core = CoreClient::connect(format!("http://{addr}")).await.unwrap();
    let pong = core.ping(PingRequest { payload: b"hi".to_vec() }).await.unwrap().into_inner();
    assert_eq!(pong.payload, b"hi");
    let info = core.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.name.as_str(), info.runtime.as_str(), Some(info.pid)),
        ("hsu-example-unit", "rust/hsu-sdk", s.pid)
    );
    let health = core.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.status, HealthStatus::Serving as i32);

    let started = Instant::now();
    let stopping = tokio::spawn(async move { agent.shutdown(OnExit::Stop).await });
    let s = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.state == State::Stopped)).await.unwrap().unwrap().clone();
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "it exited within its grace period");
    // Exit code 0, not SIGTERM: the unit stopped because Core/Shutdown asked it to.
    assert_eq!(s.last_exit, Some(Exit::Code(0)));
    let out = std::fs::read_to_string(data.join("units/example/stdout.log")).unwrap();
    assert!(out.contains("shutdown requested (grace 10000 ms); exiting cleanly"), "{out}");
}
