//! Plan queue and plan applier (leader only).
//!
//! Workers submit plans to the [`PlanQueue`] (highest priority first). One
//! applier thread evaluates each plan against the latest state
//! ([`evaluate::evaluate_plan`]), hands the committed part to a committer
//! thread (raft, or the in-process log) and, while that commit is in flight,
//! already evaluates the next plan against an optimistic copy of the state
//! that includes the in-flight result.

pub mod applier;
pub mod evaluate;
pub mod queue;

pub use applier::{CommitError, Committer, Pipelining, spawn_applier};
pub use evaluate::{NodeRejection, evaluate_node, evaluate_plan};
pub use queue::{PlanError, PlanQueue, PlanTicket};
