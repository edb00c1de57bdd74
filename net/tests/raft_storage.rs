//! Raft storage at its boundary: openraft's conformance suite against
//! `LogStore` + `StateMachineStore`, then what the suite does not cover:
//! reopening, torn tails, corrupt snapshots, restart from a snapshot, and
//! the fsync count.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use caravan_net::raft::entry_codec::{LogEntry, LogId, Vote};
use caravan_net::raft::{
    ApplyReply, LogPayload, LogStore, LogStoreError, ReplicatedFsm, SnapshotWriter, StateMachineStore, TypeConfig,
};
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError, StoredMembership};
use redb::ReadableTable;

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("caravan-raft-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn log_path(&self) -> PathBuf {
        self.0.join("raft").join("log.redb")
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.0.join("raft").join("snapshots")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test FSM: the payloads applied, by index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct MapFsm {
    payloads: BTreeMap<u64, Vec<u8>>,
    index: u64,
}

impl ReplicatedFsm for MapFsm {
    fn apply(&mut self, index: u64, payload: &LogPayload) -> ApplyReply {
        self.index = index;
        if payload.bytes == b"refuse" {
            return ApplyReply { index, error: Some("refused".to_string()) };
        }
        self.payloads.insert(index, payload.bytes.clone());
        ApplyReply { index, error: None }
    }

    fn advance(&mut self, index: u64) {
        self.index = index;
    }

    fn snapshot_writer(&self) -> SnapshotWriter {
        let state = self.clone();
        Box::new(move |out: &mut dyn Write| {
            out.write_all(&state.index.to_le_bytes())?;
            out.write_all(&(state.payloads.len() as u64).to_le_bytes())?;
            for (index, bytes) in &state.payloads {
                out.write_all(&index.to_le_bytes())?;
                out.write_all(&(bytes.len() as u64).to_le_bytes())?;
                out.write_all(bytes)?;
            }
            Ok(())
        })
    }

    fn install(&mut self, index: u64, input: &mut dyn Read) -> io::Result<()> {
        let read_u64 = |input: &mut dyn Read| -> io::Result<u64> {
            let mut raw = [0u8; 8];
            input.read_exact(&mut raw)?;
            Ok(u64::from_le_bytes(raw))
        };
        let state_index = read_u64(input)?;
        let count = read_u64(input)?;
        let mut payloads = BTreeMap::new();
        for _ in 0..count {
            let key = read_u64(input)?;
            let len = read_u64(input)?;
            let mut bytes = Vec::new();
            input.take(len).read_to_end(&mut bytes)?;
            payloads.insert(key, bytes);
        }
        if state_index != index {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot index mismatch"));
        }
        *self = MapFsm { payloads, index };
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<MapFsm>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore<MapFsm>), StorageError<TypeConfig>> {
        let dir = TempDir::new("suite");
        let log = LogStore::open(&dir.log_path()).expect("open log store");
        let sm = StateMachineStore::open(&dir.snapshot_dir(), MapFsm::default()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    compio::runtime::Runtime::new().expect("compio runtime").block_on(future)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

fn normal(term: u64, index: u64, bytes: &[u8]) -> LogEntry {
    LogEntry { log_id: log_id(term, index), payload: EntryPayload::Normal(LogPayload { bytes: bytes.to_vec() }) }
}

fn membership(voters: &[u64]) -> Membership<u64, caravan_net::raft::ServerNode> {
    Membership::new_with_defaults(vec![voters.iter().copied().collect()], [])
}

async fn apply(sm: &mut StateMachineStore<MapFsm>, entries: Vec<LogEntry>) {
    let stream = futures_util::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
    sm.apply(stream).await.unwrap();
}

#[test]
fn openraft_conformance_suite() {
    block_on(async { Suite::test_all(Builder).await }).unwrap();
}

#[test]
fn reopen_keeps_vote_log_and_committed() {
    let dir = TempDir::new("reopen");
    let vote = Vote::new_committed(3, 2);
    block_on(async {
        let mut log = LogStore::open(&dir.log_path()).unwrap();
        log.blocking_append((1..=5).map(|i| normal(3, i, &[i as u8; 100]))).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(3, 4))).await.unwrap();
        log.purge(log_id(3, 1)).await.unwrap();
    });
    block_on(async {
        let mut log = LogStore::open(&dir.log_path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 4)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 1)));
        assert_eq!(state.last_log_id, Some(log_id(3, 5)));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(entries, (2..=5).map(|i| normal(3, i, &[i as u8; 100])).collect::<Vec<_>>());
    });
}

