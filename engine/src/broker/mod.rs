//! The eval broker: the leader's in-memory queue of evaluations waiting for a
//! scheduler worker (Nomad's `EvalBroker`).
//!
//! Split in two, decision apart from doing:
//! - [`core`]: [`EvalBroker`], a pure state machine. No threads, no clock:
//!   every input carries `now_ns`, every effect the leader must write through
//!   raft comes back as a [`BrokerOutput`].
//! - [`runtime`]: [`SharedBroker`], the thread-safe wrapper workers block on,
//!   with a timer thread that drives [`EvalBroker::tick`].
//!
//! Evals are durable in raft; the broker only orders work. Losing leadership
//! drops the broker's content (`set_enabled(false)`), and the next leader
//! rebuilds it from the state store.

pub mod core;
pub mod runtime;

pub use self::core::{
    BrokerConfig, BrokerError, BrokerOutput, BrokerStats, EvalBroker, cancel_update, failed_followup,
    failed_followup_delay_ns,
};
pub use self::runtime::SharedBroker;
