//! Tests of unit specs: parsing, validation and errors.

use super::*;

const GOOD: &str = r#"
units:
  - name: web
    kind: managed
    command: ["python3", "-m", "http.server", "8080"]
    env: {GREETING: hi}
    restart: {policy: always, backoff: {initial: 100ms, max: 30s}}
    stop: {signal: INT, grace: 3s}
    logs: {max_size: 1MiB, max_files: 3}
    ports: [{name: http}]
    readiness: {http: {port: http, path: /}, period: 1s}
  - name: worker
    command: [sleep, "100"]
    restart: {policy: on-failure, flap: {max_restarts: 3, window: 1m}}
    liveness: {exec: {command: ["true"]}, period: 500ms, failure_threshold: 2}
    startup: {tcp: {port: 9000}, period: 100ms}
    limits: {memory: 64MiB, cpu: 0.5, pids: 100, open_files: 1024, core: 0}
"#;

#[test]
fn a_full_file_parses_with_defaults_filled_in() {
    let f = parse_units(GOOD).unwrap();
    assert_eq!(f.units.len(), 2);
    let web = &f.units[0];
    assert_eq!(web.name.as_str(), "web");
    let command = web.command.as_ref().unwrap();
    assert_eq!(command.program(), "python3");
    assert_eq!(command.args(), ["-m", "http.server", "8080"]);
    assert_eq!(web.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), [("GREETING", "hi")]);
    assert_eq!(web.restart.backoff.initial, Dur(Duration::from_millis(100)));
    assert_eq!(web.restart.backoff.reset_after, Backoff::default().reset_after);
    assert_eq!(web.stop.signal, StopSignal::Int);
    assert_eq!(web.stop.grace, Dur(Duration::from_secs(3)));
    assert_eq!(web.logs, LogSpec { max_size: ByteSize(1 << 20), max_files: 3 });
    assert_eq!(web.ports[0].env_name(), "HSU_PORT_HTTP");
    let worker = &f.units[1];
    assert_eq!(worker.kind, UnitKind::Managed);
    assert_eq!(worker.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(worker.restart.flap, FlapLimit { max_restarts: 3, window: Dur(Duration::from_secs(60)) });
    assert_eq!(worker.stop, StopSpec::default());
    assert_eq!(worker.logs, LogSpec::default());
    let r = web.readiness.as_ref().unwrap();
    assert_eq!(r.check, Check::Http { port: PortRef::Named(UnitName::new("http").unwrap()), path: "/".into() });
    assert_eq!((r.period, r.failure_threshold, r.success_threshold), (Dur(Duration::from_secs(1)), 3, 1));
    let l = worker.liveness.as_ref().unwrap();
    assert_eq!(l.failure_threshold, 2);
    assert_eq!(worker.startup.as_ref().unwrap().check, Check::Tcp { port: PortRef::Number(9000) });
    let l = &worker.limits;
    assert_eq!(
        (l.memory, l.cpu, l.pids, l.open_files, l.core),
        (Some(ByteSize(64 << 20)), Some(MilliCpu(500)), Some(100), Some(1024), Some(ByteSize(0)))
    );
    assert_eq!(web.limits, Limits::default());
}

