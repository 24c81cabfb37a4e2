//! Reading deployment and job documents: multi-document YAML files split and parsed all or
//! nothing, every error naming its file, line and field, then each object validated.

use super::*;

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
pub(super) fn split_documents(text: &str) -> Vec<(u64, String)> {
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

pub(super) fn parse_one(line: u64, text: &str) -> Result<Object, String> {
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
        service: Option<serde_saphyr::Spanned<de::IgnoredAny>>,
        services: Option<serde_saphyr::Spanned<de::IgnoredAny>>,
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
        service: at.spec.value.service.map_or(spec, |s| s.referenced.line()),
        services: at.spec.value.services.map_or(spec, |s| s.referenced.line()),
    };
    validate(&object, &lines)?;
    Ok(object)
}

/// Parses with serde-saphyr; its messages start with "error: ", which the caller's prefix
/// (file name) replaces.
pub(super) fn from_str<T: de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_saphyr::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.strip_prefix("error: ").map(str::to_string).unwrap_or(msg);
        name_the_field(text, msg)
    })
}

/// serde-saphyr says where a bad value is ("line 4 column 18: invalid u32"), not which field
/// holds it: add the key written before that column, when there is one on that line.
pub(super) fn name_the_field(text: &str, msg: String) -> String {
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
pub(super) struct Lines {
    spec: u64,
    template: u64,
    strategy: u64,
    placement: u64,
    service: u64,
    services: u64,
}

pub(super) fn validate(object: &Object, lines: &Lines) -> Result<(), String> {
    let Lines { spec: spec_line, template: template_line, strategy: strategy_line, placement: placement_line, .. } =
        *lines;
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
            validate_services(d, lines)?;
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

/// Each service names a port of the template, and no name is given twice.
fn validate_services(d: &Deployment, lines: &Lines) -> Result<(), String> {
    let name = &d.metadata.name;
    let ports: Vec<&str> = d.spec.template.ports.iter().map(|p| p.name.as_str()).collect();
    let fields = d.spec.service.iter().map(|s| (s, "spec.service".to_string(), lines.service));
    let listed = d.spec.services.iter().enumerate().map(|(i, s)| (s, format!("spec.services[{i}]"), lines.services));
    let mut seen = BTreeMap::new();
    for (s, field, line) in fields.chain(listed) {
        if !ports.contains(&s.port.as_str()) {
            let known = if ports.is_empty() { "it has none".to_string() } else { ports.join(", ") };
            return Err(format!(
                "line {line}: Deployment {name}: {field}.port {:?} is not among spec.template.ports ({known})",
                s.port.as_str()
            ));
        }
        if let Some(first) = seen.insert(s.name.as_str(), field.clone()) {
            return Err(format!(
                "line {line}: Deployment {name}: {field}.name {:?} is also the name of {first}",
                s.name.as_str()
            ));
        }
    }
    Ok(())
}
