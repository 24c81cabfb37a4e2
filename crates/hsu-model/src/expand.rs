//! `${NAME}` in a unit's command, replaced by the unit's environment when it starts (so that
//! `["python3", "-m", "http.server", "${HSU_PORT_HTTP}"]` needs no shell). `$${` is a literal
//! `${`; a `$` not followed by `{` is left as it is.

/// Replaces every `${NAME}` in `text` by `lookup(NAME)`; an unknown name is an error naming it.
pub fn expand(text: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("${{{name}}} in {text:?} is not a variable name"));
            }
            out.push_str(&lookup(name).ok_or_else(|| format!("{text:?} uses ${{{name}}}, which is not set"))?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The names `text` refers to with `${NAME}` (for checking a spec before anything runs).
pub fn references(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    expand(text, |n| {
        names.push(n.to_string());
        Some(String::new())
    })?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "HSU_PORT_HTTP" => Some("8080".into()),
            "HOME" => Some("/root".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_escapes_and_refuses() {
        assert_eq!(expand("${HSU_PORT_HTTP}", env).unwrap(), "8080");
        assert_eq!(expand("--port=${HSU_PORT_HTTP} -d ${HOME}/x", env).unwrap(), "--port=8080 -d /root/x");
        assert_eq!(expand("$${HOME} costs $5", env).unwrap(), "${HOME} costs $5");
        assert!(expand("${NOPE}", env).unwrap_err().contains("${NOPE}, which is not set"));
        assert!(expand("${HOME", env).unwrap_err().contains("unclosed"));
        assert!(expand("${A B}", env).unwrap_err().contains("not a variable name"));
        assert_eq!(references("a ${X} b ${Y_2} $${Z}").unwrap(), ["X", "Y_2"]);
    }
}
