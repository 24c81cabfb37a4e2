//! The table printed at the end of a run, and the details of what failed.

use crate::scenarios::Row;

pub fn table(rows: &[Row]) -> String {
    let mut head: Vec<String> = ["scenario", "seed", "ok", "failed", "indet."].map(String::from).to_vec();
    if let Some(r) = rows.iter().max_by_key(|r| r.checks.len()) {
        head.extend(r.checks.iter().map(|(n, _)| n.to_string()));
    }
    head.extend(["time", "result"].map(String::from));
    let mut lines: Vec<Vec<String>> = vec![head.clone()];
    for r in rows {
        let mut line = vec![
            r.name.to_string(),
            r.seed.to_string(),
            r.counts.0.to_string(),
            r.counts.1.to_string(),
            r.counts.2.to_string(),
        ];
        for i in 0..head.len() - 7 {
            line.push(r.checks.get(i).map_or("-".to_string(), |(_, c)| c.cell.clone()));
        }
        line.push(format!("{:.0}s", r.took.as_secs_f64()));
        line.push(
            if r.passed() {
                "PASS"
            } else if r.error.is_some() {
                "ERROR"
            } else {
                "FAIL"
            }
            .to_string(),
        );
        lines.push(line);
    }
    let widths: Vec<usize> =
        (0..head.len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (n, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
        if n == 0 {
            out += &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ");
            out.push('\n');
        }
    }
    out
}

/// What went wrong, per failed scenario: errors, each failed checker's details, the faults.
pub fn failures(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| !r.passed()) {
        out += &format!("\n== {} (seed {}) failed\n", r.name, r.seed);
        if let Some(e) = &r.error {
            out += &format!("error: {e}\n");
        }
        for (name, c) in r.checks.iter().filter(|(_, c)| !c.ok) {
            out += &format!("{name}: {}: {}\n", c.cell, c.detail);
        }
        out += "nemesis events:\n";
        for e in &r.events {
            out += &format!("  {e}\n");
        }
    }
    out
}
