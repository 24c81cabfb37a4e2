//! The network layer of HSU, below Raft and the domain: who may talk (the PKI: cluster CA, node
//! and admin certificates, join tokens) and how nodes talk (QUIC with mutual TLS, framed
//! requests and streams). It knows nothing of Raft or of what the messages mean.

pub mod frame;
pub mod pki;
pub mod quic;
pub mod token;
