//! The workload, the same for both systems: timed phases of puts or linearizable reads from N
//! concurrent clients, an RSS sampler, and the failover trials.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout};

use crate::cluster::{Cluster, Conn, Endpoints};
use crate::procs::rss_sum_kib;

/// The value of every put: 256 bytes.
pub const VALUE_LEN: usize = 256;
/// No single request waits longer than this; a request that does counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds each client's loop in count, whatever the clock says.
const MAX_OPS_PER_CLIENT: u64 = 5_000_000;
/// After an error a client pauses this long, so a dead server is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Put,
    Read,
}

/// What one phase measured.
pub struct Phase {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies of the successful requests in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub first_error: Option<String>,
}

impl Phase {
    pub fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile (nearest rank) in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        let n = self.latencies_us.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.latencies_us[rank.clamp(1, n) - 1] as f64 / 1000.0)
    }
}

/// `clients` concurrent clients, each on its own connection to member `target`, each waiting for
/// its answer before the next request, for `secs`. Puts go to distinct keys; reads read a key the
/// client wrote before the clock started.
pub async fn phase(endpoints: &Endpoints, target: usize, kind: Kind, clients: usize, secs: Duration) -> Phase {
    let tag = match kind {
        Kind::Put => format!("put{clients}"),
        Kind::Read => format!("read{clients}"),
    };
    let mut conns = Vec::new();
    let mut setup_errors = 0;
    let mut first_error = None;
    for c in 0..clients {
        let conn = match endpoints.connect(target).await {
            Ok(mut conn) if kind == Kind::Read => {
                let key = format!("bench/{tag}/{c}").into_bytes();
                match timeout(OP_TIMEOUT, conn.put(key, vec![b'r'; VALUE_LEN])).await {
                    Ok(Ok(())) => Ok(conn),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("the put before the reads timed out".into()),
                }
            }
            other => other,
        };
        match conn {
            Ok(conn) => conns.push((c, conn)),
            Err(e) => {
                setup_errors += 1;
                first_error.get_or_insert(format!("client setup: {e}"));
            }
        }
    }
    // Every client starts at the same instant, once all are connected.
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for (c, conn) in conns {
        let tag = tag.clone();
        tasks.push(tokio::spawn(client_loop(conn, kind, tag, c, start, deadline)));
    }
    let mut phase = Phase { ok: 0, errors: setup_errors, elapsed: secs, latencies_us: Vec::new(), first_error };
    let mut last_end = start;
    for t in tasks {
        match t.await {
            Ok(r) => {
                phase.ok += r.latencies_us.len() as u64;
                phase.errors += r.errors;
                phase.latencies_us.extend(r.latencies_us);
                if phase.first_error.is_none() {
                    phase.first_error = r.first_error;
                }
                last_end = last_end.max(r.end);
            }
            Err(e) => {
                phase.errors += 1;
                phase.first_error.get_or_insert(format!("a client task failed: {e}"));
            }
        }
    }
    phase.elapsed = last_end.saturating_duration_since(start).max(Duration::from_millis(1));
    phase.latencies_us.sort_unstable();
    phase
}

struct ClientResult {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    end: tokio::time::Instant,
}

async fn client_loop(
    mut conn: Conn,
    kind: Kind,
    tag: String,
    client: usize,
    start: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> ClientResult {
    let value = vec![b'v'; VALUE_LEN];
    let read_key = format!("bench/{tag}/{client}").into_bytes();
    let mut r = ClientResult { latencies_us: Vec::new(), errors: 0, first_error: None, end: start };
    sleep_until(start).await;
    for seq in 0..MAX_OPS_PER_CLIENT {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        let result = match kind {
            Kind::Put => {
                timeout(OP_TIMEOUT, conn.put(format!("bench/{tag}/{client}/{seq}").into_bytes(), value.clone())).await
            }
            Kind::Read => timeout(OP_TIMEOUT, conn.get(read_key.clone(), true)).await,
        };
        match result {
            Ok(Ok(())) => r.latencies_us.push(t0.elapsed().as_micros() as u64),
            Ok(Err(e)) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
                sleep(ERROR_PAUSE).await;
            }
            Err(_) => {
                r.errors += 1;
                r.first_error.get_or_insert(format!("no answer within {OP_TIMEOUT:?}"));
            }
        }
    }
    r.end = tokio::time::Instant::now();
    r
}

