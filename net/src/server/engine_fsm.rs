//! The engine's FSM as raft's replicated state machine: decode an entry's
//! commands, apply them to the state store, record their events, and hand
//! their effects to the leader duties (a no-op on followers).

use std::sync::{Arc, Mutex};

use caravan_engine::duties::LeaderDuties;
use caravan_engine::events::EventBuffer;
use caravan_engine::fsm::Fsm;
use caravan_engine::leader::Restored;
use caravan_engine::state::{State, StateStore};

use crate::raft::{ApplyReply, LogPayload, ReplicatedFsm};
use crate::wire;

/// Shared between the raft thread (which applies) and the leadership
/// thread (which restores the duties).
#[derive(Debug)]
pub(crate) struct EngineFsm {
    fsm: Fsm,
    duties: Arc<LeaderDuties>,
    events: Arc<Mutex<EventBuffer>>,
    /// Held while an entry is applied and routed, and while the duties are
    /// restored: an eval is then either in the restored snapshot or routed
    /// after it, never both, never neither.
    apply_lock: Arc<Mutex<()>>,
}

impl EngineFsm {
    pub(crate) fn new(store: Arc<StateStore>, duties: Arc<LeaderDuties>, events: Arc<Mutex<EventBuffer>>) -> EngineFsm {
        EngineFsm { fsm: Fsm::new(store), duties, events, apply_lock: Arc::new(Mutex::new(())) }
    }

    /// A handle that can take up the leader duties in step with apply.
    pub(crate) fn establisher(&self) -> Establisher {
        Establisher {
            store: self.fsm.store().clone(),
            duties: self.duties.clone(),
            apply_lock: self.apply_lock.clone(),
        }
    }
}

/// Takes up the leader duties between two applies.
#[derive(Debug, Clone)]
pub(crate) struct Establisher {
    store: Arc<StateStore>,
    duties: Arc<LeaderDuties>,
    apply_lock: Arc<Mutex<()>>,
}

impl Establisher {
    pub(crate) fn establish(&self) -> Result<Restored, caravan_engine::broker::BrokerError> {
        let _applying = self.apply_lock.lock().expect("apply lock poisoned");
        self.duties.establish(&self.store.snapshot())
    }
}

impl ReplicatedFsm for EngineFsm {
    fn apply(&mut self, index: u64, payload: &LogPayload) -> ApplyReply {
        let _applying = self.apply_lock.lock().expect("apply lock poisoned");
        let commands = match wire::decode_commands(&payload.bytes) {
            Ok(commands) => commands,
            Err(e) => {
                // Every server refuses it the same way, so they stay equal;
                // the index still advances.
                self.fsm.store().write(index, |_| ());
                return ApplyReply { index, error: Some(format!("undecodable log entry: {e}")) };
            }
        };
        let mut error = None;
        // One publish for the whole entry (an empty one still advances the
        // index), then each applied command's events and routing.
        let outcomes = self.fsm.apply_all(index, &commands);
        for (command, outcome) in commands.iter().zip(outcomes) {
            match outcome {
                Ok(outcome) => {
                    self.events.lock().expect("events poisoned").record(index, command);
                    self.duties.route_deferred(&outcome);
                }
                // All or nothing per command: the state is as it was.
                Err(e) => error = Some(e.to_string()),
            }
        }
        ApplyReply { index, error }
    }

    fn advance(&mut self, index: u64) {
        let _applying = self.apply_lock.lock().expect("apply lock poisoned");
        if index > self.fsm.store().latest_index() {
            self.fsm.store().write(index, |_| ());
        }
    }

    fn snapshot_writer(&self) -> Box<dyn FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send> {
        // O(1): the writer streams a persistent snapshot on its own thread
        // while applies go on.
        let snapshot = self.fsm.store().snapshot();
        Box::new(move |mut out| wire::write_snapshot(&snapshot, &mut out).map(|_| ()).map_err(std::io::Error::other))
    }

    fn install(&mut self, index: u64, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let _applying = self.apply_lock.lock().expect("apply lock poisoned");
        let state: State = wire::read_snapshot(&mut &mut *input).map_err(std::io::Error::other)?;
        if state.index() != index {
            return Err(std::io::Error::other(format!(
                "snapshot reflects index {} but raft installs it at {index}",
                state.index()
            )));
        }
        self.fsm.store().restore(state);
        Ok(())
    }
}
