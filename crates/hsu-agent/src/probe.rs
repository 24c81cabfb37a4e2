//! Probes, as Kubernetes runs them: `exec`, `http`, `tcp` and `grpc` (grpc.health.v1) checks, each
//! attempt bounded by a timeout, turned into a verdict by consecutive-result thresholds
//! ([`Counter`], pure). One task per running process runs the unit's probes ([`run`]): the
//! startup probe first (until it passes, nothing else runs; if it fails, the unit is restarted),
//! then liveness (failing restarts the unit) and readiness (flips the unit's `ready`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use hsu_model::unit::{Check, PortRef, Probe, UnitKind, UnitSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Consecutive results → a verdict.
#[derive(Clone, Debug, Default)]
pub struct Counter {
    successes: u32,
    failures: u32,
    passing: Option<bool>,
}

impl Counter {
    /// Records one result; returns the new verdict when it changes (the first verdict included).
    pub fn record(&mut self, ok: bool, probe: &Probe) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= probe.success_threshold {
            Some(true)
        } else if self.failures >= probe.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// What the probe task tells the unit's actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    StartupPassed,
    /// Restart the unit.
    StartupFailed(String),
    /// Restart the unit.
    LivenessFailed(String),
    /// Readiness changed; the text is the last failure when not ready.
    Ready(bool, Option<String>),
}

/// Where the checks run: the unit's ports, env and working directory (for `exec`).
#[derive(Clone, Debug)]
pub struct Target {
    pub ports: BTreeMap<String, u16>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
}

impl Target {
    fn port(&self, p: &PortRef) -> Result<u16, String> {
        match p {
            PortRef::Number(n) => Ok(*n),
            PortRef::Named(name) => self
                .ports
                .get(name.as_str())
                .copied()
                .ok_or_else(|| format!("port {:?} is not allocated", name.as_str())),
        }
    }
}

/// What a probe checks: a check of the spec, or an integrated unit's `hsu.core.v1.Core/Health`.
#[derive(Clone, Copy)]
enum What<'a> {
    Spec(&'a Check),
    CoreHealth(u16),
}

/// Runs one check once, within the probe's timeout.
pub async fn check(probe: &Probe, target: &Target) -> Result<(), String> {
    check_what(probe, What::Spec(&probe.check), target).await
}

async fn check_what(probe: &Probe, what: What<'_>, target: &Target) -> Result<(), String> {
    let t = probe.timeout.0;
    let fut = async {
        match what {
            What::Spec(c) => attempt(c, target).await,
            What::CoreHealth(port) => core_health(port).await,
        }
    };
    match tokio::time::timeout(t, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", hsu_model::duration::format_duration(t))),
    }
}

/// A client of an integrated unit's `hsu.core.v1.Core` on 127.0.0.1:`port`.
pub async fn core_client(
    port: u16,
) -> Result<hsu_proto::core::v1::core_client::CoreClient<tonic::transport::Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| format!("core 127.0.0.1:{port}: {e}"))?;
    Ok(hsu_proto::core::v1::core_client::CoreClient::new(channel))
}

async fn core_health(port: u16) -> Result<(), String> {
    use hsu_proto::core::v1::{HealthRequest, HealthStatus};
    let r = core_client(port)
        .await?
        .health(HealthRequest {})
        .await
        .map_err(|s| format!("core health on 127.0.0.1:{port}: {}", s.message()))?
        .into_inner();
    match HealthStatus::try_from(r.status) {
        Ok(HealthStatus::Serving) => Ok(()),
        _ => Err(format!("core health on 127.0.0.1:{port}: not serving: {}", r.message)),
    }
}

async fn attempt(check: &Check, target: &Target) -> Result<(), String> {
    match check {
        Check::Exec { command } => {
            let mut cmd = tokio::process::Command::new(command.program());
            cmd.args(command.args())
                .envs(&target.env)
                .current_dir(&target.cwd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            // Registered, so the agent's reaper leaves this child's status to tokio; released
            // when the check ends (also when its timeout drops it).
            let mut child =
                crate::process::spawn_owned(&mut cmd).map_err(|e| format!("exec {}: {e}", command.program()))?;
            struct Release(Option<u32>);
            impl Drop for Release {
                fn drop(&mut self) {
                    if let Some(pid) = self.0 {
                        crate::process::disown(pid);
                    }
                }
            }
            let _release = Release(child.id());
            let status = child.wait().await.map_err(|e| format!("exec {}: {e}", command.program()))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("exec {}: {status}", command.program()))
            }
        }
        Check::Tcp { port } => {
            let port = target.port(port)?;
            TcpStream::connect(("127.0.0.1", port)).await.map(drop).map_err(|e| format!("tcp 127.0.0.1:{port}: {e}"))
        }
        Check::Http { port, path } => {
            let port = target.port(port)?;
            let mut s =
                TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("http 127.0.0.1:{port}: {e}"))?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: hsu-probe\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.map_err(|e| format!("http 127.0.0.1:{port}{path}: {e}"))?;
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < head.len() && !head[..n].contains(&b'\n') {
                match s.read(&mut head[n..]).await.map_err(|e| format!("http 127.0.0.1:{port}{path}: {e}"))? {
                    0 => break,
                    k => n += k,
                }
            }
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("http 127.0.0.1:{port}{path}: not an HTTP answer: {line:?}"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("http 127.0.0.1:{port}{path}: status {code}"))
            }
        }
        Check::Grpc { port, service } => {
            use tonic_health::pb::health_check_response::ServingStatus;
            use tonic_health::pb::health_client::HealthClient;
            use tonic_health::pb::HealthCheckRequest;
            let port = target.port(port)?;
            let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| format!("grpc 127.0.0.1:{port}: {e}"))?;
            let resp = HealthClient::new(channel)
                .check(HealthCheckRequest { service: service.clone() })
                .await
                .map_err(|s| format!("grpc health {service:?} on 127.0.0.1:{port}: {}", s.message()))?;
            match ServingStatus::try_from(resp.into_inner().status) {
                Ok(ServingStatus::Serving) => Ok(()),
                Ok(other) => Err(format!("grpc health {service:?} on 127.0.0.1:{port}: {}", other.as_str_name())),
                Err(_) => Err(format!("grpc health {service:?} on 127.0.0.1:{port}: unknown status")),
            }
        }
    }
}