/// Samples the summed RSS of `pids` every 200 ms until it is stopped; returns the peak in KiB.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = rss_sum_kib(&pids);
            // At most an hour of samples, whatever happens to the caller.
            for _ in 0..18_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                sleep(Duration::from_millis(200)).await;
                peak = peak.max(rss_sum_kib(&pids));
            }
            peak
        });
        RssSampler { stop, task }
    }

    pub async fn peak_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

/// One failover trial's outcome.
pub struct Trial {
    pub killed: String,
    /// From the kill until the writer found a member that says it leads, and which.
    pub leader_found: Option<(Duration, String)>,
    /// From the kill to the end of the first put that started after it and succeeded.
    pub failover: Option<Duration>,
    pub writer_errors: u64,
}

/// A steady writer (one client, puts in a loop to the member that leads; after an error it
/// re-resolves the leader by asking every member) while the leader is killed with SIGKILL; then
/// the killed member is restarted and the cluster must be healthy again before this returns.
pub async fn failover_trial(cluster: &mut Cluster, trial: usize) -> anyhow::Result<Trial> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let writer = tokio::spawn(steady_writer(cluster.endpoints.clone(), stop.clone(), tx, trial));

    // A second of steady writes first.
    let warm = Instant::now();
    let mut before = 0u64;
    while warm.elapsed() < Duration::from_secs(1) || before == 0 {
        if warm.elapsed() > Duration::from_secs(30) {
            stop.store(true, Ordering::Relaxed);
            anyhow::bail!("the steady writer made no successful put in 30 s");
        }
        match timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(Event::Put { .. })) => before += 1,
            Ok(Some(Event::Leader { .. })) => {}
            Ok(None) => anyhow::bail!("the steady writer stopped"),
            Err(_) => {}
        }
    }
    let mut leader = None;
    for _ in 0..15 {
        leader = cluster.endpoints.leader().await;
        if leader.is_some() {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let Some(leader) = leader else {
        stop.store(true, Ordering::Relaxed);
        anyhow::bail!("no leader to kill");
    };
    let killed = cluster.member_name(leader).to_string();
    let killed_at = Instant::now();
    cluster.kill(leader);

    let mut failover = None;
    let mut leader_found = None;
    let give_up = killed_at + Duration::from_secs(30);
    while Instant::now() < give_up {
        match timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(Event::Put { start, end })) if start >= killed_at => {
                failover = Some(end - killed_at);
                break;
            }
            Ok(Some(Event::Leader { at, member })) if at >= killed_at && leader_found.is_none() => {
                leader_found = Some((at - killed_at, cluster.member_name(member).to_string()));
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writer_errors = writer.await.unwrap_or(0);

    cluster.restart(leader)?;
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    // Let the restarted member settle (catch-up, leadership) before the next trial.
    sleep(Duration::from_secs(1)).await;
    Ok(Trial { killed, leader_found, failover, writer_errors })
}

/// What the steady writer reports.
enum Event {
    /// A successful put: when it was sent and when its answer came.
    Put { start: Instant, end: Instant },
    /// The writer found that `member` leads.
    Leader { at: Instant, member: usize },
}

/// Returns the number of failed puts.
async fn steady_writer(
    endpoints: Endpoints,
    stop: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<Event>,
    trial: usize,
) -> u64 {
    let value = vec![b'f'; VALUE_LEN];
    let began = Instant::now();
    let mut conn: Option<Conn> = None;
    let mut errors = 0;
    for seq in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) || began.elapsed() > Duration::from_secs(120) {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                if let Some(i) = endpoints.leader().await {
                    let _ = events.send(Event::Leader { at: Instant::now(), member: i });
                    conn = endpoints.connect(i).await.ok();
                }
                match conn.as_mut() {
                    Some(c) => c,
                    None => {
                        sleep(ERROR_PAUSE).await;
                        continue;
                    }
                }
            }
        };
        let t0 = Instant::now();
        let key = format!("bench/failover{trial}/{seq}").into_bytes();
        match timeout(Duration::from_secs(2), c.put(key, value.clone())).await {
            Ok(Ok(())) => {
                let _ = events.send(Event::Put { start: t0, end: Instant::now() });
            }
            _ => {
                errors += 1;
                conn = None;
            }
        }
    }
    errors
}
