//! Conversions between the proto messages of `hsu.v1` and the store's types, one place per
//! type. Bad input is an `InvalidArgument` that names the field.

use hsu_proto::v1 as pb;
use hsu_store::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyRange, KeyValue, Op, OpResponse, Txn, TxnResponse,
};
use tonic::Status;

/// Keys of the KV API live under this prefix of the store. The cluster's own records (nodes,
/// tokens, the CA) live outside it, so no KV call can read or change them, whatever its role.
pub const USER_PREFIX: &[u8] = hsu_model::keys::USER_KV.as_bytes();

/// The namespace a request names, `default` when it names none (as kubectl does).
pub fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() {
        "default"
    } else {
        ns
    }
}

/// A key as the KV API's client wrote it, made into a store key.
pub fn internal(key: &[u8]) -> Vec<u8> {
    [USER_PREFIX, key].concat()
}

/// A store key under [`USER_PREFIX`] as the client knows it.
fn external(key: Vec<u8>) -> Vec<u8> {
    match key.strip_prefix(USER_PREFIX) {
        Some(k) => k.to_vec(),
        None => key,
    }
}

pub fn key_range(key: Vec<u8>, prefix: bool, field: &str) -> Result<KeyRange, Status> {
    if prefix {
        Ok(KeyRange::Prefix(internal(&key)))
    } else if key.is_empty() {
        Err(Status::invalid_argument(format!("{field}: the key is empty (set prefix to address every key)")))
    } else {
        Ok(KeyRange::Key(internal(&key)))
    }
}

pub fn kv(kv: KeyValue, keys_only: bool) -> pb::KeyValue {
    pb::KeyValue {
        key: external(kv.key),
        value: if keys_only { Vec::new() } else { kv.value },
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

pub fn event(e: Event) -> pb::Event {
    let kind = match e.kind {
        EventKind::Put => pb::event::EventType::Put,
        EventKind::Delete => pb::event::EventType::Delete,
    };
    pb::Event { r#type: kind as i32, kv: Some(kv(e.kv, false)) }
}

fn compare(c: pb::Compare, i: usize) -> Result<Compare, Status> {
    use pb::compare::{Result as R, Target as T};
    let field = format!("compare[{i}]");
    if c.key.is_empty() {
        return Err(Status::invalid_argument(format!("{field}.key is empty")));
    }
    let target = match T::try_from(c.target) {
        Ok(T::Value) => CompareTarget::Value(c.value),
        Ok(T::Version) => CompareTarget::Version(c.number),
        Ok(T::CreateRevision) => CompareTarget::CreateRevision(c.number),
        Ok(T::ModRevision) => CompareTarget::ModRevision(c.number),
        Err(_) => return Err(Status::invalid_argument(format!("{field}.target: unknown value {}", c.target))),
    };
    let op = match R::try_from(c.result) {
        Ok(R::Equal) => CompareOp::Equal,
        Ok(R::NotEqual) => CompareOp::NotEqual,
        Ok(R::Less) => CompareOp::Less,
        Ok(R::Greater) => CompareOp::Greater,
        Err(_) => return Err(Status::invalid_argument(format!("{field}.result: unknown value {}", c.result))),
    };
    Ok(Compare { key: internal(&c.key), target, op })
}

fn op(o: pb::RequestOp, field: &str) -> Result<Op, Status> {
    use pb::request_op::Request as R;
    match o.request {
        Some(R::Put(p)) => {
            if p.key.is_empty() {
                return Err(Status::invalid_argument(format!("{field}.put.key is empty")));
            }
            Ok(Op::Put { key: internal(&p.key), value: p.value, lease: p.lease })
        }
        Some(R::Delete(d)) => Ok(Op::Delete { range: key_range(d.key, d.prefix, &format!("{field}.delete"))? }),
        Some(R::Range(r)) => {
            Ok(Op::Range { range: key_range(r.key, r.prefix, &format!("{field}.range"))?, limit: r.limit })
        }
        None => Err(Status::invalid_argument(format!("{field} has no operation"))),
    }
}

pub fn txn(t: pb::TxnRequest) -> Result<Txn, Status> {
    Ok(Txn {
        compare: t.compare.into_iter().enumerate().map(|(i, c)| compare(c, i)).collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .enumerate()
            .map(|(i, o)| op(o, &format!("success[{i}]")))
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .enumerate()
            .map(|(i, o)| op(o, &format!("failure[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

pub fn txn_response(r: TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let responses = r
        .responses
        .into_iter()
        .map(|o| pb::ResponseOp {
            response: Some(match o {
                OpResponse::Put { prev } => {
                    R::Put(pb::PutResponse { header: Some(header), prev_kv: prev.map(|p| kv(p, false)) })
                }
                OpResponse::Delete { prev } => R::Delete(pb::DeleteResponse {
                    header: Some(header),
                    deleted: prev.len() as u64,
                    prev_kvs: prev.into_iter().map(|p| kv(p, false)).collect(),
                }),
                OpResponse::Range { kvs, more } => R::Range(pb::RangeResponse {
                    header: Some(header),
                    kvs: kvs.into_iter().map(|k| kv(k, false)).collect(),
                    more,
                }),
            }),
        })
        .collect();
    pb::TxnResponse { header: Some(header), succeeded: r.succeeded, responses }
}
