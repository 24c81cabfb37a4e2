//! Clients over the public gRPC API, in the test process (root namespace): reads, writes and
//! compare-and-swaps on a few registers, plus a set workload (each add a put of a unique key
//! under `set/`). Every operation is recorded with its start and end time and its outcome as an
//! [`Operation`] for the linearizability checker.
//!
//! A counter workload checks that writes are applied exactly once: each increment is a
//! compare-and-swap of `counter` that also records `incs/<new value>` = the increment's id.
//!
//! Outcomes: an answer is `Ok`. A failed read is `Failed` (the checker ignores failed and
//! indeterminate reads alike). A failed write is `Failed` only when the node said, in the
//! `hsu-outcome: not-applied` metadata of its error, that nothing took effect (or refused the
//! call before the store: invalid, unauthenticated, denied). Everything else (`hsu-outcome:
//! unknown`, a transport error mid-call, a client timeout, an error without the key) is
//! `Indeterminate`: the write may or may not take effect, which is always safe for the checker.
//! The message text is never read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hsu_lincheck::{Op, Operation, Outcome};
use hsu_proto::v1 as pb;
use hsu_sdk::client::{ClientConfig, Kv};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tonic::Code;

use crate::cluster::Cluster;

/// A client gives up on a call after this (the node's own request timeout is 5 s).
pub const OP_TIMEOUT: Duration = Duration::from_secs(6);
pub const SET_PREFIX: &str = "set/";
pub const COUNTER: &str = "counter";
/// `incs/<value, zero-padded>` = the id of the increment that set the counter to that value.
pub const INCS_PREFIX: &str = "incs/";

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Registers `reg/0`.. for the linearizability workload.
    pub keys: usize,
    /// Pause between two operations of one client.
    pub think: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig { clients: 4, keys: 4, think: Duration::from_millis(20) }
    }
}

/// What the clients did.
#[derive(Default)]
pub struct History {
    pub ops: Vec<Operation>,
    /// Set adds: the key and what the client was told.
    pub adds: Vec<(String, Outcome)>,
    /// Counter increments: the increment's id and what the client was told in the end.
    pub increments: Vec<(String, Outcome)>,
}

impl History {
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        let outcomes = self
            .ops
            .iter()
            .map(|o| o.outcome)
            .chain(self.adds.iter().map(|a| a.1))
            .chain(self.increments.iter().map(|a| a.1));
        for o in outcomes {
            match o {
                Outcome::Ok => c.0 += 1,
                Outcome::Failed => c.1 += 1,
                Outcome::Indeterminate => c.2 += 1,
            }
        }
        c
    }
}

/// True when a write's error says that nothing took effect (see the module docs).
pub fn nothing_proposed(status: &tonic::Status) -> bool {
    match status.metadata().get(hsu_sdk::client::OUTCOME_KEY).map(|v| v.as_bytes()) {
        Some(b"not-applied") => true,
        Some(_) => false,
        // Refused by the API layer before anything reached the store.
        None => matches!(status.code(), Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated),
    }
}

fn write_outcome(status: &tonic::Status) -> Outcome {
    if nothing_proposed(status) {
        Outcome::Failed
    } else {
        Outcome::Indeterminate
    }
}

/// Starts the clients; they run until `stop` turns true (or `max` passes) and return their
/// histories, merged, when joined with [`Clients::finish`].
pub struct Clients {
    tasks: Vec<tokio::task::JoinHandle<History>>,
}

impl Clients {
    pub fn start(
        cfg: &WorkloadConfig,
        admin: &ClientConfig,
        endpoints: Vec<String>,
        epoch: Instant,
        seed: u64,
        stop: watch::Receiver<bool>,
        max: Duration,
    ) -> Clients {
        let tasks = (0..cfg.clients)
            .map(|c| {
                let client = Client {
                    id: c as u64,
                    admin: admin.clone(),
                    endpoints: endpoints.clone(),
                    at: c % endpoints.len(),
                    kv: None,
                    epoch,
                    rng: SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(c as u64)),
                    known: HashMap::new(),
                    seq: 0,
                    cfg: cfg.clone(),
                };
                tokio::spawn(client.run(stop.clone(), max))
            })
            .collect();
        Clients { tasks }
    }

    /// The merged histories; a client task that panicked fails the run (its history is lost,
    /// and a checker must not pass on what is left).
    pub async fn finish(self) -> Result<History, String> {
        let mut all = History::default();
        for (i, t) in self.tasks.into_iter().enumerate() {
            let h = t.await.map_err(|e| format!("client {i} failed: {e}"))?;
            all.ops.extend(h.ops);
            all.adds.extend(h.adds);
            all.increments.extend(h.increments);
        }
        Ok(all)
    }
}

