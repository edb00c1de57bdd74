//! openraft's state machine around an application FSM ([`ReplicatedFsm`]),
//! with snapshots kept as files (see [`snapshot_files`](super::snapshot_files)).
//!
//! Apply: each committed entry goes to the FSM in log order: `Normal`
//! payloads through [`ReplicatedFsm::apply`], `Blank` and `Membership`
//! entries through [`ReplicatedFsm::advance`] so the state's index still
//! moves; the membership itself is kept here, as openraft asks.
//!
//! Snapshots: [`ReplicatedFsm::snapshot_writer`] is called on the raft
//! thread (cheap: the engine hands out an `Arc` of its immutable state);
//! the returned writer runs on compio's blocking pool and streams into a
//! temp file that is fsynced and renamed, so the raft thread keeps running
//! while a large state is written. The newest [`SNAPSHOTS_KEPT`] files are
//! kept.
//!
//! Install: a received [`SnapshotFile`] is copied into the snapshot
//! directory and its checksum and meta verified on a worker thread, before
//! the FSM sees a byte of it; a corrupt or mismatched file is refused with
//! an error and the current state is kept. The FSM then replaces its state
//! from the body, on the raft thread (the FSM is not `Send`); install is
//! rare and the FSM must make it all-or-nothing.
//!
//! Restart: the FSM state lives in memory only. [`StateMachineStore::open`]
//! loads the newest snapshot file that verifies (skipping corrupt ones with
//! a warning) into the FSM, so `applied_state` is that snapshot's last log
//! id and membership. openraft then re-applies the committed log entries
//! after it, read from the [`LogStore`](super::LogStore) (which saved the
//! committed index durably), before serving.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use super::entry_codec::LogId;
use super::snapshot_files::{
    self, SnapshotError, SnapshotFile, SnapshotMeta, body_reader, import_snapshot, snapshot_file_name, verify_snapshot,
    write_snapshot,
};
use super::types::{ApplyReply, LogPayload, TypeConfig};

pub use super::snapshot_files::{SNAPSHOTS_KEPT, SnapshotWriter};

/// The membership openraft asks the state machine to keep.
pub type StoredMembership = StoredMembershipOf<TypeConfig>;

/// The application state machine that raft replicates: the engine's FSM in
/// a server, a small map in tests.
pub trait ReplicatedFsm: 'static {
    /// Applies one `Normal` entry's payload at `index`, all or nothing: on
    /// a refused command the state is unchanged and the reply says why.
    fn apply(&mut self, index: u64, payload: &LogPayload) -> ApplyReply;
    /// Called for `Blank` and `Membership` entries so the state's index
    /// advances with the log.
    fn advance(&mut self, index: u64);
    /// Begins a snapshot of the current state. Must be cheap (the engine
    /// takes an `Arc` of its immutable state); the returned writer runs on
    /// another thread and streams the state into `out`.
    fn snapshot_writer(&self) -> SnapshotWriter;
    /// Replaces the whole state, at `index`, from a snapshot body whose
    /// checksum the file format has already verified. All or nothing: on
    /// error the previous state must remain.
    fn install(&mut self, index: u64, input: &mut dyn io::Read) -> io::Result<()>;
}

/// openraft's state machine store over a [`ReplicatedFsm`]; see the module
/// docs.
pub struct StateMachineStore<F: ReplicatedFsm> {
    fsm: F,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshot_dir: PathBuf,
    /// Sequence number of the next snapshot file (builds and installs),
    /// above every one in the directory.
    next_seq: u64,
}

impl<F: ReplicatedFsm> fmt::Debug for StateMachineStore<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("last_applied", &self.last_applied)
            .field("last_membership", &self.last_membership)
            .field("snapshot_dir", &self.snapshot_dir)
            .finish_non_exhaustive()
    }
}

impl<F: ReplicatedFsm> StateMachineStore<F> {
    /// Opens the snapshot directory (creating it), removes unfinished temp
    /// files, and loads the newest valid snapshot into `fsm`. Blocking:
    /// call it at startup, before the raft runtime starts.
    pub fn open(snapshot_dir: &Path, mut fsm: F) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(snapshot_dir).map_err(|source| SnapshotError::Io {
            context: "creating snapshot directory",
            path: snapshot_dir.display().to_string(),
            source,
        })?;
        snapshot_files::remove_temp_files(snapshot_dir)?;
        let next_seq = snapshot_files::max_seq(snapshot_dir)? + 1;
        let mut last_applied = None;
        let mut last_membership = StoredMembership::default();
        for (_, _, path) in snapshot_files::list_snapshots(snapshot_dir)? {
            match load_snapshot(&mut fsm, &path) {
                Ok(meta) => {
                    tracing::info!(path = %path.display(), meta = %meta, "loaded raft snapshot");
                    last_applied = meta.last_log_id;
                    last_membership = meta.last_membership;
                    break;
                }
                Err(err) => tracing::warn!(%err, "skipping a snapshot that does not verify"),
            }
        }
        Ok(StateMachineStore { fsm, last_applied, last_membership, snapshot_dir: snapshot_dir.to_path_buf(), next_seq })
    }

    /// The application state machine.
    pub fn fsm(&self) -> &F {
        &self.fsm
    }

    /// Where the snapshot files are.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The newest snapshot file that verifies, opened at its start.
    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>, SnapshotError> {
        for (_, _, path) in snapshot_files::list_snapshots(&self.snapshot_dir)? {
            let mut snapshot = SnapshotFile::open(&path)?;
            match verify_snapshot(snapshot.file_mut(), &path) {
                Ok(verified) => {
                    // Rewind: the caller streams the whole file.
                    let reopened = SnapshotFile::open(&path)?;
                    return Ok(Some((verified.meta, reopened)));
                }
                Err(err) => tracing::warn!(%err, "skipping a snapshot that does not verify"),
            }
        }
        Ok(None)
    }
}

