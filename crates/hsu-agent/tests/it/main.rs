//! The agent with real processes: restarts and backoff, stopping whole groups, log rotation,
//! adoption by a second agent. Every wait polls with a deadline.

mod t10_restarts;
mod t20_stop;
mod t30_logs;
mod t40_adopt;
mod t50_units_files;
mod t60_probes;
mod t70_limits;
mod t80_unmanaged;
mod t90_node;

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

/// Kills, on drop, every process group the agent of `data` recorded: a test that fails midway must
/// not leave its units running.
pub struct Cleanup(pub std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(records) = hsu_agent::record::read_all(&self.0) {
            for r in records.values() {
                if let Some(pgid) = r.pgid {
                    let _ = hsu_agent::process::signal_group(pgid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}
