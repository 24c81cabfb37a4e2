//! The one table: rows are the measurements, columns HSU, etcd and HSU/etcd; Markdown, so the
//! same text goes to the terminal and to `--out`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cluster::System;
use crate::load::{Phase, Trial};

/// What one system measured.
pub struct SystemResult {
    pub system: System,
    /// ("put 1", ...) in the order they ran.
    pub phases: Vec<(String, Phase)>,
    pub rss_idle_kib: u64,
    pub rss_peak_kib: u64,
    pub trials: Vec<Trial>,
    /// Anything worth knowing that the numbers do not say (a leader change, a failed trial).
    pub notes: Vec<String>,
    pub wall: Duration,
}

impl SystemResult {
    pub fn new(system: System) -> SystemResult {
        SystemResult {
            system,
            phases: Vec::new(),
            rss_idle_kib: 0,
            rss_peak_kib: 0,
            trials: Vec::new(),
            notes: Vec::new(),
            wall: Duration::ZERO,
        }
    }

    fn phase(&self, label: &str) -> Option<&Phase> {
        self.phases.iter().find(|(l, _)| l == label).map(|(_, p)| p)
    }

    /// Failover times of the trials that saw a successful put, sorted.
    fn failovers(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.trials.iter().filter_map(|t| t.failover).collect();
        v.sort();
        v
    }
}

pub struct Report {
    command: String,
    /// Taken when the run starts: the date and how busy the machine was then.
    date: String,
    machine: String,
    notes: Vec<String>,
    wall: Duration,
}

impl Report {
    pub fn new(command: &str) -> Report {
        Report {
            command: command.to_string(),
            date: utc_now(),
            machine: machine(),
            notes: Vec::new(),
            wall: Duration::ZERO,
        }
    }

    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    pub fn set_wall(&mut self, wall: Duration) {
        self.wall = wall;
    }

    /// Command, date, machine and versions.
    pub fn header_lines(&self) -> Vec<String> {
        let mut lines =
            vec![format!("command: {}", self.command), format!("date: {}", self.date), self.machine.clone()];
        lines.extend(self.notes.iter().cloned());
        lines
    }

    pub fn render(&self, hsu: &SystemResult, etcd: Option<&SystemResult>) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let dash = || "–".to_string();
        for (label, _) in &hsu.phases {
            let h = hsu.phase(label);
            let e = etcd.and_then(|e| e.phase(label));
            let (verb, clients) = label.split_once(' ').unwrap_or((label, ""));
            let what = match verb {
                "put" => format!("put, {clients} client{}", if clients == "1" { "" } else { "s" }),
                _ => format!("linearizable read, {clients} clients"),
            };
            rows.push([what, h.map_or_else(dash, phase_cell), e.map_or_else(dash, phase_cell), phase_ratio(h, e)]);
        }
        let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}×", a / b) } else { dash() };
        rows.push([
            "RSS idle (3 processes)".into(),
            mib(hsu.rss_idle_kib),
            etcd.map_or_else(dash, |e| mib(e.rss_idle_kib)),
            etcd.map_or_else(dash, |e| ratio(hsu.rss_idle_kib as f64, e.rss_idle_kib as f64)),
        ]);
        rows.push([
            "RSS peak under load (3 processes)".into(),
            mib(hsu.rss_peak_kib),
            etcd.map_or_else(dash, |e| mib(e.rss_peak_kib)),
            etcd.map_or_else(dash, |e| ratio(hsu.rss_peak_kib as f64, e.rss_peak_kib as f64)),
        ]);
        let trials = hsu.trials.len().max(etcd.map_or(0, |e| e.trials.len()));
        rows.push([
            format!("failover after kill -9 of the leader, median (min–max) of {trials}"),
            failover_cell(hsu),
            etcd.map_or_else(dash, failover_cell),
            match (median(&hsu.failovers()), etcd.and_then(|e| median(&e.failovers()))) {
                (Some(h), Some(e)) => ratio(h.as_secs_f64(), e.as_secs_f64()),
                _ => dash(),
            },
        ]);

        let mut out = String::new();
        out.push_str("| | HSU | etcd | HSU/etcd |\n|---|---:|---:|---:|\n");
        for r in &rows {
            out.push_str(&format!("| {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3]));
        }
        out.push('\n');
        out.push_str(
            "Load rows: successful ops/s · p50 · p99 latency per request (each client waits for its answer \
             before the next request), errors if any; the ratio is HSU's number over etcd's for each of the \
             three (above 1 is more ops/s, but slower latency). Failover: from the kill to the end of the \
             first put that started after it and succeeded.\n\n",
        );
        for line in self.header_lines() {
            out.push_str(&format!("- {line}\n"));
        }
        out.push_str(&format!("- wall time of the whole run: {:.0} s\n", self.wall.as_secs_f64()));
        for r in std::iter::once(hsu).chain(etcd) {
            let trials: Vec<String> = r.trials.iter().map(trial_text).collect();
            let failed_puts: u64 = r.trials.iter().map(|t| t.writer_errors).sum();
            out.push_str(&format!(
                "- {}: {:.0} s; failover trials (killed → a member says it leads → first put): {}; failed puts \
                 of the steady writer over all trials: {failed_puts}\n",
                r.system.name(),
                r.wall.as_secs_f64(),
                if trials.is_empty() { "none".into() } else { trials.join("; ") },
            ));
            for (label, p) in &r.phases {
                if let Some(e) = &p.first_error {
                    out.push_str(&format!("- {} {label}: first error: {e}\n", r.system.name()));
                }
            }
            for n in &r.notes {
                out.push_str(&format!("- {}: {n}\n", r.system.name()));
            }
        }
        out
    }
}

