//! Caravan's scheduling core: pure, deterministic, no network, no async runtime.
//!
//! - [`model`]: jobs, nodes, evaluations, allocations, plans.
//! - [`state`]: the MVCC [`state::StateStore`]; a [`state::Snapshot`] is an O(1) clone.
//! - [`feasible`]: constraint, device and unit checks of one node against a job.
//! - [`validate`]: [`validate::validate_job`] and [`validate::validate_node`] list every problem.
//! - [`fsm`]: [`fsm::Fsm::apply`] is the only writer; raft feeds it committed [`fsm::Command`]s.
//! - [`broker`], [`blocked`]: the eval broker and the blocked-eval tracker (leader only).
//! - [`duties`]: those leader-only services together, turned on and off with leadership.
//! - [`heartbeat`]: client heartbeat timers (TTL, grace, expiry), a leader duty.
//! - [`periodic`]: cron schedules and the leader's periodic job dispatcher.
//! - [`scheduler`]: `schedule(snapshot, eval, now) -> plan`, pure and deterministic.
//! - [`plan`]: the plan queue and the applier that re-checks and commits plans.
//! - [`worker`]: scheduler worker threads, with the raft-sync catch-up.
//! - [`sim`], [`local`]: a deterministic single-threaded cluster and a threaded in-process one.
//!
//! ```
//! use std::sync::Arc;
//! use caravan_engine::{fsm::{Command, Fsm}, ids::IdGen, model::*, state::StateStore};
//!
//! let fsm = Fsm::new(Arc::new(StateStore::new()));
//! let mut ids = IdGen::with_seed(1);
//! let node = Node::new(ids.node(), "n1", "dc1", NodeResources { cpu_mhz: 4000, memory_mb: 8192, disk_mb: 10_000, ..Default::default() });
//! fsm.apply(1, &Command::NodeRegister { node, evals: vec![] }).unwrap();
//! assert_eq!(fsm.store().snapshot().node_count(), 1);
//! ```

pub mod blocked;
pub mod broker;
pub mod clock;
pub mod deployment_watcher;
pub mod duties;
pub mod endpoints;
pub mod eval_completer;
pub mod events;
pub mod feasible;
pub mod fixtures;
pub mod fsm;
pub mod health_policy;
pub mod heartbeat;
pub mod ids;
pub mod intern;
pub mod leader;
pub mod local;
pub mod model;
pub mod periodic;
pub mod plan;
pub mod scheduler;
pub mod scheduling_slots;
pub mod sim;
pub mod state;
pub mod validate;
pub mod worker;
