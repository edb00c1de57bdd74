//! The durable raft log: openraft's [`RaftLogStorage`] over one redb file.
//!
//! Layout: table `raft_log` maps a log index to one entry record, table
//! `raft_meta` holds the vote, the committed log id and the last purged
//! log id, each a self-checking record from [`entry_codec`](super::entry_codec).
//!
//! Durability: every write (append, vote, committed, truncate, purge) is one
//! redb write transaction committed with [`Durability::Immediate`], i.e.
//! one fsync; an append batch is one transaction however many entries it
//! holds, and the [`IOFlushed`] callback fires only after that commit has
//! returned. [`LogStoreMetrics::fsync_count`] counts those commits.
//! The one exception is the committed log id: openraft saves it at every
//! commit advance, which made a leader pay two fsyncs per write batch
//! (append, then committed) and capped `caravan-perf engine --raft` at
//! ~410 fsyncs/s. It is written lazily (`Durability::None`, made durable by
//! the next append's commit): a stale committed index after a crash only
//! means openraft re-learns the commit point from the log and the leader,
//! never that an entry is lost, since the entries themselves are durable.
//!
//! Threads (the decision): writes run on compio's blocking pool
//! (`spawn_blocking`), reads run inline. openraft runs single-threaded on
//! one compio thread that also drives the QUIC endpoint, timers and
//! heartbeats; an fsync takes 0.1 to 10 ms depending on the disk, and
//! blocking that thread for it would stall replication to every follower
//! and could delay heartbeats past an election timeout. Handing the
//! transaction to a pool thread costs a few microseconds, noise next to
//! the fsync. Order is kept because each write method awaits its commit
//! before returning, and openraft issues log writes one at a time. Reads
//! touch no disk barrier and mostly hit redb's page cache, so a thread
//! hop would cost more than it saves.
//!
//! Crash recovery: redb itself commits atomically, but the records carry
//! their own crc32 so that a torn or flipped record is still caught. On
//! [`LogStore::open`] every stored record is verified. The first bad record
//! (bad crc, malformed, misplaced, or a gap) after the committed index is a
//! torn tail: it and everything after it is removed, with a warning, and
//! openraft re-replicates what is missing. A bad record at or below the
//! committed index is data raft already counted on, so opening fails with
//! [`LogStoreError::CorruptCommitted`] and needs an operator.

use std::fmt;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::entry_codec::{
    self, CodecError, LogEntry, LogId, Vote, decode_entry, decode_entry_log_id, decode_log_id, decode_vote,
};
use super::types::TypeConfig;

const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const KEY_VOTE: &str = "vote";
/// redb's page cache for the log. redb's default (1 GiB) would keep every
/// entry written since start in memory: a raft log is written once and read
/// back only for followers that lag (recent entries) and at startup, so the
/// cache holds the recent entries (plans are ~0.3 to 1 MB each); the
/// kernel's page cache keeps the file itself.
const LOG_CACHE_BYTES: usize = 16 << 20;
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// Bytes reserved per entry when encoding an append batch, beyond its
/// payload: the record header, kind, length prefix and crc.
const ENTRY_RECORD_OVERHEAD_BYTES: usize = 64;

/// Why the log store failed.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("redb: {0}")]
    Db(#[from] redb::Error),
    #[error("creating the log directory {path}: {source}")]
    CreateDir { path: String, source: io::Error },
    #[error("log record at index {index} is corrupt: {source}")]
    Corrupt { index: u64, source: CodecError },
    #[error("the {key} record is corrupt: {source}")]
    CorruptMeta { key: &'static str, source: CodecError },
    #[error(
        "log record at index {index} is corrupt at or below the committed index {committed} \
         (the log cannot be repaired by truncation): {reason}"
    )]
    CorruptCommitted { index: u64, committed: u64, reason: String },
    #[error("log record keyed {key} holds log index {index}")]
    Misplaced { key: u64, index: u64 },
    #[error("encoding log entry {index}: {source}")]
    Encode { index: u64, source: CodecError },
    #[error("log storage worker thread failed: {0}")]
    Worker(String),
}

