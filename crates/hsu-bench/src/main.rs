//! `hsu-bench`: benchmarks of real `hsu` processes against their peer, measured in the same run
//! on the same machine and printed side by side with the ratio.
//!
//! `hsu-bench store` starts a 3-node HSU cluster from the `hsu` binary and, when the Debian
//! `etcd` binary is on PATH, a 3-member etcd, one after the other on 127.0.0.1 ports; runs the
//! same workload against each through its own gRPC API (puts from 1, 16 and 64 clients,
//! linearizable reads from 16, RSS idle and peak, failover after kill -9 of the leader), and
//! prints one table. It installs nothing; everything it starts is killed and its temporary
//! directories removed when it ends, fails or is interrupted.

mod cluster;
mod deploy;
mod load;
mod procs;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::time::sleep;

use crate::cluster::{Cluster, System};
use crate::load::{failover_trial, phase, Kind, RssSampler};
use crate::report::{Report, SystemResult};

/// The few etcd v3 RPCs the benchmark calls, generated from `proto/etcd_kv.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Parser)]
#[command(name = "hsu-bench", about = "Benchmarks of real hsu processes against their peers, side by side")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The replicated store: 3 HSU nodes against 3 etcd members (puts, reads, RSS, failover).
    Store(StoreArgs),
    /// Deployments on 3 HSU nodes: apply → all ready for 1, 10 and 100 replicas, and the idle
    /// cost of each node running 30 units (RSS, CPU, bytes written per minute).
    Deploy(deploy::DeployArgs),
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Seconds for each load phase (put 1, put 16, put 64, read 16).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Also write the table as Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `hsu` binary (default: `hsu` next to this program, i.e. target/release/hsu).
    #[arg(long)]
    hsu: Option<PathBuf>,
    /// Failover trials per system.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Keep each system's temporary directory (data and one log per member) to look at afterwards.
    #[arg(long)]
    keep: bool,
}

