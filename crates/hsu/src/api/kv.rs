//! `hsu.v1.KV` over the node: writes and linearizable reads go to the leader, local reads and
//! watches are served by this node's state machine.

use std::pin::Pin;

use futures::Stream;
use hsu_proto::v1 as pb;
use hsu_store::{Consistency, Op, OpResponse, Request as StoreRequest, RequestId, Response as StoreResponse, Txn};
use tonic::{Request, Response, Status};

use super::auth::{authorize, Need};
use super::convert;
use crate::node::Node;

pub struct KvApi {
    pub node: Node,
}

impl KvApi {
    fn header(&self, revision: u64) -> pb::ResponseHeader {
        let term = self.node.store().status().term;
        pb::ResponseHeader { revision, member_id: self.node.id(), raft_term: term }
    }

    async fn txn(&self, txn: Txn, id: Option<RequestId>) -> Result<hsu_store::TxnResponse, Status> {
        check_limits(&txn)?;
        let req = StoreRequest::Txn(txn);
        let answer = match id {
            Some(id) => self.node.propose_as(req, id).await?,
            None => self.node.propose(req).await?,
        };
        match answer {
            StoreResponse::Txn(r) => Ok(r),
            StoreResponse::Rejected(r) => Err(crate::error::status_of(hsu_store::Error::Rejected(r))),
            other => Err(Status::internal(format!("unexpected answer to a transaction: {other:?}"))),
        }
    }
}

/// The metadata key of a client's own request id, `CLIENT.SEQ[.OLDEST]` (decimal; CLIENT a
/// random non-zero number the client chose, SEQ its numbering of its writes, OLDEST the lowest
/// SEQ it still waits on, SEQ if absent). With it, a client that sends a write again after a
/// timeout or a lost connection gets the first attempt's answer instead of a second apply.
pub const REQUEST_ID_KEY: &str = "hsu-request-id";
/// Which attempt this is (1, 2, ...): from the second on the write may have been sent before.
pub const ATTEMPT_KEY: &str = "hsu-attempt";

/// The client's request id of a write, if it sent one.
fn request_id<T>(req: &Request<T>) -> Result<Option<RequestId>, Status> {
    let text = |key: &str| req.metadata().get(key).map(|v| v.to_str().map_err(|_| format!("{key}: not text")));
    let bad = |m: String| crate::error::refused(Status::invalid_argument(m));
    let Some(id) = text(REQUEST_ID_KEY) else { return Ok(None) };
    let id = id.map_err(bad)?;
    let numbers: Vec<Option<u64>> = id.split('.').map(|n| n.parse().ok()).collect();
    let (client, seq, oldest) = match numbers.as_slice() {
        [Some(c), Some(s)] => (*c, *s, *s),
        [Some(c), Some(s), Some(o)] if o <= s => (*c, *s, *o),
        _ => {
            return Err(bad(format!("{REQUEST_ID_KEY}: expected CLIENT.SEQ[.OLDEST] with OLDEST <= SEQ, found {id:?}")))
        }
    };
    if client == 0 || seq == 0 {
        return Err(bad(format!("{REQUEST_ID_KEY}: CLIENT and SEQ start at 1, found {id:?}")));
    }
    let attempt = match text(ATTEMPT_KEY) {
        None => 1,
        Some(a) => a
            .map_err(bad)?
            .parse::<u32>()
            .ok()
            .filter(|a| *a >= 1)
            .ok_or_else(|| bad(format!("{ATTEMPT_KEY}: expected a number from 1")))?,
    };
    Ok(Some(RequestId { client, seq, oldest_pending: oldest, retry: attempt > 1 }))
}

