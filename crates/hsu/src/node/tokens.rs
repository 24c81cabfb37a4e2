//! Join and API tokens: created and revoked on the leader (only a hash of the secret is
//! stored), and API tokens checked against this node's copy of the records.

use super::*;
use hsu_model::keys::{self, At};

impl Node {
    // ----- tokens -----

    /// Creates a token; returns the whole token (shown once) and what the cluster keeps.
    pub async fn create_token(
        &self,
        kind: TokenKind,
        role: ApiRole,
        ttl: Option<Duration>,
        uses: Option<u32>,
        description: String,
    ) -> Result<(JoinToken, TokenEntry), PeerError> {
        let token = JoinToken::generate(self.ca_fingerprint()).map_err(|e| PeerError::Denied(e.to_string()))?;
        let ttl_ms = ttl.map(|t| t.as_millis() as u64);
        let entry = TokenEntry { kind, role, record: token.record(records::now_ms(), ttl_ms, uses, description) };
        let req = Request::Txn(Txn {
            success: vec![records::put(&keys::TOKENS.key(&token.id), &entry)?],
            ..Default::default()
        });
        self.propose(req).await?;
        Ok((token, entry))
    }

    /// Marks a token revoked. A join that uses the token at the same moment changes its record
    /// too; the write compares on the record's revision, and a lost race is read and tried again.
    pub async fn revoke_token(&self, id: &str) -> Result<(), PeerError> {
        let key = keys::TOKENS.key(id);
        self.update_record(&key, &format!("token {id:?}"), |entry: &mut TokenEntry| entry.record.revoked = true).await
    }

    /// Reads the record at `key` linearizably, changes it with `change` and writes it back with a
    /// compare on the revision it was read at, again until no other writer came between. `what`
    /// names it in a not-found error.
    pub(super) async fn update_record<V>(
        &self,
        at: &At<V>,
        what: &str,
        change: impl Fn(&mut V),
    ) -> Result<(), PeerError>
    where
        V: DeserializeOwned + serde::Serialize,
    {
        for _attempt in 0..20 {
            let kv = self
                .range(KeyRange::from(at), 1, Consistency::Linearizable)
                .await?
                .kvs
                .into_iter()
                .next()
                .ok_or_else(|| PeerError::NotFound(what.to_string()))?;
            let mut record: V = records::decode(&kv.key, &kv.value)?;
            change(&mut record);
            match self.propose(put_if_unchanged(at, kv.mod_revision, &record)?).await? {
                Response::Txn(t) if t.succeeded => return Ok(()),
                Response::Txn(_) => continue,
                other => return Err(PeerError::Internal(format!("a transaction was answered {other:?}"))),
            }
        }
        Err(Error::Unavailable(format!("{what} kept changing while it was being updated; try again")).into())
    }

    /// Checks a bearer API token against this node's copy of the token records.
    pub fn check_api_token(&self, presented: &str) -> Result<ApiRole, String> {
        let token = JoinToken::parse(presented).map_err(|e| e.to_string())?;
        let key = keys::TOKENS.key(&token.id);
        let kv = self.store().range_local(&KeyRange::Key(key.into_bytes()), 1).kvs.into_iter().next();
        let kv = kv.ok_or_else(|| "unknown token".to_string())?;
        let entry: TokenEntry = records::decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
        if entry.kind != TokenKind::Api {
            return Err("a join token is not an API credential".into());
        }
        token.check_against(&entry.record, records::now_ms()).map_err(|e| e.to_string())?;
        Ok(entry.role)
    }
}