/// Runs `what` every period of `probe` until its verdict is `stop_at` (or forever if `None`). After each
/// attempt `on_result(verdict, changed, failure)` hears the current verdict (once there is one),
/// whether this attempt changed it, and the attempt's failure; it returns false to stop early.
async fn run_what(
    probe: &Probe,
    what: What<'_>,
    target: &Target,
    stop_at: Option<bool>,
    mut on_result: impl FnMut(bool, bool, Option<String>) -> bool,
) {
    tokio::time::sleep(probe.initial_delay.0).await;
    let mut counter = Counter::default();
    let mut tick = tokio::time::interval(probe.period.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check_what(probe, what, target).await;
        let failure = result.as_ref().err().cloned();
        let changed = counter.record(result.is_ok(), probe).is_some();
        let Some(verdict) = counter.passing else { continue };
        if !on_result(verdict, changed, failure) || (changed && stop_at == Some(verdict)) {
            return;
        }
    }
}

/// The probe task of one running process. Ends when it reported a failure that restarts the
/// unit, when the actor drops the receiver, or when it is aborted (the process exited).
pub async fn run(spec: UnitSpec, target: Target, tx: mpsc::Sender<Event>) {
    if let Some(p) = &spec.startup {
        let mut passed = false;
        run_what(p, What::Spec(&p.check), &target, Some(true), |ok, changed, why| {
            passed = ok;
            if changed && !ok {
                let _ = tx.try_send(Event::StartupFailed(format!("startup probe failed: {}", why.unwrap_or_default())));
            }
            ok || !changed
        })
        .await;
        if !passed {
            return;
        }
        if tx.send(Event::StartupPassed).await.is_err() {
            return;
        }
    }
    let liveness = async {
        if let Some(p) = &spec.liveness {
            run_what(p, What::Spec(&p.check), &target, Some(false), |ok, changed, why| {
                if changed && !ok {
                    let _ = tx
                        .try_send(Event::LivenessFailed(format!("liveness probe failed: {}", why.unwrap_or_default())));
                }
                !tx.is_closed()
            })
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let readiness = async {
        // An integrated unit without a readiness probe is ready when its Core says it serves.
        let core = target.ports.get(CORE_PORT).copied().filter(|_| spec.kind == UnitKind::Integrated);
        let (probe, what) = match (&spec.readiness, core) {
            (Some(p), _) => (p.clone(), None),
            (None, Some(port)) => (core_readiness(), Some(port)),
            (None, None) => std::future::pending().await,
        };
        // Every verdict change, and while not ready every new reason, reaches the status.
        let mut last: Option<String> = None;
        let what = what.map_or(What::Spec(&probe.check), What::CoreHealth);
        run_what(&probe, what, &target, None, |ok, changed, why| {
            if changed || (!ok && why.is_some() && why != last) {
                last = why.clone();
                let _ = tx.try_send(Event::Ready(ok, why));
            }
            !tx.is_closed()
        })
        .await;
    };
    // Liveness ends the task when it fails; readiness runs as long as the process does.
    tokio::select! {
        () = liveness => {}
        () = readiness => {}
    }
}

/// The key of an integrated unit's Core port among its allocated ports.
pub const CORE_PORT: &str = "hsu-core";

/// The implicit readiness probe of an integrated unit: Core/Health every 500 ms.
fn core_readiness() -> Probe {
    use hsu_model::unit::Dur;
    Probe {
        check: Check::Tcp { port: PortRef::Number(1) },
        period: Dur(std::time::Duration::from_millis(500)),
        timeout: Dur(std::time::Duration::from_secs(1)),
        initial_delay: Dur(std::time::Duration::ZERO),
        failure_threshold: 1,
        success_threshold: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsu_model::unit::Dur;
    use std::time::Duration;

    fn probe(failure_threshold: u32, success_threshold: u32) -> Probe {
        Probe {
            check: Check::Tcp { port: PortRef::Number(1) },
            period: Dur(Duration::from_secs(1)),
            timeout: Dur(Duration::from_secs(1)),
            initial_delay: Dur(Duration::ZERO),
            failure_threshold,
            success_threshold,
        }
    }

    #[test]
    fn verdicts_need_consecutive_results_and_are_reported_once() {
        let p = probe(3, 2);
        let mut c = Counter::default();
        let got: Vec<Option<bool>> = [true, false, true, true, true, false, false, true, false, false, false, false]
            .iter()
            .map(|ok| c.record(*ok, &p))
            .collect();
        assert_eq!(
            got,
            [None, None, None, Some(true), None, None, None, None, None, None, Some(false), None],
            "pass after 2 in a row, fail after 3 in a row, each verdict once"
        );
    }
}
