//! The agent with real processes: restarts and backoff, stopping whole groups, log rotation,
//! adoption by a second agent. Every wait polls with a deadline.

mod t10_restarts;
mod t20_stop;
mod t30_logs;
mod t40_adopt;
mod t50_units_files;

use std::path::Path;
use std::time::Duration;

use hsu_agent::{Agent, UnitStatus};
use hsu_model::unit::{parse_units, UnitSpec};
use tokio::time::Instant;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn units(yaml: &str) -> Vec<UnitSpec> {
    parse_units(yaml).unwrap_or_else(|e| panic!("test spec does not parse: {e}")).units
}

/// Polls `name`'s status until `check` holds; fails the test after [`DEADLINE`].
pub async fn wait_for(agent: &Agent, name: &str, what: &str, check: impl Fn(&UnitStatus) -> bool) -> UnitStatus {
    let mut rx = agent.watch(name).unwrap_or_else(|| panic!("no unit {name}"));
    let got = tokio::time::timeout(DEADLINE, rx.wait_for(|s| check(s))).await.map(|r| r.map(|s| s.clone()));
    match got {
        Ok(Ok(s)) => s,
        _ => panic!("timed out after {DEADLINE:?} waiting for {name} to be {what}; status: {:?}", rx.borrow()),
    }
}

/// Polls a condition until it holds; fails the test after [`DEADLINE`].
pub async fn poll<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}
