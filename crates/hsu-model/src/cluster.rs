//! The records the cluster keeps about itself (their keys are in [`crate::keys`]): the nodes as
//! they joined, the tokens (a hash of each secret, never the secret), the CA's certificate and
//! the cluster's name. Checking a presented token against its record is hsu-net's.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A node as recorded when it joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    /// The node-to-node (QUIC) address.
    pub address: String,
    pub api_address: String,
    pub joined_ms: u64,
    pub version: String,
    /// Set by `hsu node remove` and `hsu node leave`; the record stays for the history.
    pub removed: bool,
    /// An agent-only node: never in Raft, holds no CA key.
    pub agent_only: bool,
    /// The sha256 of the certificate the node was enrolled with. Servers hold the CA key, so a
    /// certificate that merely chains to the CA proves little; the node must present this one.
    pub cert_sha256: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    Join,
    Api,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRole {
    Admin,
    ReadOnly,
}

/// A token as the cluster keeps it: the record holds a hash of the secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub kind: TokenKind,
    pub role: ApiRole,
    pub record: TokenRecord,
}

/// What the cluster stores about a token: never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's public id.
    pub id: String,
    /// sha256 of the token's secret.
    pub secret_hash: [u8; 32],
    /// Creation time, milliseconds since the unix epoch.
    pub created_ms: u64,
    /// Expiry time, milliseconds since the unix epoch; `None` never expires.
    pub expires_ms: Option<u64>,
    /// Remaining uses; `None` is unlimited.
    pub uses_left: Option<u32>,
    /// Set when an administrator revokes the token.
    pub revoked: bool,
    /// Free-form note for administrators, e.g. what the token was made for.
    pub description: String,
}

impl TokenRecord {
    /// The record after one successful use (uses_left decremented; unlimited stays unlimited).
    pub fn used(&self) -> Self {
        Self { uses_left: self.uses_left.map(|n| n.saturating_sub(1)), ..self.clone() }
    }
}

/// The cluster CA's certificate. Its private key is in no record: only voters hold it, in
/// their data directory (`pki/ca.key`), and a new voter fetches it from another voter over the
/// node-to-node endpoint, so no read, watch or snapshot of the store can hand it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub created_ms: u64,
}
