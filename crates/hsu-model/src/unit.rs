//! The unit spec: what the agent runs on a machine, as users write it in YAML.
//!
//! Every field is checked while it is parsed, so that an error carries the line and column of
//! the value at fault and says what was expected and what was found; unknown fields are errors,
//! never ignored. A units file is `units: [UnitSpec, ...]`; the same unit shape is the template of
//! a deployment. Only what the agent really does is accepted: a spec that asks for something the
//! agent does not implement yet fails to parse instead of being half-honoured.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;

/// A file of units: `units: [...]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsFile {
    pub units: Vec<UnitSpec>,
}

/// One unit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// Required in a units file (checked by [`parse_units`]); a deployment's template has none
    /// (each instance gets its own).
    #[serde(default, skip_serializing_if = "UnitName::is_empty")]
    pub name: UnitName,
    #[serde(default)]
    pub kind: UnitKind,
    /// The program and its arguments; the program is looked up in `PATH` when it has no `/`.
    /// Required for managed units; an unmanaged unit has `attach` instead.
    #[serde(default)]
    pub command: Option<Command>,
    /// Unmanaged: how to find the process the agent watches.
    #[serde(default)]
    pub attach: Option<Attach>,
    /// Unmanaged: the agent may send signals to the process (to stop it). Off by default: the
    /// agent never signals a process it was not told it may control.
    #[serde(default)]
    pub signal_allowed: bool,
    /// Unmanaged: run when the process is not found (as the restart policy allows).
    #[serde(default)]
    pub start_command: Option<Command>,
    /// Unmanaged: run to stop it (when the unit is removed or the agent stops its units).
    #[serde(default)]
    pub stop_command: Option<Command>,
    /// Added to the agent's own environment (which also gives the unit `PATH`, `HOME`, ...).
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// Working directory (default: the unit's directory under the agent's data directory).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Run as this user (name or uid) and with its primary group; needs an agent running as root.
    #[serde(default)]
    pub user: Option<String>,
    /// Run with this group (name or gid) instead of the user's primary group; needs root.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub logs: LogSpec,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default)]
    pub stop: StopSpec,
    /// Ports the agent allocates (free TCP ports on 127.0.0.1) and passes as `HSU_PORT_<NAME>`.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Until it succeeds, liveness and readiness are not checked; failing it restarts the unit.
    #[serde(default)]
    pub startup: Option<Probe>,
    /// Failing it restarts the unit.
    #[serde(default)]
    pub liveness: Option<Probe>,
    /// Whether the unit is ready to serve (rollouts and the registry wait for it).
    #[serde(default)]
    pub readiness: Option<Probe>,
    #[serde(default)]
    pub limits: Limits,
}

/// Resource limits. `memory`, `cpu` and `pids` are cgroup limits on the unit's whole group of
/// processes; the others are rlimits of each process (inherited by its children).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory (RSS + page cache) of the unit's cgroup; past it the kernel OOM-kills.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// CPU time as cores: `0.5`, `2`, or `500m` (millicores).
    #[serde(default)]
    pub cpu: Option<MilliCpu>,
    /// Processes and threads in the unit's cgroup.
    #[serde(default)]
    pub pids: Option<u64>,
    /// RLIMIT_NOFILE.
    #[serde(default)]
    pub open_files: Option<u64>,
    /// RLIMIT_NPROC (per user, as the kernel counts it).
    #[serde(default)]
    pub processes: Option<u64>,
    /// RLIMIT_CORE, in bytes (0: no core dumps).
    #[serde(default)]
    pub core: Option<ByteSize>,
    /// RLIMIT_AS.
    #[serde(default)]
    pub address_space: Option<ByteSize>,
}

impl Limits {
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.cpu.is_some() || self.pids.is_some()
    }
}

/// CPU in thousandths of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MilliCpu(pub u32);