struct Client {
    id: u64,
    admin: ClientConfig,
    endpoints: Vec<String>,
    at: usize,
    kv: Option<Kv>,
    epoch: Instant,
    rng: SmallRng,
    /// The value this client last saw per register (what its CAS expects).
    known: HashMap<usize, Option<Vec<u8>>>,
    seq: u64,
    cfg: WorkloadConfig,
}

enum Kind {
    Read(usize),
    Write(usize),
    Cas(usize),
    Add,
    Increment,
}

impl Client {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Moves to the next node and drops the connection.
    fn rotate(&mut self) {
        self.kv = None;
        self.at = (self.at + 1) % self.endpoints.len();
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>, max: Duration) -> History {
        let mut history = History::default();
        let deadline = Instant::now() + max;
        while !*stop.borrow() && Instant::now() < deadline {
            if self.kv.is_none() {
                match Cluster::connect(&self.admin, &self.endpoints[self.at]).await {
                    Ok((_, kv)) => self.kv = Some(kv),
                    Err(_) => {
                        // Nothing was sent: not an operation.
                        self.rotate();
                        let _ = tokio::time::timeout(Duration::from_millis(100), stop.changed()).await;
                        continue;
                    }
                }
            }
            let key = self.rng.gen_range(0..self.cfg.keys);
            let kind = match self.rng.gen_range(0..100) {
                0..=29 => Kind::Read(key),
                30..=54 => Kind::Write(key),
                55..=79 => Kind::Cas(key),
                80..=89 => Kind::Add,
                _ => Kind::Increment,
            };
            let ok = self.one(kind, &mut history).await;
            if !ok {
                self.rotate();
            }
            let _ = tokio::time::timeout(self.cfg.think, stop.changed()).await;
        }
        history
    }

    fn value(&mut self) -> Vec<u8> {
        self.seq += 1;
        format!("c{}-{}", self.id, self.seq).into_bytes()
    }

    /// Runs one operation and records it; false when it did not get a definite answer.
    async fn one(&mut self, kind: Kind, history: &mut History) -> bool {
        let mut kv = self.kv.clone().expect("connected");
        let start = self.now();
        match kind {
            Kind::Read(k) => {
                let key = reg(k);
                let req = pb::RangeRequest { key: key.clone(), ..Default::default() };
                let r = tokio::time::timeout(OP_TIMEOUT, kv.range(req)).await;
                let end = self.now();
                let (value, outcome) = match r {
                    Ok(Ok(resp)) => (resp.into_inner().kvs.into_iter().next().map(|kv| kv.value), Outcome::Ok),
                    _ => (None, Outcome::Failed),
                };
                if outcome == Outcome::Ok {
                    self.known.insert(k, value.clone());
                }
                history.ops.push(Operation { client: self.id, start, end, op: Op::Read { key, value }, outcome });
                outcome == Outcome::Ok
            }
            Kind::Write(k) => {
                let key = reg(k);
                let value = self.value();
                let req = pb::PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
                let r = tokio::time::timeout(OP_TIMEOUT, kv.put(req)).await;
                let end = self.now();
                let outcome = match &r {
                    Ok(Ok(_)) => Outcome::Ok,
                    Ok(Err(s)) => write_outcome(s),
                    Err(_) => Outcome::Indeterminate,
                };
                if outcome == Outcome::Ok {
                    self.known.insert(k, Some(value.clone()));
                }
                history.ops.push(Operation { client: self.id, start, end, op: Op::Write { key, value }, outcome });
                outcome == Outcome::Ok
            }
            Kind::Cas(k) => {
                let key = reg(k);
                let expected = self.known.get(&k).cloned().flatten();
                let new = self.value();
                let compare = match &expected {
                    None => pb::Compare {
                        key: key.clone(),
                        target: pb::compare::Target::Version as i32,
                        result: pb::compare::Result::Equal as i32,
                        value: vec![],
                        number: 0,
                    },
                    Some(v) => pb::Compare {
                        key: key.clone(),
                        target: pb::compare::Target::Value as i32,
                        result: pb::compare::Result::Equal as i32,
                        value: v.clone(),
                        number: 0,
                    },
                };
                let put = pb::RequestOp {
                    request: Some(pb::request_op::Request::Put(pb::PutRequest {
                        key: key.clone(),
                        value: new.clone(),
                        ..Default::default()
                    })),
                };
                let req = pb::TxnRequest { compare: vec![compare], success: vec![put], failure: vec![] };
                let r = tokio::time::timeout(OP_TIMEOUT, kv.txn(req)).await;
                let end = self.now();
                let (outcome, swapped) = match &r {
                    Ok(Ok(resp)) => (Outcome::Ok, resp.get_ref().succeeded),
                    Ok(Err(s)) => (write_outcome(s), false),
                    Err(_) => (Outcome::Indeterminate, false),
                };
                if outcome == Outcome::Ok && swapped {
                    self.known.insert(k, Some(new.clone()));
                } else if outcome == Outcome::Ok {
                    // Did not swap: what this client knew is stale; read again before the next CAS.
                    self.known.remove(&k);
                }
                let op = Op::Cas { key, expected, new, swapped };
                history.ops.push(Operation { client: self.id, start, end, op, outcome });
                outcome == Outcome::Ok
            }
            Kind::Add => {
                let v = self.value();
                let key = format!("{SET_PREFIX}{}", String::from_utf8_lossy(&v));
                let req = pb::PutRequest { key: key.clone().into_bytes(), value: b"1".to_vec(), ..Default::default() };
                let r = tokio::time::timeout(OP_TIMEOUT, kv.put(req)).await;
                let outcome = match &r {
                    Ok(Ok(_)) => Outcome::Ok,
                    Ok(Err(s)) => write_outcome(s),
                    Err(_) => Outcome::Indeterminate,
                };
                history.adds.push((key, outcome));
                outcome == Outcome::Ok
            }
            Kind::Increment => {
                let uid = String::from_utf8_lossy(&self.value()).into_owned();
                let outcome = increment(&mut kv, &uid).await;
                history.increments.push((uid, outcome));
                outcome == Outcome::Ok
            }
        }
    }
}

