//! Deployments and jobs: the declarative objects users apply (`hsu apply -f FILE`).
//!
//! A file holds one or more YAML documents (separated by `---`), each with `apiVersion: hsu/v1`
//! and a `kind` (`Deployment` or `Job`). The template of either is a unit, as in a units file,
//! without a name (every instance gets its own). Object fields are camelCase, as in Kubernetes;
//! the template keeps the unit's own field names. Errors name the file, the line and the field;
//! [`parse_documents`] returns nothing unless every document of every file is valid.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::unit::{validate_unit, ByteSize, Dur, MilliCpu, SpecError, UnitName, UnitSpec};

mod parse;
mod strategy;

pub use parse::parse_documents;
pub use strategy::*;

pub const API_VERSION: &str = "hsu/v1";

/// Longest deployment or job name: an instance's unit name is `<name>-<6-character id>`, and a
/// unit name is at most 63 characters.
pub const MAX_NAME: usize = 56;

/// Largest replica count, surge, completions, parallelism or retries a spec may ask for.
pub const MAX_COUNT: u32 = 10_000;

/// One applied object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    Deployment(Deployment),
    Job(Job),
}

impl Object {
    pub fn metadata(&self) -> &Metadata {
        match self {
            Object::Deployment(d) => &d.metadata,
            Object::Job(j) => &j.metadata,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Object::Deployment(_) => "Deployment",
            Object::Job(_) => "Job",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: ObjectName,
    #[serde(default = "default_namespace")]
    pub namespace: ObjectName,
    #[serde(default)]
    pub labels: BTreeMap<LabelKey, String>,
}

fn default_namespace() -> ObjectName {
    ObjectName("default".into())
}

/// A deployment or namespace name: a DNS label of at most [`MAX_NAME`] characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ObjectName(String);

impl ObjectName {
    pub fn new(s: &str) -> Result<ObjectName, String> {
        if s.len() > MAX_NAME {
            return Err(format!("name {s:?} is {} characters long; at most {MAX_NAME} are allowed", s.len()));
        }
        UnitName::new(s).map(|_| ObjectName(s.to_string())).map_err(|e| e.replacen("unit name", "name", 1))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ObjectName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ObjectName::new(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A label key: 1-63 characters of letters, digits, `-`, `_`, `.` and `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct LabelKey(String);

impl LabelKey {
    pub fn new(s: &str) -> Result<LabelKey, String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
        if s.is_empty() || s.len() > 63 || !s.chars().all(ok) {
            return Err(format!("label key {s:?} must be 1-63 characters of letters, digits, '-', '_', '.' and '/'"));
        }
        Ok(LabelKey(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LabelKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LabelKey::new(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Deployment {
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default = "one")]
    pub replicas: u32,
    pub template: UnitSpec,
    /// What one instance needs; the scheduler places it only where this much is free.
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub strategy: Strategy,
    /// Revisions kept for `hsu rollout undo` besides the current one.
    #[serde(default = "ten")]
    pub revision_history_limit: u32,
    /// A paused deployment keeps its instances as they are: no rollout step is taken.
    #[serde(default)]
    pub paused: bool,
    /// The service its instances provide (`service: {name: web, port: http}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// More services, when it provides several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
}

impl DeploymentSpec {
    /// `service` and `services` together.
    pub fn all_services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.service.iter().chain(&self.services)
    }
}

/// `service: {name: web, port: http}` in a deployment's spec: the service `web` is reached on
/// the template's port `http` of each instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub name: ObjectName,
    /// The name of one of the template's `ports`.
    pub port: UnitName,
}

fn one() -> u32 {
    1
}

fn ten() -> u32 {
    10
}

/// What an instance asks of a node: the scheduler sums these per node against its capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    #[serde(default)]
    pub cpu: Option<MilliCpu>,
    #[serde(default)]
    pub memory: Option<ByteSize>,
}

impl Resources {
    pub fn cpu_millis(&self) -> u64 {
        self.cpu.map_or(0, |c| u64::from(c.0))
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.map_or(0, |m| m.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Placement {
    /// Only nodes that have every one of these labels with these values.
    #[serde(default)]
    pub node_selector: BTreeMap<LabelKey, String>,
    /// Further conditions on a node's labels (and `node.name`, `node.id`).
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// At most this many instances of the deployment on one node (default: no limit; the
    /// scheduler spreads them anyway while it can).
    #[serde(default)]
    pub max_per_node: Option<u32>,
}

/// `{key: zone, operator: In, values: [a, b]}`: Kubernetes' match expressions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Constraint {
    pub key: LabelKey,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Constraint {
    /// Whether a node with these labels satisfies the constraint.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(self.key.as_str());
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operator {
            Operator::In => write!(f, "{} in [{}]", self.key.as_str(), self.values.join(", ")),
            Operator::NotIn => write!(f, "{} not in [{}]", self.key.as_str(), self.values.join(", ")),
            Operator::Exists => write!(f, "{} exists", self.key.as_str()),
            Operator::DoesNotExist => write!(f, "{} does not exist", self.key.as_str()),
        }
    }
}

/// A run-to-completion unit: `completions` successful runs, each retried up to `retries` times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Job {
    pub metadata: Metadata,
    pub spec: JobSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobSpec {
    pub template: UnitSpec,
    /// Successful runs wanted per dispatch.
    #[serde(default = "one")]
    pub completions: u32,
    /// Runs at once.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Failed runs tolerated per dispatch before the job has failed.
    #[serde(default = "three")]
    pub retries: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub placement: Placement,
    /// A parameterized job does not run when applied, only when dispatched
    /// (`hsu job dispatch NAME`), as Nomad's parameterized jobs.
    #[serde(default)]
    pub dispatch_only: bool,
}

fn three() -> u32 {
    3
}

/// One parsed document and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub file: String,
    /// The line of the document's first line in its file (1-based).
    pub line: u64,
    pub object: Object,
}

/// A file's name and text.
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

#[cfg(test)]
mod tests;
