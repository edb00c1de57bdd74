//! The client's local state, kept across agent restarts in a redb database
//! (`<state dir>/state.db`): every allocation it runs, every task's last
//! [`TaskState`] and, while a task runs, its [`TaskHandle`], so a new agent
//! re-attaches to what the old one started.
//!
//! Allocations and task states are engine types and are stored as rkyv
//! archives; handles are the drivers' serde type and are stored as JSON.
//! Every [`StateDb::write`] is one transaction, fsynced on commit, so a crash
//! loses at most the batch being written, never a half of it.

use std::collections::BTreeMap;
use std::path::Path;

use caravan_engine::ids::AllocId;
use caravan_engine::model::{Allocation, TaskState};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::driver::TaskHandle;

/// Allocation id → rkyv archive of the [`Allocation`].
const ALLOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocs");
/// `<alloc id>/<task>` → rkyv archive of the task's [`TaskState`].
const TASK_STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("task_states");
/// `<alloc id>/<task>` → JSON of the running task's [`TaskHandle`].
const TASK_HANDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("task_handles");

/// Starts every archived record, so a record of another layout is
/// recognised and skipped instead of misread (rkyv archives carry no schema).
const RECORD_MAGIC: [u8; 4] = *b"CVDB";

/// Bumped whenever the archived layout of a stored model type changes
/// (2: tasks gained `lifecycle`; 3: tasks gained `dispatch_payload_file`;
/// 4: allocations gained `deployment_status`, deployments `task_groups`).
pub const RECORD_FORMAT_VERSION: u8 = 4;

const RECORD_HEADER_LEN: usize = RECORD_MAGIC.len() + 1;

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateDbError {
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("create {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encode {what}: {message}")]
    Encode { what: String, message: String },
}

fn db_err<E: Into<redb::Error>>(err: E) -> StateDbError {
    StateDbError::Db(err.into())
}

/// One change to the stored state.
#[derive(Debug, Clone)]
pub enum StateChange {
    /// Store (or replace) an allocation as the servers last sent it.
    PutAlloc(Box<Allocation>),
    /// Store a task's state and its handle (`None`: no task runs now).
    PutTask { alloc_id: AllocId, task_name: String, state: Box<TaskState>, handle: Option<TaskHandle> },
    /// Forget an allocation and its tasks (the servers dropped it).
    RemoveAlloc(AllocId),
}

/// What a restarted agent finds: one entry per stored allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAlloc {
    pub alloc: Allocation,
    /// Task name → its last state and, when it was running, its handle.
    pub tasks: BTreeMap<String, StoredTask>,
}

/// A task's persisted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTask {
    pub state: TaskState,
    pub handle: Option<TaskHandle>,
}

/// The state database; see the module documentation.
#[derive(Debug)]
pub struct StateDb {
    db: Database,
}

fn task_key(alloc_id: AllocId, task_name: &str) -> String {
    format!("{alloc_id}/{task_name}")
}

/// Splits `<alloc id>/<task>` (task names may hold `/`; alloc ids do not).
fn split_task_key(key: &str) -> Option<(AllocId, &str)> {
    let (alloc, task) = key.split_once('/')?;
    Some((alloc.parse().ok()?, task))
}

/// `value` as a record: magic, version, rkyv archive.
fn archive<T>(value: &T) -> Result<Vec<u8>, rancor::Error>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
{
    let bytes = rkyv::to_bytes::<rancor::Error>(value)?;
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN + bytes.len());
    record.extend_from_slice(&RECORD_MAGIC);
    record.push(RECORD_FORMAT_VERSION);
    record.extend_from_slice(&bytes);
    Ok(record)
}

/// The value of a record of this version; `None` for any other record.
fn unarchive<T>(record: &[u8]) -> Option<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let (header, bytes) = record.split_at_checked(RECORD_HEADER_LEN)?;
    if header[..RECORD_MAGIC.len()] != RECORD_MAGIC || header[RECORD_MAGIC.len()] != RECORD_FORMAT_VERSION {
        return None;
    }
    // redb hands out unaligned slices; rkyv reads aligned archives.
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).ok()
}

