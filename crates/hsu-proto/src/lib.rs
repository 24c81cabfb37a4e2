//! Code generated from `proto/`: prost messages and tonic clients and servers, and how the
//! `hsu.v1` messages print as JSON ([`json`]). Conversions to and from the domain types live
//! beside the code that needs them, one place per type; this crate holds no other logic.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `hsu.v1`: the public API of a cluster.
pub mod v1 {
    tonic::include_proto!("hsu.v1");
}

/// `hsu.core.v1`: what an integrated unit serves to its agent.
pub mod core {
    pub mod v1 {
        tonic::include_proto!("hsu.core.v1");
    }
}

pub mod json;

/// The encoded file descriptor set of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hsu_descriptor");
