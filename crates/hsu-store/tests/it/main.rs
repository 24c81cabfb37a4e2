//! In-process multi-member tests of the store: real sled directories with fsync, real openraft,
//! the router between them for faults. Each scenario asserts on behaviour and waits on events
//! with a deadline.

mod cluster;

mod t10_replication;
mod t20_failover;
mod t30_partition;
mod t40_restart;
mod t50_snapshot_membership;
mod t60_cas;
mod t65_exactly_once;
mod t70_watch;
mod t80_lease;
mod t90_corruption;
mod t95_linearizability;