/// Each bad file is refused with a message that has the line and says what is wrong.
#[test]
fn bad_specs_name_the_line_and_the_problem() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown field",
            "units:\n  - name: a\n    command: [x]\n    comand: [y]\n",
            &["line 4", "unknown field `comand`"],
        ),
        ("wrong type", "units:\n  - name: a\n    command: [x]\n    logs: {max_files: many}\n", &["line 4", "u32"]),
        (
            "negative duration",
            "units:\n  - name: a\n    command: [x]\n    stop: {grace: -5s}\n",
            &["line 4", "\"-5s\" is negative"],
        ),
        ("missing command", "units:\n  - name: a\n    env: {A: b}\n", &["line 2", "missing field `command`"]),
        (
            "unmanaged without attach",
            "units:\n  - name: a\n    command: [x]\n  - name: b\n    kind: unmanaged\n",
            &["line 4", "missing field `attach`"],
        ),
        (
            "two ways to attach",
            "units:\n  - name: b\n    kind: unmanaged\n    attach: {port: 80, pid_file: /x}\n",
            &["line 4"],
        ),
        (
            "managed-only field on an unmanaged unit",
            "units:\n  - name: b\n    kind: unmanaged\n    attach: {port: 80}\n    limits: {memory: 1G}\n",
            &["line 2", "`limits` is not supported for unmanaged units"],
        ),
        (
            "unmanaged field on a managed unit",
            "units:\n  - name: a\n    command: [x]\n    signal_allowed: true\n",
            &["line 2", "`signal_allowed` is for unmanaged units"],
        ),
        ("empty command", "units:\n  - name: a\n    command: []\n", &["line 3", "command is empty"]),
        ("no name", "units:\n  - command: [x]\n", &["line 2", "missing field `name`"]),
        (
            "duration without unit",
            "units:\n  - name: a\n    command: [x]\n    stop: {grace: 5}\n",
            &["line 4", "found the number 5"],
        ),
        (
            "bad policy",
            "units:\n  - name: a\n    command: [x]\n    restart: {policy: sometimes}\n",
            &["line 4", "sometimes", "on-failure"],
        ),
        ("bad name", "units:\n  - name: Web_1\n    command: [x]\n", &["line 2", "lowercase letters"]),
        (
            "duplicate name",
            "units:\n  - name: a\n    command: [x]\n  - name: a\n    command: [y]\n",
            &["line 4", "already used on line 2"],
        ),
        ("reserved env", "units:\n  - name: a\n    command: [x]\n    env: {HSU_PORT_X: \"1\"}\n", &["line 4", "HSU_"]),
        (
            "backoff max below initial",
            "units:\n  - name: a\n    command: [x]\n    restart: {backoff: {initial: 10s, max: 1s}}\n",
            &["line 4", "shorter than restart.backoff.initial"],
        ),
        (
            "bad signal",
            "units:\n  - name: a\n    command: [x]\n    stop: {signal: STOP}\n",
            &["line 4", "unknown stop signal"],
        ),
        (
            "unknown kind",
            "units:\n  - name: a\n    kind: container\n    command: [x]\n",
            &["line 3", "unknown kind \"container\"", "integrated"],
        ),
        (
            "tiny log size",
            "units:\n  - name: a\n    command: [x]\n    logs: {max_size: 10}\n",
            &["line 4", "at least 1024"],
        ),
        ("bad cpu", "units:\n  - name: a\n    command: [x]\n    limits: {cpu: lots}\n", &["line 4", "millicores"]),
        (
            "unknown limit",
            "units:\n  - name: a\n    command: [x]\n    limits: {gpus: 1}\n",
            &["line 4", "unknown field `gpus`"],
        ),
        (
            "unknown HSU variable",
            "units:\n  - name: a\n    command: [serve, '${HSU_PORT_HTPP}']\n    ports: [{name: http}]\n",
            &["line 2", "${HSU_PORT_HTPP}", "HSU_PORT_HTTP"],
        ),
    ];
    for (what, yaml, wants) in cases {
        let err = parse_units(yaml).expect_err(what).to_string();
        for want in *wants {
            assert!(err.contains(want), "{what}: {want:?} not in:\n{err}");
        }
    }
}

#[test]
fn backoff_doubles_up_to_its_maximum() {
    let b = Backoff {
        initial: Dur(Duration::from_millis(100)),
        max: Dur(Duration::from_secs(1)),
        reset_after: Dur(Duration::from_secs(10)),
    };
    let delays: Vec<u128> = (1..=6).map(|a| b.delay(a).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    assert_eq!(b.delay(200), Duration::from_secs(1), "no overflow on long runs of failures");
}

#[test]
fn sizes_parse_with_binary_units() {
    assert_eq!(ByteSize::parse("512K"), Ok(ByteSize(512 << 10)));
    assert_eq!(ByteSize::parse("10MiB"), Ok(ByteSize(10 << 20)));
    assert_eq!(ByteSize::parse("2G"), Ok(ByteSize(2 << 30)));
    assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
    assert!(ByteSize::parse("10 parsecs").unwrap_err().contains("unknown unit"));
    assert!(ByteSize::parse("lots").unwrap_err().contains("expected a size"));
}

#[test]
fn a_spec_survives_a_round_trip_through_json() {
    // The agent keeps the spec of what it runs in a JSON record and compares it after a restart.
    for u in parse_units(GOOD).unwrap().units {
        let json = serde_json::to_string(&u).unwrap();
        let back: UnitSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, u, "{json}");
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// A units file cut anywhere or with a line replaced is parsed or refused with a message
        /// naming a line; never a panic.
        #[test]
        fn mangled_units_fail_cleanly(cut in 0usize..GOOD.len(), line in 0usize..20, junk in "[ -~]{0,30}") {
            let cut = (0..=cut).rev().find(|i| GOOD.is_char_boundary(*i)).unwrap_or(0);
            let mut lines: Vec<String> = GOOD[..cut].lines().map(String::from).collect();
            if !lines.is_empty() {
                let i = line % lines.len();
                lines[i] = junk;
            }
            if let Err(e) = parse_units(&lines.join("\n")) {
                prop_assert!(!e.0.is_empty());
            }
        }

        #[test]
        fn arbitrary_text_fails_cleanly(text in ".{0,200}") {
            let _ = parse_units(&text);
        }

        /// Sizes and durations from the same untrusted files.
        #[test]
        fn quantities_parse_or_fail_cleanly(text in "[0-9a-zA-Z.+-]{0,24}") {
            if let Err(e) = ByteSize::parse(&text) {
                prop_assert!(!e.is_empty());
            }
            if let Err(e) = crate::duration::parse_duration(&text) {
                prop_assert!(!e.is_empty());
            }
        }
    }
}
