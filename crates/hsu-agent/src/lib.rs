//! The node agent: owns the lifecycle of the units on one machine.
//!
//! Desired units come in (from a units file in standalone mode, from the store in a cluster), and
//! observed status goes out; the agent never talks to Raft. [`Agent`] reconciles with the pure
//! [`agent::plan`]; each unit is an actor ([`supervisor`]) that starts its process in its own
//! process group with its output in size-rotated files ([`logs`]), restarts it with backoff and a
//! flap limit ([`restart`]), and stops it with a signal to the whole group and SIGKILL after a
//! grace period. What runs is recorded on disk ([`record`]), so a restarted agent adopts its
//! units instead of starting them twice.

pub mod agent;
pub mod attach;
mod error;
pub mod limits;
pub mod logs;
pub mod probe;
pub mod process;
pub mod record;
pub mod resources;
pub mod restart;
pub mod standalone;
pub mod supervisor;

pub use agent::{Action, Agent, ApplyReport, OnExit};
pub use error::Error;
pub use restart::Exit;
pub use supervisor::{State, UnitStatus};
