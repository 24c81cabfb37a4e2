//! What happens around a unit's process: its logs and their rotation, restarts (policy, backoff,
//! flap limit) and how it is stopped (signal, grace).

use super::*;

/// Where stdout and stderr go: `<unit dir>/stdout.log` and `stderr.log`, rotated when a file
/// passes `max_size` (to `.1`, `.2`, ... keeping `max_files` old files).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, try_from = "RawLogSpec")]
pub struct LogSpec {
    pub max_size: ByteSize,
    pub max_files: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogSpec {
    #[serde(default = "default_log_size")]
    max_size: ByteSize,
    #[serde(default = "default_log_files")]
    max_files: u32,
}

fn default_log_size() -> ByteSize {
    ByteSize(10 << 20)
}

fn default_log_files() -> u32 {
    5
}

impl TryFrom<RawLogSpec> for LogSpec {
    type Error = String;
    fn try_from(r: RawLogSpec) -> Result<Self, String> {
        if r.max_size.0 < 1024 {
            return Err(format!("logs.max_size must be at least 1024 bytes, found {}", r.max_size.0));
        }
        Ok(LogSpec { max_size: r.max_size, max_files: r.max_files })
    }
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec { max_size: default_log_size(), max_files: default_log_files() }
    }
}

/// When a unit whose process exited is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum RestartPolicy {
    /// After every exit (as Kubernetes' `Always`, pm2's default).
    #[default]
    #[serde(rename = "always")]
    Always,
    /// After an exit with a non-zero code or by a signal (systemd's `on-failure`).
    #[serde(rename = "on-failure")]
    OnFailure,
    #[serde(rename = "never")]
    Never,
}

/// Restarts: the policy, an exponential backoff between attempts (reset once the process has
/// run for `backoff.reset_after`), and a flap limit: more than `flap.max_restarts` restarts within
/// `flap.window` and the agent gives up on the unit (systemd's StartLimitBurst/IntervalSec).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub flap: FlapLimit,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawBackoff")]
pub struct Backoff {
    pub initial: Dur,
    pub max: Dur,
    pub reset_after: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial: Option<Dur>,
    max: Option<Dur>,
    reset_after: Option<Dur>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Dur(Duration::from_millis(100)),
            max: Dur(Duration::from_secs(30)),
            reset_after: Dur(Duration::from_secs(60)),
        }
    }
}

impl TryFrom<RawBackoff> for Backoff {
    type Error = String;
    fn try_from(r: RawBackoff) -> Result<Self, String> {
        let d = Backoff::default();
        let b = Backoff {
            initial: r.initial.unwrap_or(d.initial),
            max: r.max.unwrap_or(d.max),
            reset_after: r.reset_after.unwrap_or(d.reset_after),
        };
        if b.max < b.initial {
            return Err(format!(
                "restart.backoff.max ({}) is shorter than restart.backoff.initial ({})",
                crate::duration::format_duration(b.max.0),
                crate::duration::format_duration(b.initial.0)
            ));
        }
        Ok(b)
    }
}

impl Backoff {
    /// The wait before restart number `attempt` (1 = the first restart after a stable run):
    /// `initial * 2^(attempt-1)`, at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.0.saturating_mul(factor).min(self.max.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlapLimit {
    #[serde(default = "default_flap_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_flap_window")]
    pub window: Dur,
}

fn default_flap_restarts() -> u32 {
    10
}

fn default_flap_window() -> Dur {
    Dur(Duration::from_secs(300))
}

impl Default for FlapLimit {
    fn default() -> Self {
        FlapLimit { max_restarts: default_flap_restarts(), window: default_flap_window() }
    }
}

/// How the unit is stopped: `signal` to its whole process group, then SIGKILL to the group
/// after `grace`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    #[serde(default)]
    pub signal: StopSignal,
    #[serde(default = "default_grace")]
    pub grace: Dur,
}

fn default_grace() -> Dur {
    Dur(Duration::from_secs(10))
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec { signal: StopSignal::default(), grace: default_grace() }
    }
}

/// The signals a unit may ask to be stopped with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopSignal {
    #[default]
    Term,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
    Kill,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
            StopSignal::Kill => "SIGKILL",
        }
    }
}

impl Serialize for StopSignal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for StopSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bare = s.strip_prefix("SIG").unwrap_or(&s);
        Ok(match bare {
            "TERM" => StopSignal::Term,
            "INT" => StopSignal::Int,
            "HUP" => StopSignal::Hup,
            "QUIT" => StopSignal::Quit,
            "USR1" => StopSignal::Usr1,
            "USR2" => StopSignal::Usr2,
            "KILL" => StopSignal::Kill,
            _ => {
                return Err(de::Error::custom(format!(
                    "unknown stop signal {s:?}; expected one of TERM, INT, HUP, QUIT, USR1, USR2, KILL"
                )))
            }
        })
    }
}
