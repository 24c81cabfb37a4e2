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

mod limits;
mod names;
mod policy;
mod probe;
mod values;

pub use limits::*;
pub use names::*;
pub use policy::*;
pub use probe::*;
pub use values::*;

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
