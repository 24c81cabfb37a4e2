//! End-to-end: real `hsu` processes on 127.0.0.1 ports, driven through the CLI exactly as a user
//! would, with kill -9 for crashes. Waits poll with a deadline; every child is killed on drop.

mod harness;

mod t10_cluster_lifecycle;
mod t20_cli_kv_and_tokens;
mod t30_agent;
mod t40_deployments;
mod t45_cut_off;
mod t48_services;
mod t50_dev;
mod t60_jobs;
mod t70_agent_only;
mod t80_removed_nodes;