impl From<LogStoreError> for io::Error {
    fn from(err: LogStoreError) -> io::Error {
        let kind = match &err {
            LogStoreError::Corrupt { .. }
            | LogStoreError::CorruptMeta { .. }
            | LogStoreError::CorruptCommitted { .. }
            | LogStoreError::Misplaced { .. } => io::ErrorKind::InvalidData,
            LogStoreError::Encode { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

/// Converts any of redb's per-operation errors.
fn db_err<E: Into<redb::Error>>(err: E) -> LogStoreError {
    LogStoreError::Db(err.into())
}

/// Counters of the log store, readable after the store itself was handed
/// to openraft.
#[derive(Debug, Clone, Default)]
pub struct LogStoreMetrics {
    fsyncs: Arc<AtomicU64>,
}

impl LogStoreMetrics {
    /// Durable redb commits (each one fsync) since the store was opened.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

/// openraft's log storage over redb; see the module docs.
pub struct LogStore {
    db: Arc<Database>,
    metrics: LogStoreMetrics,
    /// The last entry stored, `None` when the table is empty. Kept in
    /// memory because only this store writes the table.
    last_log_id: Option<LogId>,
    last_purged_log_id: Option<LogId>,
    committed: Option<LogId>,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("last_log_id", &self.last_log_id)
            .field("last_purged_log_id", &self.last_purged_log_id)
            .field("committed", &self.committed)
            .field("fsyncs", &self.metrics.fsync_count())
            .finish()
    }
}

/// A reader over the same redb file, for openraft's replication tasks; it
/// sees every commit of the store, including those made after it was
/// created.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Database>,
}

impl fmt::Debug for LogReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
    }
}

/// What `open` found in the log: used to build the store and reported by
/// [`LogStore::open_report`] for tests and startup logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Entries verified and kept.
    pub entries_kept: u64,
    /// Entries removed from a corrupt tail.
    pub entries_truncated: u64,
    /// Index of the first corrupt record of the tail, if there was one.
    pub first_corrupt_index: Option<u64>,
}

impl LogStore {
    /// Opens (creating if missing) the log at `path`, verifies every record
    /// and truncates a corrupt tail; see the module docs. Blocking: call
    /// it at startup, before the raft runtime starts.
    pub fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        Self::open_report(path).map(|(store, _)| store)
    }

    /// [`LogStore::open`], also returning what the tail scan found.
    pub fn open_report(path: &Path) -> Result<(LogStore, OpenReport), LogStoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| LogStoreError::CreateDir { path: dir.display().to_string(), source })?;
        }
        let db = Database::builder().set_cache_size(LOG_CACHE_BYTES).create(path).map_err(db_err)?;
        let metrics = LogStoreMetrics::default();
        // Create both tables so read transactions can always open them.
        let mut tx = db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate).map_err(db_err)?;
        tx.open_table(LOG_TABLE).map_err(db_err)?;
        tx.open_table(META_TABLE).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        metrics.fsyncs.fetch_add(1, Ordering::Relaxed);

        let db = Arc::new(db);
        let vote = read_vote(&db)?;
        let committed = read_meta_log_id(&db, KEY_COMMITTED)?;
        let last_purged_log_id = read_meta_log_id(&db, KEY_LAST_PURGED)?;
        let scan = scan_log(&db)?;
        let mut report = OpenReport { entries_kept: scan.entries_valid, ..OpenReport::default() };
        if let Some((index, reason)) = scan.first_bad {
            if let Some(committed) = committed.as_ref().filter(|committed| committed.index >= index) {
                return Err(LogStoreError::CorruptCommitted { index, committed: committed.index, reason });
            }
            let removed = truncate_from(&db, index)?;
            metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                index,
                removed,
                %reason,
                "raft log: corrupt tail record (torn write); truncated it and every later entry"
            );
            report.entries_truncated = removed;
            report.first_corrupt_index = Some(index);
        }
        tracing::debug!(?vote, ?committed, ?last_purged_log_id, last = ?scan.last_valid, "raft log opened");
        let store = LogStore { db, metrics, last_log_id: scan.last_valid, last_purged_log_id, committed };
        Ok((store, report))
    }

    /// The store's counters (shared, so they stay readable after the store
    /// is moved into openraft).
    pub fn metrics(&self) -> LogStoreMetrics {
        self.metrics.clone()
    }

    /// Durable commits so far; see [`LogStoreMetrics::fsync_count`].
    pub fn fsync_count(&self) -> u64 {
        self.metrics.fsync_count()
    }

    fn reader(&self) -> LogReader {
        LogReader { db: Arc::clone(&self.db) }
    }

    /// Runs one durable write transaction on compio's blocking pool (see
    /// the module docs for why) and counts its fsync.
    async fn write<T, W>(&self, work: W) -> Result<T, LogStoreError>
    where
        T: Send + 'static,
        W: FnOnce(&redb::WriteTransaction) -> Result<T, LogStoreError> + Send + 'static,
    {
        self.write_with(Durability::Immediate, work).await
    }

    async fn write_with<T, W>(&self, durability: Durability, work: W) -> Result<T, LogStoreError>
    where
        T: Send + 'static,
        W: FnOnce(&redb::WriteTransaction) -> Result<T, LogStoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let fsyncs = Arc::clone(&self.metrics.fsyncs);
        let job = move || {
            let mut tx = db.begin_write().map_err(db_err)?;
            let synced = matches!(durability, Durability::Immediate);
            tx.set_durability(durability).map_err(db_err)?;
            let value = work(&tx)?;
            tx.commit().map_err(db_err)?;
            if synced {
                fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(value)
        };
        compio::runtime::spawn_blocking(job).await.map_err(|err| LogStoreError::Worker(format!("{err:?}")))?
    }
}