impl StateDb {
    /// Opens (or creates) the database at `path`. Fails when another agent
    /// holds it open.
    pub fn open(path: &Path) -> Result<StateDb, StateDbError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StateDbError::CreateDir { path: dir.display().to_string(), source })?;
        }
        let db = Database::create(path).map_err(db_err)?;
        // Create the tables so read transactions can always open them.
        let mut tx = db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        tx.open_table(ALLOCS).map_err(db_err)?;
        tx.open_table(TASK_STATES).map_err(db_err)?;
        tx.open_table(TASK_HANDLES).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(StateDb { db })
    }

    /// Applies `changes` in one durable transaction.
    pub fn write(&self, changes: &[StateChange]) -> Result<(), StateDbError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut allocs = tx.open_table(ALLOCS).map_err(db_err)?;
            let mut states = tx.open_table(TASK_STATES).map_err(db_err)?;
            let mut handles = tx.open_table(TASK_HANDLES).map_err(db_err)?;
            for change in changes {
                match change {
                    StateChange::PutAlloc(alloc) => {
                        let bytes = archive(&**alloc).map_err(|err| StateDbError::Encode {
                            what: format!("allocation {}", alloc.id),
                            message: err.to_string(),
                        })?;
                        allocs.insert(alloc.id.to_string().as_str(), bytes.as_slice()).map_err(db_err)?;
                    }
                    StateChange::PutTask { alloc_id, task_name, state, handle } => {
                        let key = task_key(*alloc_id, task_name);
                        let encode_err =
                            |message: String| StateDbError::Encode { what: format!("task {key}"), message };
                        let bytes = archive(&**state).map_err(|err| encode_err(err.to_string()))?;
                        states.insert(key.as_str(), bytes.as_slice()).map_err(db_err)?;
                        match handle {
                            Some(handle) => {
                                let json = serde_json::to_vec(handle).map_err(|err| encode_err(err.to_string()))?;
                                handles.insert(key.as_str(), json.as_slice()).map_err(db_err)?;
                            }
                            None => {
                                handles.remove(key.as_str()).map_err(db_err)?;
                            }
                        }
                    }
                    StateChange::RemoveAlloc(alloc_id) => {
                        allocs.remove(alloc_id.to_string().as_str()).map_err(db_err)?;
                        // Every task key of the allocation starts with `<id>/`;
                        // '0' is the character after '/'.
                        let (start, end) = (format!("{alloc_id}/"), format!("{alloc_id}0"));
                        states.retain_in(start.as_str()..end.as_str(), |_, _| false).map_err(db_err)?;
                        handles.retain_in(start.as_str()..end.as_str(), |_, _| false).map_err(db_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Everything stored. A record that no longer decodes (written by an
    /// incompatible version, or corrupted) is skipped with a warning: the
    /// servers still know the allocation, and the agent must start.
    pub fn load(&self) -> Result<Vec<StoredAlloc>, StateDbError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let allocs = tx.open_table(ALLOCS).map_err(db_err)?;
        let states = tx.open_table(TASK_STATES).map_err(db_err)?;
        let handles = tx.open_table(TASK_HANDLES).map_err(db_err)?;
        let mut out: BTreeMap<AllocId, StoredAlloc> = BTreeMap::new();
        for entry in allocs.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            match unarchive::<Allocation>(value.value()) {
                Some(alloc) => {
                    out.insert(alloc.id, StoredAlloc { alloc, tasks: BTreeMap::new() });
                }
                None => tracing::warn!(alloc = key.value(), "stored allocation does not decode; skipped"),
            }
        }
        for entry in states.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let Some((alloc_id, task)) = split_task_key(key.value()) else { continue };
            let Some(stored) = out.get_mut(&alloc_id) else { continue };
            let Some(state) = unarchive::<TaskState>(value.value()) else {
                tracing::warn!(task = key.value(), "stored task state does not decode; skipped");
                continue;
            };
            let handle = match handles.get(key.value()).map_err(db_err)? {
                Some(json) => match serde_json::from_slice::<TaskHandle>(json.value()) {
                    Ok(handle) => Some(handle),
                    Err(err) => {
                        tracing::warn!(task = key.value(), %err, "stored task handle does not decode; skipped");
                        None
                    }
                },
                None => None,
            };
            stored.tasks.insert(task.to_string(), StoredTask { state, handle });
        }
        Ok(out.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_engine::fixtures;
    use caravan_engine::ids::IdGen;
    use caravan_engine::model::{JobType, TaskEvent};
    use std::sync::Arc;

    #[test]
    fn round_trip_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client/state.db");
        let mut ids = IdGen::with_seed(7);
        let job = Arc::new(fixtures::job("web", JobType::Service, 1, 100, 64));
        let alloc = caravan_engine::fixtures::allocation(&mut ids, &job, 0);
        let mut state = TaskState::pending();
        state.push_event(TaskEvent::new("Started", 5, "Task started by client"));
        let handle = TaskHandle {
            driver: "raw_exec".into(),
            alloc_id: alloc.id.to_string(),
            task_name: "web/main".into(),
            log_dir: "/tmp/logs".into(),
            logs: Default::default(),
            state: super::super::driver::HandleState::Process {
                pid: 42,
                start_ticks: 7,
                cgroups: Vec::new(),
                executor: None,
            },
        };
        {
            let db = StateDb::open(&path).unwrap();
            db.write(&[
                StateChange::PutAlloc(Box::new(alloc.clone())),
                StateChange::PutTask {
                    alloc_id: alloc.id,
                    task_name: "web/main".into(),
                    state: Box::new(state.clone()),
                    handle: Some(handle.clone()),
                },
            ])
            .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let loaded = db.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].alloc, alloc);
        let task = &loaded[0].tasks["web/main"];
        assert_eq!(task.state, state);
        assert_eq!(task.handle.as_ref(), Some(&handle));

        db.write(&[StateChange::PutTask {
            alloc_id: alloc.id,
            task_name: "web/main".into(),
            state: Box::new(state.clone()),
            handle: None,
        }])
        .unwrap();
        assert_eq!(db.load().unwrap()[0].tasks["web/main"].handle, None);
        db.write(&[StateChange::RemoveAlloc(alloc.id)]).unwrap();
        assert!(db.load().unwrap().is_empty());
    }
}
