//! The tidy test of this workspace, and cases showing that each check catches what it is for.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;

#[test]
fn the_workspace_is_tidy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let problems = check_workspace(&root);
    assert!(problems.is_empty(), "the workspace is not tidy:\n  {}", problems.join("\n  "));
}

fn member(name: &str, deps: &[&str]) -> Member {
    Member {
        dir: format!("crates/{name}"),
        name: name.into(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        workspace_lints: true,
    }
}

const RULES: &str = "
openraft, sled: only low
mid: not low, serde
";

/// The problems of `members` under the order `low, mid, top` and [`RULES`].
fn check(members: &[Member]) -> Vec<String> {
    let order = parse_order("low, mid, top");
    check_dependencies(members, &order, &parse_rules(RULES).unwrap())
}

#[test]
fn a_tidy_set_has_no_problems() {
    let ok = [member("low", &["openraft", "sled"]), member("mid", &["tokio"]), member("top", &["low", "mid"])];
    assert_eq!(check(&ok), Vec::<String>::new());
}

#[test]
fn each_kind_of_edge_is_caught() {
    let cases: &[(&[Member], &str)] = &[
        (
            &[member("low", &["mid"]), member("mid", &[]), member("top", &[])],
            "low depends on mid, which does not come before it",
        ),
        (
            &[member("low", &[]), member("mid", &["mid"]), member("top", &[])],
            "mid depends on mid, which does not come before it",
        ),
        (
            &[member("low", &[]), member("mid", &["openraft"]), member("top", &[])],
            "mid depends on openraft, which only low may use",
        ),
        (
            &[member("low", &[]), member("mid", &[]), member("top", &["sled"])],
            "top depends on sled, which only low may use",
        ),
        (&[member("low", &[]), member("mid", &["low"]), member("top", &[])], "mid depends on low, which it must not"),
        (
            &[member("low", &[]), member("mid", &["serde"]), member("top", &[])],
            "mid depends on serde, which it must not",
        ),
        (
            &[member("low", &[]), member("mid", &[]), member("top", &["hsu-x"])],
            "top depends on hsu-x, which is not in the crate order",
        ),
        (
            &[member("low", &[]), member("mid", &[]), member("top", &[]), member("extra", &[])],
            "extra is a workspace member missing from the crate order",
        ),
        (&[member("low", &[]), member("mid", &[])], "the crate order lists top, which is not a workspace member"),
    ];
    for (members, expected) in cases {
        let problems = check(members);
        assert!(problems.iter().any(|p| p.contains(expected)), "expected {expected:?}, got {problems:?}");
    }
}

#[test]
fn manifests_are_read_from_every_dependency_table() {
    let manifest = r#"
[package]
name = "hsu-x"
[lints]
workspace = true
[dependencies]
hsu-model.workspace = true
[dev-dependencies]
hsu-store = { path = "../hsu-store" }
[build-dependencies]
protox = "1"
[target.'cfg(unix)'.dependencies]
rustix = "1"
[dependencies.renamed]
package = "sled"
"#;
    let m = parse_member("crates/hsu-x", manifest).unwrap();
    let expected: BTreeSet<String> =
        ["hsu-model", "hsu-store", "protox", "rustix", "sled"].iter().map(|s| s.to_string()).collect();
    assert_eq!(m.deps, expected);
    assert!(m.workspace_lints);
    // A dependency on the `hsu` crate itself is an edge like any other (the old line scan missed it).
    let m = parse_member(
        "crates/hsu-bench",
        "[package]\nname = \"hsu-bench\"\n[dependencies]\nhsu = { workspace = true }\n",
    )
    .unwrap();
    assert!(m.deps.contains("hsu") && !m.workspace_lints);
    let mut bench = member("hsu-bench", &["hsu"]);
    bench.workspace_lints = false;
    let order = parse_order("hsu, hsu-bench");
    let rules = parse_rules("hsu-bench: not hsu").unwrap();
    let problems = check_dependencies(&[member("hsu", &[]), bench], &order, &rules);
    assert_eq!(
        problems,
        vec![
            "crates/hsu-bench/Cargo.toml: no `[lints] workspace = true`".to_string(),
            "hsu-bench depends on hsu, which it must not".to_string(),
        ]
    );
}

#[test]
fn a_misnamed_package_and_a_bad_rule_are_reported() {
    let mut m = member("low", &[]);
    m.dir = "crates/lower".into();
    let problems = check(&[m, member("mid", &[]), member("top", &[])]);
    assert!(problems.iter().any(|p| p.contains("package low is not named after its directory lower")), "{problems:?}");
    let err = parse_rules("a: maybe b").unwrap_err();
    assert!(err.contains("expected `only ...` or `not ...`"), "{err}");
    let err = parse_rules("a only b").unwrap_err();
    assert!(err.contains("has no ':'"), "{err}");
}

#[test]
fn sources_need_a_header_and_stay_off_the_raft_handle() {
    assert_eq!(check_source("a.rs", "hsu", "//! What this owns.\nfn f() {}\n"), Vec::<String>::new());
    let missing = check_source("a.rs", "hsu", "use x;\n");
    assert_eq!(missing, vec!["a.rs: does not start with a `//!` paragraph saying what it owns".to_string()]);
    let raft = check_source("b.rs", "hsu", "//! B.\nlet t = store.raft().metrics();\n// store.raft() in a comment\n");
    assert_eq!(raft, vec!["b.rs:2: calls `.raft()`; outside hsu-store use `Store::status()`".to_string()]);
    assert!(check_source("c.rs", "hsu-store", "//! C.\nself.raft().metrics();\n").is_empty());
}

#[test]
fn a_key_prefix_written_outside_the_keys_file_is_found() {
    let keys =
        "pub const NODES: Space<ById, NodeRecord> = Space::new(\"/nodes/\");\npub const USER_KV: &str = \"/kv/\";\n";
    let prefixes = key_prefixes(keys);
    assert_eq!(prefixes, ["/nodes/", "/kv/"]);
    let found =
        check_key_literals("a.rs", "//! A.\nlet k = format!(\"/nodes/{id}\");\n// \"/kv/\" in a comment\n", &prefixes);
    assert_eq!(found, ["a.rs:2: writes the key prefix \"/nodes/\" itself; use the space in hsu_model::keys"]);
    assert!(check_key_literals("b.rs", "//! B.\nlet k = keys::NODES.key(id);\n", &prefixes).is_empty());
}

#[test]
fn an_import_circle_between_modules_is_found() {
    let dir = std::env::temp_dir().join(format!("hsu-tidy-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    let write = |path: &str, text: &str| std::fs::write(src.join(path), text).unwrap();
    write("lib.rs", "//! Root.\nmod a;\nmod b;\nmod c;\n");
    write("a.rs", "//! A.\nuse crate::b::B;\n");
    write("b.rs", "//! B.\nmod inner;\n// crate::c::C in a comment is no import\n");
    // `b/inner.rs` belongs to module b: b reaches a, and a reaches b.
    write("b/inner.rs", "//! Inner.\nfn f() { let _ = crate::a::A; let _ = hsu_crate::x; }\n");
    write("c.rs", "//! C.\nuse crate::a::A;\n");
    write("b/tests.rs", "use crate::c::C;\n");
    let graph = module_imports(&src);
    assert_eq!(graph["b"], BTreeSet::from(["a".to_string()]), "{graph:?}");
    assert_eq!(modules_in_circles(&graph), BTreeSet::from(["a".to_string(), "b".to_string()]));
    // Without b's inner file, no module reaches itself.
    std::fs::remove_file(src.join("b/inner.rs")).unwrap();
    assert!(modules_in_circles(&module_imports(&src)).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