fn trial_text(t: &Trial) -> String {
    let ms = |d: Duration| format!("{} ms", d.as_millis());
    format!(
        "{} → {} → {}",
        t.killed,
        t.leader_found.as_ref().map_or("none".into(), |(d, m)| format!("{m} at {}", ms(*d))),
        t.failover.map_or("none in 30 s".into(), ms)
    )
}

fn phase_cell(p: &Phase) -> String {
    let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
    let mut cell =
        format!("{:.0}/s · p50 {} · p99 {} ms", p.ops_per_sec(), ms(p.percentile_ms(50.0)), ms(p.percentile_ms(99.0)));
    if p.errors > 0 {
        cell.push_str(&format!(" · {} errors", p.errors));
    }
    cell
}

fn phase_ratio(h: Option<&Phase>, e: Option<&Phase>) -> String {
    let (Some(h), Some(e)) = (h, e) else { return "–".into() };
    let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    format!(
        "{} · {} · {}",
        r(Some(h.ops_per_sec()), Some(e.ops_per_sec())),
        r(h.percentile_ms(50.0), e.percentile_ms(50.0)),
        r(h.percentile_ms(99.0), e.percentile_ms(99.0))
    )
}

fn failover_cell(r: &SystemResult) -> String {
    let v = r.failovers();
    let missed = r.trials.len() - v.len();
    let mut cell = match (median(&v), v.first(), v.last()) {
        (Some(m), Some(lo), Some(hi)) => {
            format!("{:.2} s ({:.2}–{:.2})", m.as_secs_f64(), lo.as_secs_f64(), hi.as_secs_f64())
        }
        _ => "–".into(),
    };
    if missed > 0 {
        cell.push_str(&format!(" · {missed} without a put in 30 s"));
    }
    cell
}

/// The median of sorted durations (the mean of the middle two for an even count).
fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// CPU model, cores, memory and kernel, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or("?".to_string(), |kib| format!("{:.0}", kib / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let tmp = std::env::temp_dir();
    // Other work on the machine skews every number: say how busy it was when the run began.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {model}, {cores} cores, {mem_gib} GiB, Linux {}, load average {} at the start; data \
         directories under {} ({}); everything on 127.0.0.1, clients in the same process as the benchmark",
        kernel.trim(),
        load.join(" "),
        tmp.display(),
        filesystem_of(&tmp)
    )
}

/// The type of the filesystem mounted at the longest prefix of `path` (fsync on tmpfs is free).
fn filesystem_of(path: &std::path::Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point).then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or("unknown filesystem".into(), |(_, kind)| kind)
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (the era-based method: 400-year eras of
/// 146097 days, years starting in March so the leap day comes last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
    }

    #[test]
    fn medians() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(1), ms(2), ms(9)]), Some(ms(2)));
        assert_eq!(median(&[ms(1), ms(3)]), Some(ms(2)));
    }
}
