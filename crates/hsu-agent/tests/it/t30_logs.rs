//! stdout and stderr reach their files, and the files rotate at the configured size.

use hsu_agent::logs::numbered;
use hsu_agent::record::unit_dir;
use hsu_agent::{Agent, OnExit};

use crate::{poll, units};

#[tokio::test]
async fn output_reaches_its_files_and_rotates_at_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _cleanup = crate::Cleanup(data.clone());
    let mut agent = Agent::open(&data).unwrap();
    // ~6 KB of numbered lines on stdout, one line on stderr, then it idles.
    let yaml = "units:\n  - name: chatty\n    command: [sh, -c, 'echo oops >&2; i=0; while [ $i -lt 120 ]; do echo \"line $i ............................................\"; i=$((i+1)); sleep 0.01; done; sleep 1000']\n    logs: {max_size: 1024, max_files: 2}\n";
    agent.apply(units(yaml)).await;
    let d = unit_dir(&data, "chatty");
    let out = d.join("stdout.log");
    poll("stdout.log to be rotated twice", || numbered(&out, 2).exists().then_some(())).await;
    poll("the last line", || {
        let all: String = [numbered(&out, 2), numbered(&out, 1), out.clone()]
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        all.contains("line 119 ").then_some(())
    })
    .await;
    for p in [numbered(&out, 1), numbered(&out, 2)] {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() > 1024, "{} holds what passed the limit: {} bytes", p.display(), text.len());
        assert!(text.lines().all(|l| l.starts_with("line ")), "{}: {text}", p.display());
    }
    assert!(!numbered(&out, 3).exists(), "max_files is 2");
    assert_eq!(std::fs::read_to_string(d.join("stderr.log")).unwrap(), "oops\n");
    agent.shutdown(OnExit::Stop).await;
}
