//! The controllers that run on the master (the Raft leader): the scheduler, the deployment
//! controller (revisions and rolling updates) and node liveness.
//!
//! Every decision is a pure function over cluster state ([`scheduler::place`],
//! [`rollout::step`], [`rollout::apply`], [`rollout::undo`], [`jobs::step`], and
//! [`plan::plan`], which turns them into the store writes of one pass; [`apply::plan`] and
//! [`edit`] plan the writes of the API's requests), tested on plain values.
//! The loop in [`controller`] reads the state from the store and the nodes' reports from memory,
//! plans, and commits the writes as compare-and-swap transactions. It keeps nothing of
//! its own between steps (level-triggered), so a new master picks up any rollout exactly where
//! the old one left it.

pub mod apply;
pub mod controller;
pub mod edit;
mod error;
pub mod jobs;
pub mod plan;
pub mod rollout;
pub mod scheduler;

pub use error::Error;
