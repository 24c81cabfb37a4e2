//! The CLI's key-value and token commands on a one-node cluster: exit codes, stderr, and the
//! fields scripts rely on in `-o json`.

use serde_json::Value;

use crate::harness::{cli, cli_ok, hsu, poll, status_json, NodeProc};

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn kv_cas_watch_and_tokens_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let n1 = NodeProc::init(root.path(), "solo");
    let config = n1.dir.join("admin.conf");
    let api = n1.api;
    poll("the node to lead", || {
        status_json(&config, api).and_then(|s| if s["leader"] == "solo" { Ok(()) } else { Err(s.to_string()) })
    });

    // Compare-and-swap on the mod revision: the stale one fails with exit 1 and changes nothing.
    let r1 =
        json(&cli_ok(&config, api, &["kv", "put", "app/a", "1", "-o", "json"]).unwrap())["revision"].as_u64().unwrap();
    let r1s = r1.to_string();
    cli_ok(&config, api, &["kv", "put", "app/a", "2", "--if-revision", &r1s]).unwrap();
    let stale = cli(&config, api, &["kv", "put", "app/a", "3", "--if-revision", &r1s]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("failed precondition"), "{stale:?}");
    assert!(stale.stdout.is_empty());
    let got = json(&cli_ok(&config, api, &["kv", "get", "app/a", "-o", "json"]).unwrap());
    assert_eq!((got[0]["value"].as_str(), got[0]["version"].as_u64()), (Some("2"), Some(2)));

    // Watch from the first revision replays both writes, in order, and a delete shows up too.
    cli_ok(&config, api, &["kv", "del", "app/a"]).unwrap();
    let w = cli_ok(
        &config,
        api,
        &["kv", "watch", "app/", "--prefix", "--from-revision", &r1s, "--count", "3", "-o", "json"],
    )
    .unwrap();
    let events: Vec<Value> = w.lines().map(json).collect();
    let seen: Vec<(&str, &str)> =
        events.iter().map(|e| (e["type"].as_str().unwrap(), e["kv"]["value"].as_str().unwrap())).collect();
    assert_eq!(seen, vec![("PUT", "1"), ("PUT", "2"), ("DELETE", "")]);
    let missing = cli(&config, api, &["kv", "get", "app/a"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // Tokens: create with a use limit, list shows it, revoke marks it.
    let t = json(&cli_ok(&config, api, &["token", "create", "--uses", "1", "--ttl", "1h", "-o", "json"]).unwrap());
    let id = t["id"].as_str().unwrap().to_string();
    assert!(t["token"].as_str().unwrap().starts_with(&format!("hsu1.{id}.")));
    let list = json(&cli_ok(&config, api, &["token", "list", "-o", "json"]).unwrap());
    let entry = list.as_array().unwrap().iter().find(|e| e["id"] == id.as_str()).cloned().unwrap();
    assert_eq!((entry["uses_left"].as_u64(), entry["revoked"].as_bool()), (Some(1), Some(false)));
    assert!(!list.to_string().contains(t["token"].as_str().unwrap()), "token list shows a secret");
    cli_ok(&config, api, &["token", "revoke", &id]).unwrap();
    let list = json(&cli_ok(&config, api, &["token", "list", "-o", "json"]).unwrap());
    assert!(list.as_array().unwrap().iter().any(|e| e["id"] == id.as_str() && e["revoked"] == true));

    // YAML output, and errors on stderr with a non-zero exit code.
    let yaml = cli_ok(&config, api, &["status", "-o", "yaml"]).unwrap();
    assert!(yaml.contains("leader: solo"), "{yaml}");
    let no_config = hsu().args(["--config", "/nonexistent/admin.conf", "status"]).output().unwrap();
    assert_eq!(no_config.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_config.stderr).contains("no client config"), "{no_config:?}");
    assert!(no_config.stdout.is_empty());
}