impl<'de> Deserialize<'de> for MilliCpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = MilliCpu;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of cores such as 0.5 or 2, or millicores such as 500m")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MilliCpu, E> {
                if !(0.001..=4096.0).contains(&v) {
                    return Err(E::custom(format!("expected between 0.001 and 4096 cores, found {v}")));
                }
                Ok(MilliCpu((v * 1000.0).round() as u32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MilliCpu, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MilliCpu, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MilliCpu, E> {
                match v.strip_suffix('m').map(str::parse::<u32>) {
                    Some(Ok(m)) if m > 0 => Ok(MilliCpu(m)),
                    _ => match v.parse::<f64>() {
                        Ok(f) => self.visit_f64(f),
                        Err(_) => Err(E::custom(format!(
                            "expected cores such as 0.5 or millicores such as 500m, found {v:?}"
                        ))),
                    },
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for MilliCpu {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}m", self.0))
    }
}

/// A health check, as Kubernetes' probes: one of `exec`, `http`, `tcp`, `grpc`, run every
/// `period` (each attempt bounded by `timeout`) after `initial_delay`; `failure_threshold`
/// failures in a row make it fail, `success_threshold` successes in a row make it pass.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawProbe", into = "RawProbe")]
pub struct Probe {
    pub check: Check,
    pub period: Dur,
    pub timeout: Dur,
    pub initial_delay: Dur,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Runs a command; exit code 0 passes.
    Exec { command: Command },
    /// GET `path` on 127.0.0.1:`port`; a status of 200-399 passes.
    Http { port: PortRef, path: String },
    /// Connects to 127.0.0.1:`port`.
    Tcp { port: PortRef },
    /// `grpc.health.v1.Health/Check` for `service` ("" = the whole server); SERVING passes.
    Grpc { port: PortRef, service: String },
}

fn default_path() -> String {
    "/".into()
}

/// A port by number or by the name of one of the unit's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Named(UnitName),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or the name of one of the unit's ports")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRef, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortRef::Number(p)),
                    _ => Err(E::custom(format!("expected a port number from 1 to 65535, found {v}"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRef, E> {
                Err(E::custom(format!("expected a port number from 1 to 65535, found {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRef, E> {
                UnitName::new(v)
                    .map(PortRef::Named)
                    .map_err(|_| E::custom(format!("port {v:?} is neither a number nor a port name")))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    exec: Option<ExecCheck>,
    http: Option<HttpCheck>,
    tcp: Option<TcpCheck>,
    grpc: Option<GrpcCheck>,
    period: Option<Dur>,
    timeout: Option<Dur>,
    initial_delay: Option<Dur>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ExecCheck {
    command: Command,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct HttpCheck {
    port: PortRef,
    #[serde(default = "default_path")]
    path: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TcpCheck {
    port: PortRef,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct GrpcCheck {
    port: PortRef,
    #[serde(default)]
    service: String,
}

impl TryFrom<RawProbe> for Probe {
    type Error = String;
    fn try_from(r: RawProbe) -> Result<Self, String> {
        let mut checks = Vec::new();
        if let Some(c) = r.exec {
            checks.push(Check::Exec { command: c.command });
        }
        if let Some(c) = r.http {
            if !c.path.starts_with('/') {
                return Err(format!("http probe path must start with '/', found {:?}", c.path));
            }
            checks.push(Check::Http { port: c.port, path: c.path });
        }
        if let Some(c) = r.tcp {
            checks.push(Check::Tcp { port: c.port });
        }
        if let Some(c) = r.grpc {
            checks.push(Check::Grpc { port: c.port, service: c.service });
        }
        let check = match checks.len() {
            1 => checks.pop().expect("one"),
            0 => return Err("a probe needs one of exec, http, tcp or grpc".into()),
            n => return Err(format!("a probe has exactly one of exec, http, tcp or grpc, found {n}")),
        };
        let p = Probe {
            check,
            period: r.period.unwrap_or(Dur(Duration::from_secs(10))),
            timeout: r.timeout.unwrap_or(Dur(Duration::from_secs(1))),
            initial_delay: r.initial_delay.unwrap_or(Dur(Duration::ZERO)),
            failure_threshold: r.failure_threshold.unwrap_or(3),
            success_threshold: r.success_threshold.unwrap_or(1),
        };
        if p.period.0.is_zero() || p.timeout.0.is_zero() {
            return Err("probe period and timeout must be more than 0s".into());
        }
        if p.failure_threshold == 0 || p.success_threshold == 0 {
            return Err("probe failure_threshold and success_threshold must be at least 1".into());
        }
        Ok(p)
    }
}

impl From<Probe> for RawProbe {
    fn from(p: Probe) -> RawProbe {
        let mut r = RawProbe {
            exec: None,
            http: None,
            tcp: None,
            grpc: None,
            period: Some(p.period),
            timeout: Some(p.timeout),
            initial_delay: Some(p.initial_delay),
            failure_threshold: Some(p.failure_threshold),
            success_threshold: Some(p.success_threshold),
        };
        match p.check {
            Check::Exec { command } => r.exec = Some(ExecCheck { command }),
            Check::Http { port, path } => r.http = Some(HttpCheck { port, path }),
            Check::Tcp { port } => r.tcp = Some(TcpCheck { port }),
            Check::Grpc { port, service } => r.grpc = Some(GrpcCheck { port, service }),
        }
        r
    }
}

impl Probe {
    /// The port this probe targets, if it names one.
    pub fn port(&self) -> Option<&PortRef> {
        match &self.check {
            Check::Exec { .. } => None,
            Check::Http { port, .. } | Check::Tcp { port } | Check::Grpc { port, .. } => Some(port),
        }
    }
}

/// How the agent relates to the unit's process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    /// The agent starts, watches, restarts and stops the process.
    #[default]
    Managed,
    /// Started by someone else: the agent finds it (`attach`), reports its liveness and resource
    /// use, and controls it only as far as the spec allows.
    Unmanaged,
    /// A managed unit that also serves `hsu.core.v1.Core` on `HSU_CORE_ADDR`: its health is its
    /// readiness (unless it has a readiness probe) and it is asked to shut down before any signal.
    Integrated,
}

impl<'de> Deserialize<'de> for UnitKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "managed" => Ok(UnitKind::Managed),
            "unmanaged" => Ok(UnitKind::Unmanaged),
            "integrated" => Ok(UnitKind::Integrated),
            other => Err(de::Error::custom(format!(
                "unknown kind {other:?}; expected \"managed\", \"unmanaged\" or \"integrated\""
            ))),
        }
    }
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Managed => "managed",
            UnitKind::Unmanaged => "unmanaged",
            UnitKind::Integrated => "integrated",
        }
    }
}

/// How an unmanaged unit's process is found: exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Attach {
    /// A file holding the pid.
    PidFile(PathBuf),
    /// A substring of the command line (arguments joined by spaces); the oldest match wins.
    Process(String),
    /// The process listening on this TCP port.
    Port(u16),
}

/// A unit name: 1-63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit (a
/// DNS label, as Kubernetes names are), so it is safe in paths, cgroup names and env names.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UnitName(String);

impl UnitName {
    pub fn new(s: &str) -> Result<UnitName, String> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if s.is_empty() || s.len() > 63 {
            return Err(format!("unit name must be 1-63 characters, found {} in {s:?}", s.len()));
        }
        if !s.chars().all(ok_char) || s.starts_with('-') || s.ends_with('-') {
            return Err(format!(
                "unit name {s:?} must be lowercase letters, digits and '-', not starting or ending with '-'"
            ));
        }
        Ok(UnitName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Only a template's name is empty (an instance gets its own).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UnitName::new(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A non-empty argv.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Command(Vec<String>);

impl Command {
    pub fn new(argv: Vec<String>) -> Result<Command, String> {
        match argv.first() {
            None => Err("command is empty; expected at least the program, e.g. [\"python3\", \"app.py\"]".into()),
            Some(p) if p.is_empty() => Err("command's program (its first element) is an empty string".into()),
            _ if argv.iter().any(|a| a.contains('\0')) => Err("command contains a NUL character".into()),
            _ => Ok(Command(argv)),
        }
    }

    pub fn program(&self) -> &str {
        &self.0[0]
    }

    pub fn args(&self) -> &[String] {
        &self.0[1..]
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Command::new(Vec::<String>::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`. Names starting with `HSU_` are the
/// agent's own and cannot be set by a spec.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvName(String);

impl EnvName {
    pub fn new(s: &str) -> Result<EnvName, String> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "environment variable name {s:?} is invalid; expected letters, digits and '_', not starting with a digit"
            ));
        }
        if s.starts_with("HSU_") {
            return Err(format!("environment variable {s:?}: names starting with HSU_ are set by the agent"));
        }
        Ok(EnvName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EnvName::new(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A duration written as `500ms`, `30s`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s or 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!("expected a duration with a unit such as 500ms or 30s, found the number {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!("expected a duration with a unit such as 500ms or 30s, found the number {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!("expected a duration with a unit such as 500ms or 30s, found the number {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::duration::format_duration(self.0))
    }
}

/// A size in bytes: a number, or a number with `K`, `M`, `G` (powers of 1024; `KiB`, `MiB`,
/// `GiB` and `KB`, `MB`, `GB` are read the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let s = text.trim();
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a size such as 10MiB, 512K or 1048576, found {text:?}"));
        }
        let n: u64 = s[..digits].parse().map_err(|_| format!("size {text:?} is too large"))?;
        let mult: u64 = match s[digits..].trim() {
            "" | "B" => 1,
            "K" | "KB" | "KiB" | "k" => 1 << 10,
            "M" | "MB" | "MiB" => 1 << 20,
            "G" | "GB" | "GiB" => 1 << 30,
            other => return Err(format!("unknown unit {other:?} in size {text:?}; expected K, M or G")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 10MiB, 512K or 1048576")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected a size of zero or more bytes, found {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

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

/// A port the agent allocates for the unit, passed as `HSU_PORT_<NAME>` (upper-cased, `-` as `_`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub name: UnitName,
}

impl PortSpec {
    pub fn env_name(&self) -> String {
        format!("HSU_PORT_{}", self.name.as_str().to_ascii_uppercase().replace('-', "_"))
    }
}

/// Why a units file was refused. The message has the line and column (and a snippet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Parses a units file. Nothing is returned unless every unit is valid; names must be unique.
pub fn parse_units(yaml: &str) -> Result<UnitsFile, SpecError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Names {
        units: Vec<NameOnly>,
    }
    #[derive(Deserialize)]
    struct NameOnly {
        name: serde_saphyr::Spanned<String>,
    }
    let file: UnitsFile = serde_saphyr::from_str(yaml).map_err(|e| SpecError(e.to_string()))?;
    // A second, lenient pass for where each name is, to point at a duplicate.
    let names: Names = serde_saphyr::from_str(yaml).map_err(|e| SpecError(e.to_string()))?;
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for n in &names.units {
        let line = n.name.referenced.line();
        if let Some(first) = seen.insert(&n.name.value, line) {
            return Err(SpecError(format!(
                "line {line}: unit name {:?} is already used on line {first}; names must be unique",
                n.name.value
            )));
        }
    }
    // Units come back in file order from both passes, so they pair up by position.
    for (u, n) in file.units.iter().zip(&names.units) {
        validate_unit(u, &format!("line {}: unit {:?}", n.name.referenced.line(), u.name.as_str()))?;
    }
    Ok(file)
}

/// The checks of one unit that span several fields (each field checks itself while parsed).
/// `at` says where the unit is, e.g. `line 4: unit "web"`; every message starts with it.
pub fn validate_unit(u: &UnitSpec, at: &str) -> Result<(), SpecError> {
    match u.kind {
        UnitKind::Managed | UnitKind::Integrated => {
            if u.command.is_none() {
                return Err(SpecError(format!(
                    "{at}: missing field `command` (a {} unit runs a command)",
                    u.kind.as_str()
                )));
            }
            let unmanaged_only = [
                ("attach", u.attach.is_some()),
                ("signal_allowed", u.signal_allowed),
                ("start_command", u.start_command.is_some()),
                ("stop_command", u.stop_command.is_some()),
            ];
            if let Some((field, _)) = unmanaged_only.iter().find(|(_, set)| *set) {
                return Err(SpecError(format!(
                    "{at}: `{field}` is for unmanaged units; this one is {}",
                    u.kind.as_str()
                )));
            }
        }
        UnitKind::Unmanaged => {
            if u.attach.is_none() {
                return Err(SpecError(format!(
                    "{at}: missing field `attach` (pid_file, process or port): how to find the process"
                )));
            }
            if u.command.is_some() {
                return Err(SpecError(format!("{at}: an unmanaged unit has no `command`; `start_command` starts it")));
            }
            let managed_only = [
                ("startup", u.startup.is_some()),
                ("liveness", u.liveness.is_some()),
                ("readiness", u.readiness.is_some()),
                ("limits", u.limits != Limits::default()),
                ("user", u.user.is_some()),
                ("group", u.group.is_some()),
                ("ports", !u.ports.is_empty()),
            ];
            if let Some((field, _)) = managed_only.iter().find(|(_, set)| *set) {
                return Err(SpecError(format!(
                    "{at}: `{field}` is not supported for unmanaged units (the agent did not start the process)"
                )));
            }
        }
    }
    let mut port_names = BTreeMap::new();
    for p in &u.ports {
        if port_names.insert(p.env_name(), ()).is_some() {
            return Err(SpecError(format!("{at}: port {:?} is listed twice", p.name.as_str())));
        }
    }
    // `${HSU_...}` in a command must be a variable the agent sets for this unit: a typo
    // would otherwise only show when the unit starts.
    let mut provided: Vec<String> = vec!["HSU_UNIT".into()];
    provided.extend(u.ports.iter().map(PortSpec::env_name));
    if u.kind == UnitKind::Integrated {
        provided.push("HSU_CORE_ADDR".into());
    }
    let argvs = [&u.command, &u.start_command, &u.stop_command];
    for arg in argvs.into_iter().flatten().flat_map(|c| c.0.iter()) {
        let refs = crate::expand::references(arg).map_err(|e| SpecError(format!("{at}: {e}")))?;
        if let Some(bad) = refs.iter().find(|r| r.starts_with("HSU_") && !provided.contains(r)) {
            return Err(SpecError(format!(
                "{at}: the command uses ${{{bad}}}, which the agent does not set for this unit (it sets {})",
                provided.join(", ")
            )));
        }
    }
    for (which, probe) in [("startup", &u.startup), ("liveness", &u.liveness), ("readiness", &u.readiness)] {
        if let Some(PortRef::Named(n)) = probe.as_ref().and_then(Probe::port) {
            if !u.ports.iter().any(|p| p.name == *n) {
                return Err(SpecError(format!(
                    "{at}: {which} probe uses port {:?}, which is not among the unit's ports",
                    n.as_str()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