/// The longest key the KV API takes.
pub const MAX_KEY_BYTES: usize = 4096;
/// The most bytes of keys and values one write may carry: etcd's `--max-request-bytes`
/// default, so what etcd takes, HSU takes.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Refuses a transaction with a key over [`MAX_KEY_BYTES`] (`INVALID_ARGUMENT`) or more than
/// [`MAX_REQUEST_BYTES`] of keys and values (`RESOURCE_EXHAUSTED`), before anything is proposed.
fn check_limits(txn: &Txn) -> Result<(), Status> {
    let prefix = convert::internal(b"").len();
    let mut total = 0usize;
    let keys =
        txn.compare.iter().map(|c| (c.key.len(), 0)).chain(txn.success.iter().chain(&txn.failure).map(|op| match op {
            Op::Put { key, value, .. } => (key.len(), value.len()),
            Op::Delete { range: hsu_store::KeyRange::Key(k) | hsu_store::KeyRange::Prefix(k) } => (k.len(), 0),
            Op::Range { range: hsu_store::KeyRange::Key(k) | hsu_store::KeyRange::Prefix(k), .. } => (k.len(), 0),
        }));
    for (key, value) in keys {
        let key = key.saturating_sub(prefix);
        if key > MAX_KEY_BYTES {
            return Err(crate::error::refused(Status::invalid_argument(format!(
                "key: {key} bytes, at most {MAX_KEY_BYTES}"
            ))));
        }
        total += key + value;
    }
    if total > MAX_REQUEST_BYTES {
        return Err(crate::error::refused(Status::resource_exhausted(format!(
            "the request carries {total} bytes of keys and values, over the limit of {MAX_REQUEST_BYTES} (as etcd's --max-request-bytes)"
        ))));
    }
    Ok(())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvApi {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let r = req.into_inner();
        let consistency = match pb::Consistency::try_from(r.consistency) {
            Ok(pb::Consistency::Linearizable) => Consistency::Linearizable,
            Ok(pb::Consistency::Local) => Consistency::Local,
            Err(_) => return Err(Status::invalid_argument(format!("consistency: unknown value {}", r.consistency))),
        };
        let range = convert::key_range(r.key, r.prefix, "key")?;
        let res = self.node.range(range, r.limit, consistency).await?;
        Ok(Response::new(pb::RangeResponse {
            header: Some(self.header(res.revision)),
            kvs: res.kvs.into_iter().map(|kv| convert::kv(kv, r.keys_only)).collect(),
            more: res.more,
        }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let id = request_id(&req)?;
        let p = req.into_inner();
        if p.key.is_empty() {
            return Err(Status::invalid_argument("key is empty"));
        }
        let r = self
            .txn(
                Txn {
                    success: vec![Op::Put { key: convert::internal(&p.key), value: p.value, lease: p.lease }],
                    ..Default::default()
                },
                id,
            )
            .await?;
        let prev = match r.responses.into_iter().next() {
            Some(OpResponse::Put { prev }) if p.prev_kv => prev.map(|kv| convert::kv(kv, false)),
            _ => None,
        };
        Ok(Response::new(pb::PutResponse { header: Some(self.header(r.revision)), prev_kv: prev }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let id = request_id(&req)?;
        let d = req.into_inner();
        let range = convert::key_range(d.key, d.prefix, "key")?;
        let r = self.txn(Txn { success: vec![Op::Delete { range }], ..Default::default() }, id).await?;
        let prev = match r.responses.into_iter().next() {
            Some(OpResponse::Delete { prev }) => prev,
            _ => Vec::new(),
        };
        Ok(Response::new(pb::DeleteResponse {
            header: Some(self.header(r.revision)),
            deleted: prev.len() as u64,
            prev_kvs: if d.prev_kv { prev.into_iter().map(|kv| convert::kv(kv, false)).collect() } else { Vec::new() },
        }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = req.get_ref();
        let writes =
            t.success.iter().chain(&t.failure).any(|o| !matches!(o.request, Some(pb::request_op::Request::Range(_))));
        authorize(&self.node, &req, if writes { Need::Write } else { Need::Read })?;
        let id = request_id(&req)?;
        let txn = convert::txn(req.into_inner())?;
        let r = self.txn(txn, id).await?;
        let header = self.header(r.revision);
        Ok(Response::new(convert::txn_response(r, header)))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let w = req.into_inner();
        let range = convert::key_range(w.key, w.prefix, "key")?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let member_id = self.node.id();
        match self.node.store().watch(range, w.start_revision) {
            Err(hsu_store::Error::Compacted { compacted, .. }) => {
                let _ = tx
                    .send(Ok(pb::WatchResponse {
                        header: Some(pb::ResponseHeader { revision: 0, member_id, raft_term: 0 }),
                        events: vec![],
                        compact_revision: compacted,
                    }))
                    .await;
            }
            Err(e) => return Err(crate::error::status_of(e)),
            Ok(mut watcher) => {
                tokio::spawn(async move {
                    loop {
                        // A client that went away (its stream dropped) ends the watch at once,
                        // not at the next change, which may never come.
                        let next = tokio::select! {
                            next = watcher.next() => next,
                            () = tx.closed() => return,
                        };
                        let msg = match next {
                            Ok(e) => {
                                let revision = e.kv.mod_revision;
                                pb::WatchResponse {
                                    header: Some(pb::ResponseHeader { revision, member_id, raft_term: 0 }),
                                    events: vec![convert::event(e)],
                                    compact_revision: 0,
                                }
                            }
                            Err(hsu_store::Error::Compacted { compacted, .. }) => {
                                pb::WatchResponse { header: None, events: vec![], compact_revision: compacted }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(crate::error::status_of(e))).await;
                                return;
                            }
                        };
                        let end = msg.compact_revision != 0;
                        if tx.send(Ok(msg)).await.is_err() || end {
                            return;
                        }
                    }
                });
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let ttl_ms = req.into_inner().ttl_ms;
        if ttl_ms == 0 {
            return Err(Status::invalid_argument("ttl_ms must be at least 1"));
        }
        let id = rand_id();
        match self.node.propose(StoreRequest::LeaseGrant { id, ttl_ms }).await? {
            StoreResponse::LeaseGranted { id, ttl_ms } => {
                Ok(Response::new(pb::LeaseGrantResponse { header: Some(self.header(0)), id, ttl_ms }))
            }
            StoreResponse::Rejected(r) => Err(crate::error::status_of(hsu_store::Error::Rejected(r))),
            other => Err(Status::internal(format!("unexpected answer to a lease grant: {other:?}"))),
        }
    }

    async fn lease_keep_alive(
        &self,
        req: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let id = req.into_inner().id;
        let ttl_ms = self.node.keep_alive(id).await?;
        Ok(Response::new(pb::LeaseKeepAliveResponse { header: Some(self.header(0)), id, ttl_ms }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let id = req.into_inner().id;
        match self.node.propose(StoreRequest::LeaseRevoke { id }).await? {
            StoreResponse::LeaseRevoked { found: true, .. } => {
                Ok(Response::new(pb::LeaseRevokeResponse { header: Some(self.header(0)) }))
            }
            StoreResponse::LeaseRevoked { found: false, .. } => {
                Err(Status::not_found(format!("lease {id:#x} not found")))
            }
            other => Err(Status::internal(format!("unexpected answer to a lease revoke: {other:?}"))),
        }
    }
}

/// A lease id: random, chosen here before the grant is proposed so apply stays deterministic.
fn rand_id() -> u64 {
    (rand::random::<u64>() >> 1).max(1)
}
