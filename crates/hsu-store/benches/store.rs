//! The store's write benchmark: three in-process members on real sled directories with fsync on,
//! joined by the in-process router; 1, 16 and 64 concurrent writers put 256-byte values to the
//! leader for a fixed time, then 1 and 16 readers do linearizable gets. Prints ops/s, p50 and p99
//! per step.
//!
//! `cargo bench -p hsu-store` (HSU_BENCH_SECS sets the seconds per step, default 5;
//! HSU_BENCH_DIR the directory for the data, default the system temp dir).
//! The side-by-side comparison with etcd over real sockets is a separate program (hsu-bench).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hsu_store::{Consistency, Member, Router, Store, StoreConfig};
use tokio::time::Instant;

const VALUE_LEN: usize = 256;

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("HSU_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let base = std::env::var("HSU_BENCH_DIR").map(Into::into).unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).expect("bench data dir");
    let router = Router::new(1);
    let mut stores = Vec::new();
    for id in 1..=3u64 {
        let mut cfg = StoreConfig::new(id, dir.path().join(format!("n{id}")));
        // Snapshots as a long-running member would take them, so purging is part of the cost.
        cfg.snapshot_every = 20_000;
        let s = Store::open(cfg, router.transport(id)).await.expect("open");
        router.register(id, s.raft().clone());
        stores.push(s);
    }
    let members: BTreeMap<_, _> =
        (1..=3u64).map(|id| (id, Member::new(format!("n{id}"), format!("inproc:{id}")))).collect();
    stores[0].initialize(members).await.expect("initialize");
    let stores = Arc::new(stores);
    leader(&stores).await;

    println!("hsu-store: 3 in-process members, sled with fsync per appended batch, {VALUE_LEN}-byte values, {secs}s per step");
    println!("data in {}", dir.path().display());
    println!(
        "{:<14} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "op", "clients", "ops", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    let value = Arc::new(vec![b'x'; VALUE_LEN]);
    for (op, clients) in [(Op::Put, 1usize), (Op::Put, 16), (Op::Put, 64), (Op::Get, 1), (Op::Get, 16)] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (stores, value) = (stores.clone(), value.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut n = 0u64;
                let mut store = leader(&stores).await;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let done = match op {
                        Op::Put => store.put(format!("bench/{clients}/{c}/{n}"), value.as_slice(), 0).await.map(drop),
                        // Keys the put steps wrote: a linearizable read through a read-index round.
                        Op::Get => {
                            store.get(format!("bench/1/0/{}", n % 100), Consistency::Linearizable).await.map(drop)
                        }
                    };
                    match done {
                        Ok(()) => lat.push(t.elapsed()),
                        // A leader change under load: count it and follow the new leader.
                        Err(_) => {
                            errors += 1;
                            store = leader(&stores).await;
                        }
                    }
                    n += 1;
                }
                (lat, errors)
            }));
        }
        let started = Instant::now();
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.expect("client");
            lat.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
        println!(
            "{:<14} {:>8} {:>10} {:>10.0} {:>10.2} {:>10.2} {:>8}",
            op.label(),
            clients,
            lat.len(),
            lat.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99),
            errors
        );
    }
    for s in stores.iter() {
        s.shutdown().await;
    }
}

/// The member that currently leads, once the members agree there is one.
async fn leader(stores: &[Store]) -> Store {
    loop {
        if let Some(l) = stores[0].raft().metrics().borrow().current_leader {
            let s = &stores[(l - 1) as usize];
            if s.raft().metrics().borrow().state == openraft::ServerState::Leader {
                return s.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get (lin.)",
        }
    }
}