/// One increment: read the counter, compare-and-swap it to one more and record `incs/<new>`,
/// again while the swap loses a race (a few times). `Failed` when no attempt took effect;
/// `Indeterminate` once one may have (it is never tried again after that: a retry by this
/// client could apply it twice, and that would be this test's bug, not the store's).
async fn increment(kv: &mut Kv, uid: &str) -> Outcome {
    for _ in 0..5 {
        let read = pb::RangeRequest { key: COUNTER.as_bytes().to_vec(), ..Default::default() };
        let current = match tokio::time::timeout(OP_TIMEOUT, kv.range(read)).await {
            Ok(Ok(r)) => r.into_inner().kvs.into_iter().next().map(|kv| kv.value),
            _ => return Outcome::Failed,
        };
        let value: u64 = match &current {
            None => 0,
            Some(v) => match std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()) {
                Some(n) => n,
                None => return Outcome::Failed,
            },
        };
        let compare = pb::Compare {
            key: COUNTER.as_bytes().to_vec(),
            target: if current.is_none() { pb::compare::Target::Version } else { pb::compare::Target::Value } as i32,
            result: pb::compare::Result::Equal as i32,
            value: current.unwrap_or_default(),
            number: 0,
        };
        let put = |key: String, value: String| pb::RequestOp {
            request: Some(pb::request_op::Request::Put(pb::PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                ..Default::default()
            })),
        };
        let next = value + 1;
        let success = vec![put(COUNTER.into(), next.to_string()), put(format!("{INCS_PREFIX}{next:010}"), uid.into())];
        let req = pb::TxnRequest { compare: vec![compare], success, failure: vec![] };
        match tokio::time::timeout(OP_TIMEOUT, kv.txn(req)).await {
            Ok(Ok(r)) if r.get_ref().succeeded => return Outcome::Ok,
            Ok(Ok(_)) => continue,
            Ok(Err(s)) if nothing_proposed(&s) => return Outcome::Failed,
            _ => return Outcome::Indeterminate,
        }
    }
    Outcome::Failed
}

/// The counter's final value and the increments recorded under [`INCS_PREFIX`] (value, id).
pub type FinalCounter = (u64, Vec<(u64, String)>);

/// The counter and the increments recorded under [`INCS_PREFIX`], read linearizably from the
/// first endpoint that answers.
pub async fn read_counter(
    admin: &ClientConfig,
    endpoints: &[String],
    timeout: Duration,
) -> Result<FinalCounter, String> {
    first_answer(admin, endpoints, timeout, "counter read", |mut kv| async move {
        // One transaction, so the counter and the records are of one revision.
        let range = |key: &str, prefix: bool| pb::RequestOp {
            request: Some(pb::request_op::Request::Range(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                prefix,
                ..Default::default()
            })),
        };
        let req = pb::TxnRequest {
            compare: vec![],
            success: vec![range(COUNTER, false), range(INCS_PREFIX, true)],
            failure: vec![],
        };
        let r = call_error(tokio::time::timeout(OP_TIMEOUT, kv.txn(req)).await)?;
        Ok(parse_counter(r.into_inner()))
    })
    .await
}

