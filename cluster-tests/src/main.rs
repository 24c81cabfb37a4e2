//! `cluster-tests`: runs the fault-injection scenarios against real `hsu` processes in network
//! namespaces (root only) and prints a table; exits non-zero if any scenario fails.
//!
//! `cargo build -p hsu-cli --features failpoints && sudo target/debug/cluster-tests [--seed N] [--only t20]`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use cluster_tests::scenarios::{self, Settings, NAMES};
use cluster_tests::{net, report};

#[derive(Parser)]
#[command(name = "cluster-tests", about = "Fault-injection tests of real hsu nodes in network namespaces (root)")]
struct Args {
    /// Seed of the fault schedules and the clients (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only these scenarios (t10 ... t70); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The `hsu` binary, built with `--features failpoints` (default: target/debug/hsu).
    #[arg(long)]
    hsu: Option<PathBuf>,
    /// How long each scenario injects faults, in seconds, instead of its default (for
    /// development; the defaults are what the suite requires, e.g. 60 s for t20 and t40).
    #[arg(long, env = "HSU_CT_FAULT_SECS")]
    fault_secs: Option<u64>,
    /// Where the node logs of failed scenarios are copied.
    #[arg(long, default_value = "target/cluster-tests")]
    logs: PathBuf,
    /// Keep the node logs of passed scenarios too.
    #[arg(long)]
    keep_logs: bool,
    /// Start every node with `--unsafe-no-fsync`: the store acknowledges writes it has not made
    /// durable. Only to show that t90 (power loss) catches it; the suite then fails.
    #[arg(long)]
    unsafe_no_fsync: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = net::require_root() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    let hsu = args.hsu.clone().unwrap_or_else(scenarios::default_hsu);
    if let Err(e) = check_binary(&hsu) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let selected: Vec<&'static str> = if args.only.is_empty() {
        NAMES.to_vec()
    } else {
        let mut v = vec![];
        for o in &args.only {
            match NAMES.iter().find(|n| o.as_str() == **n || o.starts_with(&format!("{n}_"))) {
                Some(n) => v.push(*n),
                None => {
                    eprintln!("error: unknown scenario {o:?}; known: {}", NAMES.join(", "));
                    std::process::exit(2);
                }
            }
        }
        v
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
    });
    let settings = Settings {
        hsu,
        seed,
        fault_secs: args.fault_secs,
        logs: args.logs,
        keep_logs: args.keep_logs,
        no_fsync: args.unsafe_no_fsync,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let started = Instant::now();
    let rows = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(i), Ok(t)) => (i, t),
            _ => {
                eprintln!("error: cannot handle SIGINT/SIGTERM");
                std::process::exit(2);
            }
        };
        let mut rows = vec![];
        for name in selected {
            let row = tokio::select! {
                row = scenarios::run(name, &settings) => Some(row),
                _ = int.recv() => None,
                _ = term.recv() => None,
            };
            // On a signal the scenario's future has been dropped here, and with it its nodes,
            // data directories and namespaces.
            match row {
                Some(row) => rows.push(row),
                None => {
                    eprintln!("interrupted; everything this run created has been removed");
                    std::process::exit(130);
                }
            }
        }
        rows
    });
    println!("\n{}", report::table(&rows));
    println!("seed {seed}; wall time {:.0} s", started.elapsed().as_secs_f64());
    let failures = report::failures(&rows);
    if !failures.is_empty() {
        println!("{failures}");
        std::process::exit(1);
    }
}

/// The binary exists and has the `quic-send` failpoint compiled in.
fn check_binary(hsu: &std::path::Path) -> Result<(), String> {
    let bytes = std::fs::read(hsu).map_err(|e| {
        format!("cannot read the hsu binary {}: {e}; build it with `cargo build -p hsu-cli --features failpoints` or pass --hsu PATH", hsu.display())
    })?;
    if !bytes.windows(9).any(|w| w == b"quic-send") {
        return Err(format!(
            "{} has no failpoints: build it with `cargo build -p hsu-cli --features failpoints`",
            hsu.display()
        ));
    }
    Ok(())
}
