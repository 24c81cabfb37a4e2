//! What happens after a unit's process exits: restart after a backoff, give up at the flap
//! limit, or stay down. A pure function over the unit's restart history, tested on its own.

use std::collections::VecDeque;
use std::time::Duration;

use hsu_model::unit::{RestartPolicy, RestartSpec};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// An adopted process is not our child, so its exit status cannot be read.
    Unknown,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::Unknown => f.write_str("exited (status unknown: the process was adopted)"),
        }
    }
}

/// Restarts so far: when each happened (for the flap window) and how many came in a row
/// without a stable run (for the backoff).
#[derive(Clone, Debug, Default)]
pub struct History {
    recent: VecDeque<Instant>,
    consecutive: u32,
}

/// The decision after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// Start again once this much time has passed.
    RestartAfter(Duration),
    /// The policy says the unit stays down.
    StayDown,
    /// Too many restarts within the flap window: the agent stops trying.
    GiveUp(String),
}

/// Decides what follows an `exit` after the process ran for `ran_for`.
pub fn after_exit(spec: &RestartSpec, history: &mut History, exit: Exit, ran_for: Duration, now: Instant) -> AfterExit {
    let restart = match spec.policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !exit.success(),
        RestartPolicy::Always => true,
    };
    if !restart {
        return AfterExit::StayDown;
    }
    if ran_for >= spec.backoff.reset_after.0 {
        history.consecutive = 0;
    }
    let window = spec.flap.window.0;
    while history.recent.front().is_some_and(|t| now.duration_since(*t) > window) {
        history.recent.pop_front();
    }
    if history.recent.len() >= spec.flap.max_restarts as usize {
        return AfterExit::GiveUp(format!(
            "flap limit: restarted {} times within {}; not restarting again",
            history.recent.len(),
            hsu_model::duration::format_duration(window)
        ));
    }
    history.recent.push_back(now);
    history.consecutive += 1;
    AfterExit::RestartAfter(spec.backoff.delay(history.consecutive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsu_model::unit::{Backoff, Dur, FlapLimit};

    fn spec(policy: RestartPolicy, max_restarts: u32) -> RestartSpec {
        RestartSpec {
            policy,
            backoff: Backoff {
                initial: Dur(Duration::from_millis(100)),
                max: Dur(Duration::from_millis(500)),
                reset_after: Dur(Duration::from_secs(10)),
            },
            flap: FlapLimit { max_restarts, window: Dur(Duration::from_secs(60)) },
        }
    }

    #[test]
    fn backoff_grows_then_the_flap_limit_stops_restarts() {
        let s = spec(RestartPolicy::Always, 4);
        let mut h = History::default();
        let t0 = Instant::now();
        let mut got = vec![];
        for i in 0..5 {
            got.push(after_exit(&s, &mut h, Exit::Code(1), Duration::from_millis(10), t0 + Duration::from_secs(i)));
        }
        let ms = |m| AfterExit::RestartAfter(Duration::from_millis(m));
        assert_eq!(got[..4], [ms(100), ms(200), ms(400), ms(500)]);
        assert!(matches!(&got[4], AfterExit::GiveUp(m) if m.contains("restarted 4 times within 1m")), "{:?}", got[4]);
    }

    #[test]
    fn a_stable_run_resets_the_backoff_and_old_restarts_leave_the_window() {
        let s = spec(RestartPolicy::Always, 2);
        let mut h = History::default();
        let t0 = Instant::now();
        let short = Duration::from_millis(10);
        assert_eq!(
            after_exit(&s, &mut h, Exit::Code(1), short, t0),
            AfterExit::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            after_exit(&s, &mut h, Exit::Code(1), short, t0),
            AfterExit::RestartAfter(Duration::from_millis(200))
        );
        // Two minutes later, after a run longer than reset_after: the window is empty again and
        // the backoff starts over.
        let later = t0 + Duration::from_secs(120);
        let got = after_exit(&s, &mut h, Exit::Signal(9), Duration::from_secs(30), later);
        assert_eq!(got, AfterExit::RestartAfter(Duration::from_millis(100)));
    }

    #[test]
    fn policies_decide_which_exits_restart() {
        let t0 = Instant::now();
        let run = Duration::from_secs(1);
        let cases = [
            (RestartPolicy::Never, Exit::Code(1), false),
            (RestartPolicy::Never, Exit::Code(0), false),
            (RestartPolicy::OnFailure, Exit::Code(0), false),
            (RestartPolicy::OnFailure, Exit::Code(3), true),
            (RestartPolicy::OnFailure, Exit::Signal(15), true),
            (RestartPolicy::Always, Exit::Code(0), true),
            (RestartPolicy::Always, Exit::Unknown, true),
        ];
        for (policy, exit, restarts) in cases {
            let got = after_exit(&spec(policy, 10), &mut History::default(), exit, run, t0);
            assert_eq!(matches!(got, AfterExit::RestartAfter(_)), restarts, "{policy:?} after {exit}: {got:?}");
            if !restarts {
                assert_eq!(got, AfterExit::StayDown);
            }
        }
    }
}
