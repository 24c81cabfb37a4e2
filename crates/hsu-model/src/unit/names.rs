//! The checked names of a spec: unit names (DNS labels), commands (a non-empty argv) and
//! environment variable names.

use super::*;

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
pub struct Command(pub(super) Vec<String>);

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
