//! Domain types of HSU that every other crate shares: identifiers, the versioned, checksummed
//! binary record encoding used for everything HSU stores or sends, and the unit spec (YAML). This crate does no I/O and
//! nothing async, so that its rules can be tested on plain values.

pub mod cluster;
pub mod codec;
pub mod deploy;
pub mod duration;
pub mod expand;
pub mod id;
pub mod keys;
pub mod service;
pub mod state;
pub mod unit;

pub use codec::{decode_record, encode_record, CodecError};
pub use id::NodeId;
