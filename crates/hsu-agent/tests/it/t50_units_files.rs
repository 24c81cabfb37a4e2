//! Loading units files: the example the README uses, and directories of files.

use std::path::Path;

use hsu_agent::standalone::load_units;

#[test]
fn the_example_units_file_loads() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/units.yaml");
    let units = load_units(&example).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["web", "ticker"]);
}

#[test]
fn a_directory_is_every_yaml_file_in_it_and_names_stay_unique_across_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "units:\n  - {name: one, command: [sleep, '1']}\n").unwrap();
    std::fs::write(dir.path().join("b.yml"), "units:\n  - {name: two, command: [sleep, '1']}\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a units file").unwrap();
    let names: Vec<String> = load_units(dir.path()).unwrap().iter().map(|u| u.name.to_string()).collect();
    assert_eq!(names, ["one", "two"]);

    std::fs::write(dir.path().join("c.yaml"), "units:\n  - {name: one, command: [sleep, '2']}\n").unwrap();
    let err = load_units(dir.path()).unwrap_err();
    assert!(err.contains("c.yaml") && err.contains("\"one\"") && err.contains("a.yaml"), "{err}");

    std::fs::write(dir.path().join("c.yaml"), "units:\n  - {name: three, command: 5}\n").unwrap();
    let err = load_units(dir.path()).unwrap_err();
    assert!(err.contains("c.yaml") && err.contains("line 2"), "{err}");
}
