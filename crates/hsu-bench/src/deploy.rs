//! `hsu-bench deploy`: what deployments cost on a 3-node HSU cluster of real processes.
//!
//! - apply → all ready: one deployment of 1, 10 and 100 replicas each, timed from the Apply call
//!   until every instance is reported ready (polled every 20 ms through the API);
//! - idle: 30 units running (10 per node), then for `--idle-secs` each node process's RSS, CPU
//!   (utime + stime) and bytes written to storage (`write_bytes` of /proc/PID/io).
//!
//! The units are `sh` loops that end by themselves when the benchmark's directory is removed; the
//! deployments are also deleted (and their processes waited for) before the cluster is stopped.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hsu_proto::v1 as pb;
use tokio::time::sleep;

use crate::cluster::{Cluster, Endpoints};

#[derive(clap::Args)]
pub struct DeployArgs {
    /// Replica counts to time from apply to all ready.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    replicas: Vec<u32>,
    /// Seconds of the idle measurement.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// Units running during the idle measurement.
    #[arg(long, default_value_t = 30)]
    idle_units: u32,
    /// Also write the table as Markdown to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// The `hsu` binary (default: `hsu` next to this program).
    #[arg(long)]
    hsu: Option<std::path::PathBuf>,
}

impl DeployArgs {
    pub fn hsu_flag(&self) -> Option<&Path> {
        self.hsu.as_deref()
    }
}

fn spec(name: &str, replicas: u32, marker: &Path) -> String {
    format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [sh, -c, \"while [ -e {m} ]; do sleep 1; done\"]\n    stop: {{grace: 1s}}\n  strategy: {{maxSurge: 100%, maxUnavailable: 0}}\n",
        m = marker.display()
    )
}

async fn client(endpoints: &Endpoints) -> anyhow::Result<hsu_sdk::client::Deployments> {
    let Endpoints::Hsu { cfg, apis } = endpoints else { bail!("not an HSU cluster") };
    Ok(hsu_sdk::client::connect_deployments(cfg, Some(&apis[0].to_string())).await?)
}

async fn ready_count(api: &mut hsu_sdk::client::Deployments, name: &str) -> anyhow::Result<(usize, usize)> {
    let req = pb::ListRequest { namespace: "default".into(), name: name.into() };
    let list = api.list_instances(req).await?.into_inner().instances;
    Ok((list.iter().filter(|i| i.ready).count(), list.len()))
}

/// (pid) → (utime + stime in clock ticks, write_bytes).
fn cpu_and_writes(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let writes = io.lines().find_map(|l| l.strip_prefix("write_bytes: "))?.trim().parse().ok()?;
    Some((ticks, writes))
}

pub async fn run(args: DeployArgs, hsu: &Path) -> anyhow::Result<()> {
    if args.idle_secs == 0 || args.idle_secs > 3600 || args.replicas.iter().any(|r| *r == 0 || *r > 1000) {
        bail!("--idle-secs must be 1-3600 and every --replicas 1-1000");
    }
    let dir = tempfile::Builder::new().prefix("hsu-bench-deploy-").tempdir()?;
    let marker = dir.path().join("units-alive");
    std::fs::write(&marker, b"")?;
    eprintln!("== HSU: starting 3 nodes in {}", dir.path().display());
    let cluster = Cluster::start_hsu(hsu, dir.path()).await?;
    let mut api = client(&cluster.endpoints).await?;
    let mut rows = Vec::new();
    let mut names = Vec::new();
    for n in &args.replicas {
        let name = format!("bench-{n}");
        let started = Instant::now();
        let req = pb::ApplyRequest {
            files: vec![pb::SourceFile { name: format!("{name}.yaml"), content: spec(&name, *n, &marker) }],
            dry_run: false,
        };
        api.apply(req).await.context("apply")?;
        names.push(name.clone());
        let latency = loop {
            let (ready, _) = ready_count(&mut api, &name).await?;
            if ready == *n as usize {
                break started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("{name}: only {ready}/{n} ready after 300 s");
            }
            sleep(Duration::from_millis(20)).await;
        };
        eprintln!("apply → all ready, {n} replicas: {:.0} ms", latency.as_secs_f64() * 1000.0);
        rows.push((*n, latency));
    }
    for name in names.drain(..) {
        api.delete(pb::NameRequest { namespace: "default".into(), name }).await?;
    }
    // The idle cluster: `idle_units` units, nothing else happening.
    let req = pb::ApplyRequest {
        files: vec![pb::SourceFile { name: "idle.yaml".into(), content: spec("idle", args.idle_units, &marker) }],
        dry_run: false,
    };
    api.apply(req).await.context("apply idle")?;
    let started = Instant::now();
    loop {
        let (ready, total) = ready_count(&mut api, "idle").await?;
        let (_, leftovers) = ready_count(&mut api, "").await?;
        if ready == args.idle_units as usize && total == leftovers {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("idle: {ready}/{} ready after 120 s", args.idle_units);
        }
        sleep(Duration::from_millis(200)).await;
    }
    drop(api);
    eprintln!("idle: {} units running; settling 5 s, then measuring {} s", args.idle_units, args.idle_secs);
    sleep(Duration::from_secs(5)).await;
    let pids = cluster.pids();
    let before: Vec<Option<(u64, u64)>> = pids.iter().map(|p| cpu_and_writes(*p)).collect();
    sleep(Duration::from_secs(args.idle_secs)).await;
    let after: Vec<Option<(u64, u64)>> = pids.iter().map(|p| cpu_and_writes(*p)).collect();
    let ticks_per_sec = rustix::param::clock_ticks_per_second() as f64;
    let mut idle = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let rss = crate::procs::rss_kib(*pid).unwrap_or(0);
        let (cpu, writes) = match (before[i], after[i]) {
            (Some((t0, w0)), Some((t1, w1))) => (
                (t1 - t0) as f64 / ticks_per_sec / args.idle_secs as f64 * 100.0,
                (w1 - w0) as f64 * 60.0 / args.idle_secs as f64,
            ),
            _ => (f64::NAN, f64::NAN),
        };
        idle.push((cluster.member_name(i).to_string(), rss, cpu, writes));
    }
    // Clean up: delete, and wait for the units to go.
    let mut api = client(&cluster.endpoints).await?;
    api.delete(pb::NameRequest { namespace: "default".into(), name: "idle".into() }).await?;
    let started = Instant::now();
    while ready_count(&mut api, "").await?.1 > 0 && started.elapsed() < Duration::from_secs(60) {
        sleep(Duration::from_millis(200)).await;
    }
    drop(cluster);
    drop(dir);

    let mut table = String::from("| replicas (3 nodes) | apply → all ready |\n|---|---|\n");
    for (n, d) in &rows {
        table += &format!("| {n} | {:.0} ms |\n", d.as_secs_f64() * 1000.0);
    }
    table += &format!(
        "\n| idle, {} units, {} s | RSS | CPU | written to disk |\n|---|---|---|---|\n",
        args.idle_units, args.idle_secs
    );
    for (name, rss, cpu, writes) in &idle {
        table += &format!(
            "| {name} | {:.1} MiB | {cpu:.2}% of a core | {:.1} KiB/min |\n",
            *rss as f64 / 1024.0,
            writes / 1024.0
        );
    }
    println!("\n{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