/// Result of verifying every stored record in index order.
#[derive(Debug)]
struct Scan {
    entries_valid: u64,
    last_valid: Option<LogId>,
    first_bad: Option<(u64, String)>,
}

fn scan_log(db: &Database) -> Result<Scan, LogStoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let table = tx.open_table(LOG_TABLE).map_err(db_err)?;
    let mut scan = Scan { entries_valid: 0, last_valid: None, first_bad: None };
    for item in table.iter().map_err(db_err)? {
        let (key, value) = item.map_err(db_err)?;
        let key = key.value();
        let verdict = match decode_entry_log_id(value.value()) {
            Err(err) => Err(err.to_string()),
            Ok(log_id) if log_id.index != key => Err(format!("keyed {key} but holds index {}", log_id.index)),
            Ok(_) if scan.last_valid.as_ref().is_some_and(|last| last.index + 1 != key) => {
                Err(format!("gap: index {key} follows {:?}", scan.last_valid.as_ref().map(|last| last.index)))
            }
            Ok(log_id) => Ok(log_id),
        };
        match verdict {
            Ok(log_id) => {
                scan.entries_valid += 1;
                scan.last_valid = Some(log_id);
            }
            Err(reason) => {
                scan.first_bad = Some((key, reason));
                break;
            }
        }
    }
    Ok(scan)
}

/// Removes every entry at or after `index`, durably; returns how many.
fn truncate_from(db: &Database, index: u64) -> Result<u64, LogStoreError> {
    let mut tx = db.begin_write().map_err(db_err)?;
    tx.set_durability(Durability::Immediate).map_err(db_err)?;
    let removed = {
        let mut table = tx.open_table(LOG_TABLE).map_err(db_err)?;
        let mut removed = 0u64;
        table
            .retain_in(index.., |_, _| {
                removed += 1;
                false
            })
            .map_err(db_err)?;
        removed
    };
    tx.commit().map_err(db_err)?;
    Ok(removed)
}

fn read_meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>, LogStoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let table = tx.open_table(META_TABLE).map_err(db_err)?;
    Ok(table.get(key).map_err(db_err)?.map(|value| value.value().to_vec()))
}

fn read_vote(db: &Database) -> Result<Option<Vote>, LogStoreError> {
    read_meta(db, KEY_VOTE)?
        .map(|record| decode_vote(&record).map_err(|source| LogStoreError::CorruptMeta { key: KEY_VOTE, source }))
        .transpose()
}

fn read_meta_log_id(db: &Database, key: &'static str) -> Result<Option<LogId>, LogStoreError> {
    read_meta(db, key)?
        .map(|record| decode_log_id(&record).map_err(|source| LogStoreError::CorruptMeta { key, source }))
        .transpose()
}

