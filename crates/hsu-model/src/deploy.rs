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

/// The rolling update, as Kubernetes defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Strategy {
    /// Instances above `replicas` allowed during an update (rounded up from a percentage).
    #[serde(default = "quarter")]
    pub max_surge: IntOrPercent,
    /// Instances below `replicas` allowed to be unavailable (rounded down from a percentage).
    #[serde(default = "quarter")]
    pub max_unavailable: IntOrPercent,
    /// How long a new instance must stay ready before it counts as available.
    #[serde(default = "zero")]
    pub min_ready: Dur,
    /// A rollout that makes no progress for this long has failed.
    #[serde(default = "ten_minutes")]
    pub progress_deadline: Dur,
    /// When a rollout fails, go back to the last revision that was fully rolled out.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Move only this many instances to a new revision, then pause until `hsu rollout resume`
    /// (0: no canary step).
    #[serde(default)]
    pub canary: u32,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            max_surge: quarter(),
            max_unavailable: quarter(),
            min_ready: zero(),
            progress_deadline: ten_minutes(),
            auto_rollback: false,
            canary: 0,
        }
    }
}

fn quarter() -> IntOrPercent {
    IntOrPercent::Percent(25)
}

fn zero() -> Dur {
    Dur(std::time::Duration::ZERO)
}

fn ten_minutes() -> Dur {
    Dur(std::time::Duration::from_secs(600))
}

impl Strategy {
    /// (max surge, max unavailable) as counts for `replicas`. Like Kubernetes: surge rounds up,
    /// unavailable rounds down, and when both come to zero one instance may be unavailable.
    pub fn counts(&self, replicas: u32) -> (u32, u32) {
        let surge = self.max_surge.count(replicas, true);
        let unavailable = self.max_unavailable.count(replicas, false);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }
}

/// `2` or `"25%"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

impl IntOrPercent {
    pub fn count(self, of: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(of) * u64::from(p);
                let n = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, IntOrPercent::Int(0) | IntOrPercent::Percent(0))
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count such as 1 or a percentage such as \"25%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrPercent, E> {
                u32::try_from(v).map(IntOrPercent::Int).map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrPercent, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("expected zero or more, found {v}")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrPercent, E> {
                let bad = || E::custom(format!("expected a count such as 1 or a percentage such as 25%, found {v:?}"));
                match v.strip_suffix('%') {
                    Some(p) => {
                        let p: u32 = p.trim().parse().map_err(|_| bad())?;
                        if p > 100 {
                            return Err(E::custom(format!("percentage {v:?} is above 100%")));
                        }
                        Ok(IntOrPercent::Percent(p))
                    }
                    None => v.trim().parse().map(IntOrPercent::Int).map_err(|_| bad()),
                }
            }
        }
        d.deserialize_any(V)
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

/// Parses every document of every file. Nothing is returned unless all are valid and no object
/// (kind, namespace, name) appears twice.
pub fn parse_documents(sources: &[Source<'_>]) -> Result<Vec<Document>, SpecError> {
    let mut docs = Vec::new();
    for src in sources {
        for (line, text) in split_documents(src.text) {
            if text.trim().lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
                continue;
            }
            let object = parse_one(line, &text).map_err(|e| SpecError(format!("{}: {e}", src.file)))?;
            docs.push(Document { file: src.file.to_string(), line, object });
        }
    }
    if docs.is_empty() {
        let files: Vec<&str> = sources.iter().map(|s| s.file).collect();
        return Err(SpecError(format!("{}: no documents found", files.join(", "))));
    }
    let mut seen: BTreeMap<(&str, &str, &str), (&str, u64)> = BTreeMap::new();
    for d in &docs {
        let m = d.object.metadata();
        let key = (d.object.kind(), m.namespace.as_str(), m.name.as_str());
        if let Some((file, line)) = seen.insert(key, (&d.file, d.line)) {
            return Err(SpecError(format!(
                "{}: line {}: {} {}/{} is also defined in {file} at line {line}",
                d.file, d.line, key.0, key.1, key.2
            )));
        }
    }
    Ok(docs)
}