/// Client counts of the put phases.
const PUT_CLIENTS: [usize; 3] = [1, 16, 64];
const READ_CLIENTS: usize = 16;

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // On a signal the benchmark's future is dropped here: every process handle and temporary
        // directory inside it is dropped with it, which kills and removes them.
        tokio::select! {
            r = async {
                match cli.command {
                    Command::Store(args) => store(args).await,
                    Command::Deploy(args) => {
                        let hsu = hsu_binary(args.hsu_flag())?;
                        deploy::run(args, &hsu).await
                    }
                }
            } => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; stopped every process the benchmark started"),
            _ = term.recv() => bail!("terminated; stopped every process the benchmark started"),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn store(args: StoreArgs) -> anyhow::Result<()> {
    if args.secs == 0 || args.secs > 3600 {
        bail!("--secs must be between 1 and 3600, got {}", args.secs);
    }
    if args.trials > 100 {
        bail!("--trials must be at most 100, got {}", args.trials);
    }
    let started = Instant::now();
    let hsu = hsu_binary(args.hsu.as_deref())?;
    let etcd = procs::find_on_path("etcd");
    let mut report = Report::new(&args_line(&args));
    report.note(format!("hsu: {} ({})", hsu.display(), version_line(&hsu, "--version")));
    match &etcd {
        Some(path) => report.note(format!("etcd: {} ({})", path.display(), version_line(path, "--version"))),
        None => {
            eprintln!(
                "etcd is missing: no `etcd` on PATH, so HSU is benchmarked alone. To compare, install \
                 Debian's etcd (as root: `apt-get update && apt-get install -y etcd-server etcd-client`) \
                 and run this again."
            );
            report.note("etcd: not installed (no `etcd` on PATH); HSU alone".into());
        }
    }
    for line in report.header_lines() {
        eprintln!("{line}");
    }

    let secs = Duration::from_secs(args.secs);
    let hsu_result = run_system(System::Hsu, &hsu, secs, &args).await?;
    let etcd_result = match &etcd {
        Some(path) => Some(run_system(System::Etcd, path, secs, &args).await?),
        None => None,
    };
    report.set_wall(started.elapsed());
    let table = report.render(&hsu_result, etcd_result.as_ref());
    println!("\n{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}

/// Starts one system, loads it, measures it, kills it over `trials` failovers, and removes it.
async fn run_system(system: System, bin: &Path, secs: Duration, args: &StoreArgs) -> anyhow::Result<SystemResult> {
    let trials = args.trials;
    let name = system.name();
    let began = Instant::now();
    // Declared before the cluster, so dropped after it: processes die first, then the files go.
    let mut dir = tempfile::Builder::new().prefix(&format!("hsu-bench-{}-", name.to_lowercase())).tempdir()?;
    dir.disable_cleanup(args.keep);
    eprintln!("== {name}: starting 3 members in {}", dir.path().display());
    let mut cluster = match system {
        System::Hsu => Cluster::start_hsu(bin, dir.path()).await?,
        System::Etcd => Cluster::start_etcd(bin, dir.path()).await?,
    };
    let mut result = SystemResult::new(system);
    eprintln!("{name}: ready after {:.1} s", began.elapsed().as_secs_f64());
    // Idle: once started, before any load; after a short settle.
    sleep(Duration::from_secs(2)).await;
    let pids = cluster.pids();
    result.rss_idle_kib = procs::rss_sum_kib(&pids);
    eprintln!("{name}: RSS idle {:.1} MiB (3 processes)", result.rss_idle_kib as f64 / 1024.0);

    let sampler = RssSampler::start(pids);
    let phases = PUT_CLIENTS.iter().map(|c| (Kind::Put, *c)).chain([(Kind::Read, READ_CLIENTS)]);
    for (kind, clients) in phases {
        let label = match kind {
            Kind::Put => format!("put {clients}"),
            Kind::Read => format!("read {clients}"),
        };
        let leader = leader_of(&cluster).await?;
        let p = phase(&cluster.endpoints, leader, kind, clients, secs).await;
        let after = cluster.endpoints.leader().await;
        if after != Some(leader) {
            result.notes.push(format!(
                "{label}: the leader changed during the phase ({} before, {} after)",
                cluster.member_name(leader),
                after.map_or("none".to_string(), |i| cluster.member_name(i).to_string())
            ));
        }
        eprintln!(
            "{name} {label}: {} ok, {} errors in {:.1} s: {:.0} ops/s, p50 {} ms, p99 {} ms{}",
            p.ok,
            p.errors,
            p.elapsed.as_secs_f64(),
            p.ops_per_sec(),
            p.percentile_ms(50.0).map_or("-".into(), |v| format!("{v:.2}")),
            p.percentile_ms(99.0).map_or("-".into(), |v| format!("{v:.2}")),
            p.first_error.as_ref().map_or(String::new(), |e| format!("; first error: {e}"))
        );
        result.phases.push((label, p));
    }
    result.rss_peak_kib = sampler.peak_kib().await;
    eprintln!("{name}: RSS peak under load {:.1} MiB", result.rss_peak_kib as f64 / 1024.0);

    for t in 0..trials {
        match failover_trial(&mut cluster, t).await {
            Ok(trial) => {
                eprintln!(
                    "{name} failover {}/{trials}: killed {}; {}; next successful put after {} ({} failed puts)",
                    t + 1,
                    trial.killed,
                    trial.leader_found.as_ref().map_or("no new leader found".into(), |(d, m)| format!(
                        "{m} said it leads after {} ms",
                        d.as_millis()
                    )),
                    trial.failover.map_or("none within 30 s".into(), |d| format!("{} ms", d.as_millis())),
                    trial.writer_errors
                );
                result.trials.push(trial);
            }
            Err(e) => {
                eprintln!("{name} failover {}/{trials}: {e:#}", t + 1);
                result.notes.push(format!("failover trial {} failed: {e:#}", t + 1));
                break;
            }
        }
    }
    drop(cluster);
    if args.keep {
        eprintln!("{name}: kept {}", dir.path().display());
    }
    drop(dir);
    result.wall = began.elapsed();
    eprintln!("== {name}: done in {:.0} s", result.wall.as_secs_f64());
    Ok(result)
}

async fn leader_of(cluster: &Cluster) -> anyhow::Result<usize> {
    for _ in 0..10 {
        if let Some(i) = cluster.endpoints.leader().await {
            return Ok(i);
        }
        sleep(Duration::from_millis(100)).await;
    }
    bail!("the {} cluster has had no leader for 20 s", cluster.system.name())
}

/// `--hsu`, else `hsu` in the directory of this executable (target/release/ for `cargo run
/// --release`).
fn hsu_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.parent().context("this executable has no directory")?.join("hsu"),
    };
    if !path.is_file() {
        bail!(
            "no hsu binary at {}: build it with `cargo build --release -p hsu-cli` (or pass --hsu PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// The first line `program flag` prints, or why there is none.
fn version_line(program: &Path, flag: &str) -> String {
    match std::process::Command::new(program).arg(flag).output() {
        Ok(out) => {
            String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("no version printed").trim().to_string()
        }
        Err(e) => format!("cannot run it: {e}"),
    }
}

fn args_line(args: &StoreArgs) -> String {
    let mut line = format!("hsu-bench store --secs {} --trials {}", args.secs, args.trials);
    if let Some(out) = &args.out {
        line.push_str(&format!(" --out {}", out.display()));
    }
    line
}