/// The last entry's log id, read inside a write transaction after it
/// changed the table.
fn last_log_id_in(tx: &redb::WriteTransaction) -> Result<Option<LogId>, LogStoreError> {
    let table = tx.open_table(LOG_TABLE).map_err(db_err)?;
    let last = table.last().map_err(db_err)?;
    last.map(|(key, value)| {
        decode_entry_log_id(value.value()).map_err(|source| LogStoreError::Corrupt { index: key.value(), source })
    })
    .transpose()
}

impl LogReader {
    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<LogEntry>, LogStoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(LOG_TABLE).map_err(db_err)?;
        let mut entries = Vec::new();
        for item in table.range::<u64>(range).map_err(db_err)? {
            let (key, value) = item.map_err(db_err)?;
            let key = key.value();
            let entry = decode_entry(value.value()).map_err(|source| LogStoreError::Corrupt { index: key, source })?;
            if entry.log_id.index != key {
                return Err(LogStoreError::Misplaced { key, index: entry.log_id.index });
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, io::Error> {
        Ok(self.entries(bounds(&range))?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_vote(&self.db)?)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, io::Error> {
        Ok(self.reader().entries(bounds(&range))?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_vote(&self.db)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.last_purged_log_id;
        // With every entry purged, the last log id is the last purged one.
        let last_log_id = self.last_log_id.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let record = entry_codec::encode_vote(vote);
        self.write(move |tx| {
            let mut table = tx.open_table(META_TABLE).map_err(db_err)?;
            table.insert(KEY_VOTE, record.as_slice()).map_err(db_err)?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let record = committed.as_ref().map(entry_codec::encode_log_id);
        // Lazy: made durable by the next append (see the module docs).
        self.write_with(Durability::None, move |tx| {
            let mut table = tx.open_table(META_TABLE).map_err(db_err)?;
            match record {
                Some(record) => table.insert(KEY_COMMITTED, record.as_slice()).map_err(db_err)?,
                None => table.remove(KEY_COMMITTED).map_err(db_err)?,
            };
            Ok(())
        })
        .await?;
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encode on this thread into one buffer (the entries need not be
        // Send), then ship bytes and offsets to the writer.
        let mut buffer = Vec::new();
        let mut spans: Vec<(u64, usize, usize)> = Vec::new();
        let mut last = None;
        for entry in entries {
            let index = entry.log_id.index;
            if let openraft::EntryPayload::Normal(payload) = &entry.payload {
                buffer.reserve(payload.bytes.len() + ENTRY_RECORD_OVERHEAD_BYTES);
            }
            let start = buffer.len();
            entry_codec::encode_entry(&entry, &mut buffer).map_err(|source| LogStoreError::Encode { index, source })?;
            spans.push((index, start, buffer.len()));
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        self.write(move |tx| {
            let mut table = tx.open_table(LOG_TABLE).map_err(db_err)?;
            for (index, start, end) in spans {
                table.insert(index, &buffer[start..end]).map_err(db_err)?;
            }
            Ok(())
        })
        .await?;
        self.last_log_id = Some(last);
        // Only now, after the durable commit, may openraft count the
        // entries as flushed (and a follower acknowledge them).
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.as_ref().map_or(0, |last| last.index + 1);
        let new_last = self
            .write(move |tx| {
                {
                    let mut table = tx.open_table(LOG_TABLE).map_err(db_err)?;
                    table.retain_in(first_removed.., |_, _| false).map_err(db_err)?;
                }
                last_log_id_in(tx)
            })
            .await?;
        self.last_log_id = new_last;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge point never moves back: a stale purge request is a no-op.
        if self.last_purged_log_id.as_ref().is_some_and(|purged| purged.index >= log_id.index) {
            return Ok(());
        }
        let record = entry_codec::encode_log_id(&log_id);
        let last_index = log_id.index;
        let new_last = self
            .write(move |tx| {
                {
                    let mut meta = tx.open_table(META_TABLE).map_err(db_err)?;
                    meta.insert(KEY_LAST_PURGED, record.as_slice()).map_err(db_err)?;
                    let mut table = tx.open_table(LOG_TABLE).map_err(db_err)?;
                    table.retain_in(..=last_index, |_, _| false).map_err(db_err)?;
                }
                last_log_id_in(tx)
            })
            .await?;
        self.last_purged_log_id = Some(log_id);
        self.last_log_id = new_last;
        Ok(())
    }
}