/// Verifies the file at `path` and installs its body into `fsm`.
fn load_snapshot<F: ReplicatedFsm>(fsm: &mut F, path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let mut file = std::fs::File::open(path).map_err(|source| SnapshotError::Io {
        context: "opening snapshot",
        path: path.display().to_string(),
        source,
    })?;
    let verified = verify_snapshot(&mut file, path)?;
    let mut body = body_reader(&mut file, path, &verified)?;
    fsm.install(verified.index(), &mut body).map_err(|source| SnapshotError::Io {
        context: "installing snapshot into the state machine from",
        path: path.display().to_string(),
        source,
    })?;
    Ok(verified.meta)
}

/// Runs blocking snapshot file work on compio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    compio::runtime::spawn_blocking(work).await.map_err(|err| SnapshotError::Worker(format!("{err:?}")))?
}

/// Builds one snapshot: holds the FSM's writer, taken when the builder was
/// created, and the meta of the state it captured.
pub struct SnapshotBuilder {
    writer: Option<SnapshotWriter>,
    meta: SnapshotMeta,
    snapshot_id: String,
    snapshot_dir: PathBuf,
    file_name: String,
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("meta", &self.meta)
            .field("snapshot_id", &self.snapshot_id)
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let writer = self.writer.take().ok_or(SnapshotError::BuilderUsed)?;
        let (dir, name, meta, id) =
            (self.snapshot_dir.clone(), self.file_name.clone(), self.meta.clone(), self.snapshot_id.clone());
        let path = blocking(move || {
            let path = write_snapshot(&dir, &name, &meta, &id, writer)?;
            snapshot_files::prune_snapshots(&dir)?;
            Ok(path)
        })
        .await?;
        tracing::info!(path = %path.display(), meta = %self.meta, "built raft snapshot");
        Ok(Snapshot { meta: self.meta.clone(), snapshot: SnapshotFile::open(&path)? })
    }
}

impl<F: ReplicatedFsm> RaftStateMachine<TypeConfig> for StateMachineStore<F> {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let reply = match &entry.payload {
                EntryPayload::Normal(payload) => self.fsm.apply(index, payload),
                EntryPayload::Blank => {
                    self.fsm.advance(index);
                    ApplyReply { index, error: None }
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    self.fsm.advance(index);
                    ApplyReply { index, error: None }
                }
            };
            self.last_applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let seq = self.take_seq();
        let snapshot_id = match &self.last_applied {
            Some(id) => format!("{}-{}-{}-{seq}", id.leader_id.term, id.leader_id.node_id, id.index),
            None => format!("0-0-0-{seq}"),
        };
        SnapshotBuilder {
            writer: Some(self.fsm.snapshot_writer()),
            meta: SnapshotMeta { last_log_id: self.last_applied, last_membership: self.last_membership.clone() },
            snapshot_id,
            snapshot_dir: self.snapshot_dir.clone(),
            file_name: snapshot_file_name(self.last_applied.as_ref(), seq),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let file_name = snapshot_file_name(meta.last_log_id.as_ref(), self.take_seq());
        let (dir, expected) = (self.snapshot_dir.clone(), meta.clone());
        let mut source = snapshot.into_file();
        // Verify on a worker thread, before the FSM sees anything.
        let (path, verified) = blocking(move || import_snapshot(&dir, &file_name, &mut source, &expected)).await?;
        let mut file = std::fs::File::open(&path)?;
        let installed = body_reader(&mut file, &path, &verified)
            .map_err(io::Error::from)
            .and_then(|mut body| self.fsm.install(verified.index(), &mut body));
        if let Err(err) = installed {
            // Not a snapshot of our state after all: never load it on restart.
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        let dir = self.snapshot_dir.clone();
        blocking(move || snapshot_files::prune_snapshots(&dir)).await?;
        tracing::info!(meta = %meta, "installed raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        Ok(self.current_snapshot()?.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
