//! In-process tests of real HSU nodes: each test starts nodes with `bootstrap::init` and
//! `bootstrap::join` in this process, each with its own data directory and its own 127.0.0.1
//! ports, and talks to them over their real QUIC and gRPC endpoints. Every scenario that attacks a
//! node also checks that the attempt changed nothing, and waits on events with a deadline.

mod cluster;

mod t10_peer_endpoint;
mod t20_join_tokens;
mod t30_removed_node;
mod t40_api_auth;
mod t50_oversized_input;
mod t55_api_limits;
mod t60_node_authorization;
// Needs the `failpoints` feature: `cargo test -p hsu --features failpoints --test it` (.ci/run).
#[cfg(feature = "failpoints")]
mod t70_exactly_once;