fn parse_counter(r: pb::TxnResponse) -> Result<FinalCounter, String> {
    let ranges: Vec<pb::RangeResponse> = r
        .responses
        .into_iter()
        .filter_map(|op| match op.response {
            Some(pb::response_op::Response::Range(range)) => Some(range),
            _ => None,
        })
        .collect();
    let [counter, incs] = ranges.as_slice() else { return Err(format!("expected 2 ranges, got {}", ranges.len())) };
    if incs.more {
        return Err("the increments read came back incomplete (more = true)".into());
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let value = match counter.kvs.first() {
        None => 0,
        Some(kv) => text(&kv.value).parse().map_err(|e| format!("counter {:?}: {e}", text(&kv.value)))?,
    };
    let incs = incs
        .kvs
        .iter()
        .map(|kv| {
            let key = text(&kv.key);
            let n = key.strip_prefix(INCS_PREFIX).and_then(|n| n.parse().ok());
            n.map(|n| (n, text(&kv.value))).ok_or_else(|| format!("unexpected key {key:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok((value, incs))
}

pub fn reg(k: usize) -> Vec<u8> {
    format!("reg/{k}").into_bytes()
}

/// Asks each endpoint in turn, every 200 ms, until one answers: `ask` gives `Ok` with the final
/// result once a node answered, `Err` to try the next one. Bounded by `timeout`.
async fn first_answer<T, F, Fut>(
    admin: &ClientConfig,
    endpoints: &[String],
    timeout: Duration,
    what: &str,
    ask: F,
) -> Result<T, String>
where
    F: Fn(Kv) -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, String>>,
{
    let start = Instant::now();
    let mut last = String::new();
    let mut attempt = 0usize;
    while start.elapsed() < timeout {
        let ep = &endpoints[attempt % endpoints.len()];
        attempt += 1;
        match Cluster::connect(admin, ep).await {
            Ok((_, kv)) => match ask(kv).await {
                Ok(answer) => return answer,
                Err(e) => last = format!("{ep}: {e}"),
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("no node answered the final {what} within {timeout:?}; last: {last}"))
}

/// How a call's failure reads in [`first_answer`]'s last error.
fn call_error<T>(r: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>) -> Result<T, String> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("timed out".into()),
    }
}

/// The keys under [`SET_PREFIX`] as a linearizable read sees them, asked of each endpoint in
/// turn until one answers (bounded by `timeout`).
pub async fn read_set(admin: &ClientConfig, endpoints: &[String], timeout: Duration) -> Result<Vec<String>, String> {
    first_answer(admin, endpoints, timeout, "set read", |mut kv| async move {
        let req = pb::RangeRequest {
            key: SET_PREFIX.as_bytes().to_vec(),
            prefix: true,
            keys_only: true,
            ..Default::default()
        };
        let r = call_error(tokio::time::timeout(OP_TIMEOUT, kv.range(req)).await)?.into_inner();
        if r.more {
            return Ok(Err("the set read came back incomplete (more = true)".into()));
        }
        Ok(Ok(r.kvs.into_iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()))
    })
    .await
}

/// How long after the faults stop until a write succeeds: one put at a time, each bounded by
/// 1 s, rotating over the endpoints; gives up after `limit`.
pub async fn time_to_write(admin: &ClientConfig, endpoints: &[String], limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    let mut attempt = 0usize;
    let mut clients: HashMap<String, Kv> = HashMap::new();
    while start.elapsed() < limit {
        let ep = endpoints[attempt % endpoints.len()].clone();
        attempt += 1;
        let kv = match clients.get(&ep).cloned() {
            Some(kv) => Ok(kv),
            None => Cluster::connect(admin, &ep).await.map(|(_, kv)| kv),
        };
        match kv {
            Ok(mut kv) => {
                clients.insert(ep.clone(), kv.clone());
                let req = pb::PutRequest {
                    key: b"recovery".to_vec(),
                    value: attempt.to_string().into_bytes(),
                    ..Default::default()
                };
                match tokio::time::timeout(Duration::from_secs(1), kv.put(req)).await {
                    Ok(Ok(_)) => return Ok(start.elapsed()),
                    Ok(Err(s)) => last = format!("{ep}: {:?}: {}", s.code(), s.message()),
                    Err(_) => last = format!("{ep}: no answer within 1s"),
                }
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no write succeeded within {limit:?}; last: {last}"))
}