const LOG_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raft_log");

/// Flips one byte in the stored record at `index`, as a torn write would.
fn corrupt_record(path: &Path, index: u64) {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut table = tx.open_table(LOG_TABLE).unwrap();
        let mut record = table.get(index).unwrap().expect("record to corrupt").value().to_vec();
        let middle = record.len() / 2;
        record[middle] ^= 0x40;
        table.insert(index, record.as_slice()).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn torn_tail_is_truncated_on_reopen() {
    let dir = TempDir::new("torn");
    block_on(async {
        let mut log = LogStore::open(&dir.log_path()).unwrap();
        log.blocking_append((1..=6).map(|i| normal(2, i, b"payload"))).await.unwrap();
        log.save_committed(Some(log_id(2, 3))).await.unwrap();
    });
    corrupt_record(&dir.log_path(), 5);
    block_on(async {
        let (mut log, report) = LogStore::open_report(&dir.log_path()).unwrap();
        assert_eq!(report.first_corrupt_index, Some(5));
        assert_eq!(report.entries_kept, 4);
        assert_eq!(report.entries_truncated, 2, "the corrupt record and the one after it");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 4)));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // The log takes new entries after the truncation point.
        log.blocking_append([normal(3, 5, b"again")]).await.unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(3, 5)));
    });
    // Reopening again finds nothing left to repair.
    let (_, report) = LogStore::open_report(&dir.log_path()).unwrap();
    assert_eq!(report.first_corrupt_index, None);
    assert_eq!(report.entries_kept, 5);
}

#[test]
fn corruption_at_or_below_committed_is_an_error() {
    let dir = TempDir::new("committed");
    block_on(async {
        let mut log = LogStore::open(&dir.log_path()).unwrap();
        log.blocking_append((1..=6).map(|i| normal(2, i, b"payload"))).await.unwrap();
        log.save_committed(Some(log_id(2, 4))).await.unwrap();
    });
    corrupt_record(&dir.log_path(), 3);
    let err = LogStore::open(&dir.log_path()).unwrap_err();
    assert!(matches!(err, LogStoreError::CorruptCommitted { index: 3, committed: 4, .. }), "{err}");
    // Nothing was truncated: flipping the byte back (xor again) restores
    // a log that opens whole.
    corrupt_record(&dir.log_path(), 3);
    let (_, report) = LogStore::open_report(&dir.log_path()).unwrap();
    assert_eq!(report.entries_kept, 6);
}

#[test]
fn fsync_count_is_one_per_append_batch() {
    let dir = TempDir::new("fsync");
    block_on(async {
        let mut log = LogStore::open(&dir.log_path()).unwrap();
        let metrics = log.metrics();
        let before = metrics.fsync_count();
        log.blocking_append([normal(1, 1, b"one")]).await.unwrap();
        assert_eq!(metrics.fsync_count(), before + 1);
        log.blocking_append((2..=65).map(|i| normal(1, i, &[7; 1024]))).await.unwrap();
        assert_eq!(metrics.fsync_count(), before + 2, "64 entries, one commit");
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        assert_eq!(log.fsync_count(), before + 3);
        // An empty append touches nothing.
        log.blocking_append(Vec::<LogEntry>::new()).await.unwrap();
        assert_eq!(log.fsync_count(), before + 3);
    });
}

/// A leader state machine with three payloads and a membership applied.
async fn leader_sm(dir: &TempDir) -> StateMachineStore<MapFsm> {
    let mut sm = StateMachineStore::open(&dir.snapshot_dir(), MapFsm::default()).unwrap();
    apply(
        &mut sm,
        vec![
            normal(1, 1, b"a"),
            LogEntry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership(&[1, 2, 3])) },
            normal(1, 3, b"b"),
            normal(2, 4, b"refuse"),
            LogEntry { log_id: log_id(2, 5), payload: EntryPayload::Blank },
        ],
    )
    .await;
    sm
}