/// Splits a multi-document YAML text at `---` lines; each part is padded with the blank lines
/// that precede it, so that the parser's line numbers are the file's.
fn split_documents(text: &str) -> Vec<(u64, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1u64;
    for (i, l) in text.lines().enumerate() {
        let is_marker = l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
        if is_marker {
            docs.push((start, std::mem::take(&mut current)));
            start = i as u64 + 2;
            current = "\n".repeat(i + 1);
        } else if l == "..." {
            current.push('\n');
        } else {
            current.push_str(l);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

fn parse_one(line: u64, text: &str) -> Result<Object, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Header {
        api_version: Option<serde_saphyr::Spanned<String>>,
        kind: Option<serde_saphyr::Spanned<String>>,
    }
    let header: Header = from_str(text)?;
    let api = header
        .api_version
        .ok_or_else(|| format!("line {line}: missing field `apiVersion` (expected {API_VERSION})"))?;
    if api.value != API_VERSION {
        return Err(format!(
            "line {}: apiVersion {:?} is not known; expected {API_VERSION:?}",
            api.referenced.line(),
            api.value
        ));
    }
    let kind = header.kind.ok_or_else(|| format!("line {line}: missing field `kind` (Deployment or Job)"))?;
    // Whole documents, so that an unknown top-level field is an error too.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct DeploymentDoc {
        #[serde(rename = "apiVersion")]
        _api_version: String,
        #[serde(rename = "kind")]
        _kind: String,
        metadata: Metadata,
        spec: DeploymentSpec,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct JobDoc {
        #[serde(rename = "apiVersion")]
        _api_version: String,
        #[serde(rename = "kind")]
        _kind: String,
        metadata: Metadata,
        spec: JobSpec,
    }
    // Where the parts of the spec are, for messages about checks that span several fields.
    #[derive(Deserialize)]
    struct SpecAt {
        spec: serde_saphyr::Spanned<PartsAt>,
    }
    #[derive(Deserialize)]
    struct PartsAt {
        template: serde_saphyr::Spanned<de::IgnoredAny>,
        strategy: Option<serde_saphyr::Spanned<de::IgnoredAny>>,
        placement: Option<serde_saphyr::Spanned<de::IgnoredAny>>,
    }
    let object = match kind.value.as_str() {
        "Deployment" => {
            let d: DeploymentDoc = from_str(text)?;
            Object::Deployment(Deployment { metadata: d.metadata, spec: d.spec })
        }
        "Job" => {
            let d: JobDoc = from_str(text)?;
            Object::Job(Job { metadata: d.metadata, spec: d.spec })
        }
        other => {
            return Err(format!(
                "line {}: kind {other:?} is not known; expected Deployment or Job",
                kind.referenced.line()
            ))
        }
    };
    let at: SpecAt = from_str(text)?;
    let spec = at.spec.referenced.line();
    let lines = Lines {
        spec,
        template: at.spec.value.template.referenced.line(),
        strategy: at.spec.value.strategy.map_or(spec, |s| s.referenced.line()),
        placement: at.spec.value.placement.map_or(spec, |s| s.referenced.line()),
    };
    validate(&object, &lines)?;
    Ok(object)
}

/// Parses with serde-saphyr; its messages start with "error: ", which the caller's prefix
/// (file name) replaces.
fn from_str<T: de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_saphyr::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.strip_prefix("error: ").map(str::to_string).unwrap_or(msg);
        name_the_field(text, msg)
    })
}

/// serde-saphyr says where a bad value is ("line 4 column 18: invalid u32"), not which field
/// holds it: add the key written before that column, when there is one on that line.
fn name_the_field(text: &str, msg: String) -> String {
    let position = || {
        let rest = msg.split_once("line ")?.1;
        let (line, rest) = rest.split_once(" column ")?;
        let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some((line.parse::<usize>().ok()?, column.parse::<usize>().ok()?))
    };
    let Some((line, column)) = position() else { return msg };
    let Some(src) = text.lines().nth(line.saturating_sub(1)) else { return msg };
    let before: String = src.chars().take(column.saturating_sub(1)).collect();
    let Some(colon) = before.rfind(':') else { return msg };
    let key: String = before[..colon]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if key.is_empty() || msg.contains(&format!("`{key}`")) {
        return msg;
    }
    match msg.split_once('\n') {
        Some((first, rest)) => format!("{first} (field `{key}`)\n{rest}"),
        None => format!("{msg} (field `{key}`)"),
    }
}

