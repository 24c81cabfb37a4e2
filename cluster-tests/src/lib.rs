//! The fault-injection cluster test harness: real `hsu` processes on test hosts made of network
//! namespaces, faults injected from outside (signals, nftables, failpoints), concurrent clients
//! over the public gRPC API whose histories are checked afterwards.
//!
//! - [`net`]: hosts (namespaces, veth pairs, a bridge), removed on drop.
//! - [`nft`]: partitions and packet loss as nftables rules inside the hosts.
//! - [`cluster`]: `hsu node init|join|run` processes, signals, status.
//! - [`nemesis`]: the faults and the random schedule.
//! - [`workload`]: the clients and their recorded history.
//! - [`checks`]: linearizability, no lost writes, one leader per term, recovery time.
//! - [`lazyfs`]: a FUSE filesystem that loses what was not fsynced on a power cut.
//! - [`scenarios`]: t10..t90 and the driver; [`report`]: the table.

pub mod checks;
pub mod cluster;
pub mod lazyfs;
pub mod nemesis;
pub mod net;
pub mod nft;
pub mod report;
pub mod scenarios;
pub mod workload;