fn expected_fsm() -> MapFsm {
    MapFsm { payloads: BTreeMap::from([(1, b"a".to_vec()), (3, b"b".to_vec())]), index: 5 }
}

#[test]
fn snapshot_survives_restart_and_old_files_are_pruned() {
    let dir = TempDir::new("restart");
    block_on(async {
        let mut sm = leader_sm(&dir).await;
        assert_eq!(sm.fsm(), &expected_fsm());
        for _ in 0..3 {
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        }
        let files = std::fs::read_dir(dir.snapshot_dir()).unwrap().count();
        assert_eq!(files, 2, "only the newest two snapshot files are kept");
    });
    // A crash mid-write leaves a temp file; open removes it.
    std::fs::write(dir.snapshot_dir().join("x.snap.tmp"), b"partial").unwrap();
    block_on(async {
        let mut sm = StateMachineStore::open(&dir.snapshot_dir(), MapFsm::default()).unwrap();
        assert_eq!(sm.fsm(), &expected_fsm());
        let (applied, stored) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2, 5)));
        assert_eq!(stored, StoredMembership::new(Some(log_id(1, 2)), membership(&[1, 2, 3])));
        assert!(!dir.snapshot_dir().join("x.snap.tmp").exists());
    });
}

#[test]
fn corrupt_snapshot_is_refused_and_state_kept() {
    let leader_dir = TempDir::new("snap-leader");
    let follower_dir = TempDir::new("snap-follower");
    block_on(async {
        let mut leader = leader_sm(&leader_dir).await;
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let meta = snapshot.meta.clone();

        let mut follower = StateMachineStore::open(&follower_dir.snapshot_dir(), MapFsm::default()).unwrap();
        apply(&mut follower, vec![normal(1, 1, b"a")]).await;
        let before = follower.applied_state().await.unwrap();

        // Flip one byte of the body in a copy, as a bad transfer would.
        let mut bytes = std::fs::read(snapshot.snapshot.path()).unwrap();
        let at = bytes.len() - 30;
        bytes[at] ^= 0x01;
        let corrupt_path = leader_dir.0.join("received.snap.part");
        std::fs::write(&corrupt_path, &bytes).unwrap();
        let corrupt = caravan_net::raft::SnapshotFile::open(&corrupt_path).unwrap();
        let err = follower.install_snapshot(&meta, corrupt).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert_eq!(follower.applied_state().await.unwrap(), before);
        assert_eq!(follower.fsm().payloads.len(), 1);
        assert!(follower.get_current_snapshot().await.unwrap().is_none(), "nothing kept from the bad file");

        // A whole file whose meta is not the one announced is refused too.
        let mut other_meta = meta.clone();
        other_meta.last_log_id = Some(log_id(9, 9));
        let whole = caravan_net::raft::SnapshotFile::open(snapshot.snapshot.path()).unwrap();
        assert!(follower.install_snapshot(&other_meta, whole).await.is_err());
        assert_eq!(follower.applied_state().await.unwrap(), before);

        // The good file installs.
        let whole = caravan_net::raft::SnapshotFile::open(snapshot.snapshot.path()).unwrap();
        follower.install_snapshot(&meta, whole).await.unwrap();
        assert_eq!(follower.fsm(), &expected_fsm());
        assert_eq!(follower.applied_state().await.unwrap().0, Some(log_id(2, 5)));

        // A corrupt newest file on the leader is skipped: the current
        // snapshot is the older valid one.
        apply(&mut leader, vec![normal(3, 6, b"c")]).await;
        let newer = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let mut bytes = std::fs::read(newer.snapshot.path()).unwrap();
        bytes[20] ^= 0x10;
        std::fs::write(newer.snapshot.path(), &bytes).unwrap();
        let current = leader.get_current_snapshot().await.unwrap().expect("older snapshot");
        assert_eq!(current.meta, meta);
    });
}

#[test]
fn apply_replies_and_membership() {
    let dir = TempDir::new("apply");
    block_on(async {
        let mut sm = leader_sm(&dir).await;
        let (applied, stored) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2, 5)));
        assert_eq!(stored.log_id(), &Some(log_id(1, 2)));
        // The refused payload changed nothing but the index.
        assert!(!sm.fsm().payloads.contains_key(&4));
    });
}