/// Lines of a document's spec and of its parts.
struct Lines {
    spec: u64,
    template: u64,
    strategy: u64,
    placement: u64,
}

fn validate(object: &Object, lines: &Lines) -> Result<(), String> {
    let Lines { spec: spec_line, template: template_line, strategy: strategy_line, placement: placement_line } = *lines;
    let (template, placement, what) = match object {
        Object::Deployment(d) => (&d.spec.template, &d.spec.placement, "Deployment"),
        Object::Job(j) => (&j.spec.template, &j.spec.placement, "Job"),
    };
    let name = &object.metadata().name;
    if !template.name.as_str().is_empty() {
        return Err(format!(
            "line {template_line}: {what} {name}: spec.template.name is not allowed; each instance is named after the {}",
            what.to_ascii_lowercase()
        ));
    }
    validate_unit(template, &format!("line {template_line}: {what} {name}: spec.template")).map_err(|e| e.0)?;
    if template.kind == crate::unit::UnitKind::Unmanaged {
        return Err(format!(
            "line {template_line}: {what} {name}: spec.template.kind: an unmanaged unit cannot be scheduled (it is attached where it runs); use managed or integrated"
        ));
    }
    for c in &placement.constraints {
        let needs_values = matches!(c.operator, Operator::In | Operator::NotIn);
        if needs_values == c.values.is_empty() {
            return Err(format!(
                "line {placement_line}: {what} {name}: spec.placement.constraints: {:?} with operator {:?} {}",
                c.key.as_str(),
                c.operator,
                if needs_values { "needs at least one value" } else { "takes no values" }
            ));
        }
    }
    if placement.max_per_node == Some(0) {
        return Err(format!("line {placement_line}: {what} {name}: spec.placement.maxPerNode must be at least 1"));
    }
    match object {
        Object::Deployment(d) => {
            let s = &d.spec.strategy;
            if d.spec.replicas > MAX_COUNT {
                return Err(format!(
                    "line {spec_line}: Deployment {name}: spec.replicas ({}) is more than {MAX_COUNT}",
                    d.spec.replicas
                ));
            }
            for (field, v) in [("maxSurge", s.max_surge), ("maxUnavailable", s.max_unavailable)] {
                if matches!(v, IntOrPercent::Int(n) if n > MAX_COUNT) {
                    return Err(format!(
                        "line {strategy_line}: Deployment {name}: spec.strategy.{field} ({v}) is more than {MAX_COUNT}"
                    ));
                }
            }
            if s.max_surge.is_zero() && s.max_unavailable.is_zero() {
                return Err(format!(
                    "line {strategy_line}: Deployment {name}: spec.strategy: maxSurge and maxUnavailable cannot both be 0 (no instance could ever be replaced)"
                ));
            }
            if s.progress_deadline.0 <= s.min_ready.0 {
                return Err(format!(
                    "line {strategy_line}: Deployment {name}: spec.strategy.progressDeadline ({}) must be longer than minReady ({})",
                    crate::duration::format_duration(s.progress_deadline.0),
                    crate::duration::format_duration(s.min_ready.0)
                ));
            }
            if s.canary > d.spec.replicas {
                return Err(format!(
                    "line {strategy_line}: Deployment {name}: spec.strategy.canary ({}) is more than replicas ({})",
                    s.canary, d.spec.replicas
                ));
            }
        }
        Object::Job(j) => {
            if j.spec.completions == 0 || j.spec.parallelism == 0 {
                return Err(format!(
                    "line {spec_line}: Job {name}: spec.completions and spec.parallelism must be at least 1"
                ));
            }
            let counts =
                [("completions", j.spec.completions), ("parallelism", j.spec.parallelism), ("retries", j.spec.retries)];
            for (field, v) in counts {
                if v > MAX_COUNT {
                    return Err(format!("line {spec_line}: Job {name}: spec.{field} ({v}) is more than {MAX_COUNT}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
