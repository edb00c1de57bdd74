//! Full-state snapshots, streamed in bounded, checksummed chunks.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! header  magic "CVNSNAP\0" (8) | version (1) | reserved (3) | raft index (8) | crc32 of the previous 20 bytes (4)
//! chunk*  kind (1) | reserved (3) | payload length (4) | sequence number (4) | crc32 of these 12 bytes + payload (4) | payload
//! ```
//!
//! Chunks come in a fixed order of kinds, the order the engine's
//! `StateBuilder` asks for (see `engine::state::restore`): job histories,
//! node slots (each node's allocation ids in list order), nodes (each pool's
//! nodes in registration order), allocations (in table order, grouped by
//! job, so a chunk's allocations share their `Arc<Job>` archived once),
//! evaluations (table order), each job's eval list, deployments, the
//! scheduler configuration (exactly one), periodic launch records, each job's
//! scaling events, then the trailer: item counts,
//! the table indexes, the number of chunks and a crc32 of every byte before
//! the trailer chunk. A payload is the rkyv archive of a `Vec` of that
//! kind's records.
//!
//! Sequence numbers catch reordered or dropped chunks, chunk checksums catch
//! flipped bits, the trailer catches truncation, and the stream checksum
//! whatever slips past the rest. The writer holds one chunk at a time, never
//! a second copy of the state; the reader holds one chunk plus the node
//! slots' id lists (16 bytes per allocation) until the allocations are in.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use caravan_engine::ids::{AllocId, EvalId, JobKey, NodeId};
use caravan_engine::model::{Allocation, Deployment, Evaluation, Job, JobScalingEvents, Node, PeriodicLaunch};
use caravan_engine::state::{SchedulerConfig, State, StateBuilder, TABLE_COUNT};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::WireError;

/// Marks a Caravan state snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CVNSNAP\0";

/// Bumped whenever the layout or any archived model type changes.
/// 2: `Job::periodic` and the periodic launch records, `Task::lifecycle`.
/// 3: `Task::dispatch_payload_file`.
/// 4: `Allocation::deployment_status`, `Deployment::task_groups`.
/// 5: scaling events (a chunk kind before the trailer, its count in the trailer).
pub const SNAPSHOT_FORMAT_VERSION: u8 = 5;

/// The largest chunk payload written or accepted. The reader allocates a
/// chunk's length before it can check the chunk's checksum, so a corrupted
/// length must not make it allocate gigabytes; 64 MiB is far above what the
/// per-kind item counts below produce (a chunk of allocations is about
/// 1 MiB) and leaves room for jobs with very large specifications.
pub const CHUNK_BYTES_MAX: u64 = 64 << 20;

/// Job histories per chunk: a history holds up to six versions of a job,
/// and a job spec may be tens of KiB, so keep this small.
const JOBS_PER_CHUNK: usize = 64;
/// Nodes per chunk: a node with its attributes, drivers and devices is a
/// few KiB archived.
const NODES_PER_CHUNK: usize = 256;
/// Allocations per chunk. Each chunk archives every job its allocations
/// reference once, so larger chunks repeat jobs less; 1,024 allocations
/// (about 1 MiB) keep the writer's and reader's buffers small while a job
/// with a thousand allocations is written about once.
const ALLOCS_PER_CHUNK: usize = 1024;
/// Allocation ids listed per node-slot chunk (16 bytes each).
const SLOT_IDS_PER_CHUNK: usize = 16 * 1024;
/// Evaluations per chunk (an eval with failure metrics is under 1 KiB).
const EVALS_PER_CHUNK: usize = 1024;
/// Eval ids listed per eval-list chunk (16 bytes each).
const EVAL_IDS_PER_CHUNK: usize = 16 * 1024;
/// Deployments per chunk (small fixed-size records).
const DEPLOYMENTS_PER_CHUNK: usize = 1024;
/// Periodic launch records per chunk (a job key and three integers).
const PERIODIC_LAUNCHES_PER_CHUNK: usize = 4096;
/// Jobs' scaling events per chunk: a job keeps at most 20 events per
/// group, each up to 32 KiB of text, but most are a few hundred bytes.
const SCALING_EVENTS_PER_CHUNK: usize = 256;

const HEADER_LEN: usize = 24;
const CHUNK_HEADER_LEN: usize = 16;

/// Chunk kinds, in the order they must appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Jobs = 1,
    NodeSlots = 2,
    Nodes = 3,
    Allocs = 4,
    Evals = 5,
    EvalLists = 6,
    Deployments = 7,
    SchedulerConfig = 8,
    PeriodicLaunches = 9,
    ScalingEvents = 10,
    Trailer = 11,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        use Kind::*;
        [
            Jobs,
            NodeSlots,
            Nodes,
            Allocs,
            Evals,
            EvalLists,
            Deployments,
            SchedulerConfig,
            PeriodicLaunches,
            ScalingEvents,
            Trailer,
        ]
        .into_iter()
        .find(|k| *k as u8 == byte)
    }
}

/// A job's current record and kept versions, archived together so the
/// current record stays one `Arc` with its version.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct JobRecord {
    key: JobKey,
    current: Option<Arc<Job>>,
    versions: Vec<Arc<Job>>,
}

/// One node slot: the node's allocation ids in list order. Slots outlive
/// their node, so this is not part of the node record.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct NodeSlotRecord {
    node_id: NodeId,
    alloc_ids: Vec<AllocId>,
}

/// One job's eval ids in list order (the evals travel in table order).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EvalListRecord {
    key: JobKey,
    eval_ids: Vec<EvalId>,
}

/// A periodic job's last launch.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct PeriodicLaunchRecord {
    key: JobKey,
    launch: PeriodicLaunch,
}

/// A job's scaling events.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ScalingEventsRecord {
    key: JobKey,
    events: JobScalingEvents,
}

/// Items of each kind in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ItemCounts {
    pub jobs: u64,
    pub job_versions: u64,
    pub nodes: u64,
    pub node_slots: u64,
    pub allocs: u64,
    pub evals: u64,
    pub eval_lists: u64,
    pub deployments: u64,
    pub periodic_launches: u64,
    /// Jobs with scaling events.
    pub scaling_events: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Trailer {
    index: u64,
    table_indexes: [u64; TABLE_COUNT],
    counts: ItemCounts,
    /// Chunks before the trailer.
    chunks: u32,
    /// crc32 of every byte before the trailer chunk.
    stream_crc32: u32,
}

/// What [`write_snapshot`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotStats {
    /// The raft index the snapshot reflects.
    pub index: u64,
    pub bytes: u64,
    /// Chunks, the trailer included.
    pub chunks: u32,
    pub counts: ItemCounts,
}

type Serializer<'a> = HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>;

/// Writes `state` to `out` as a snapshot, one bounded chunk at a time.
pub fn write_snapshot(state: &State, out: &mut impl Write) -> Result<SnapshotStats, WireError> {
    let mut w = ChunkWriter { out, stream: crc32fast::Hasher::new(), bytes: 0, seq: 0 };
    let mut counts = ItemCounts::default();
    w.header(state.index())?;

    let mut batch = Vec::with_capacity(JOBS_PER_CHUNK);
    for history in state.job_histories() {
        counts.jobs += 1;
        counts.job_versions += history.versions.len() as u64;
        batch.push(JobRecord {
            key: history.key.clone(),
            current: history.current.cloned(),
            versions: history.versions.into_iter().cloned().collect(),
        });
        if batch.len() == JOBS_PER_CHUNK {
            w.items(Kind::Jobs, std::mem::take(&mut batch))?;
        }
    }
    w.items(Kind::Jobs, batch)?;

    let mut slots = Vec::new();
    let mut ids_in_batch = 0;
    for (node_id, ids) in state.node_alloc_lists() {
        let alloc_ids: Vec<AllocId> = ids.collect();
        counts.node_slots += 1;
        ids_in_batch += alloc_ids.len().max(1);
        slots.push(NodeSlotRecord { node_id, alloc_ids });
        if ids_in_batch >= SLOT_IDS_PER_CHUNK {
            w.items(Kind::NodeSlots, std::mem::take(&mut slots))?;
            ids_in_batch = 0;
        }
    }
    w.items(Kind::NodeSlots, slots)?;
    expect_count("node slots", counts.node_slots, state.node_slot_count())?;

    counts.nodes = w.all(Kind::Nodes, state.nodes_in_pool_order().cloned(), NODES_PER_CHUNK)?;
    expect_count("nodes", counts.nodes, state.node_count())?;
    counts.allocs = w.all(Kind::Allocs, state.allocs().cloned(), ALLOCS_PER_CHUNK)?;
    expect_count("allocations", counts.allocs, state.alloc_count())?;
    counts.evals = w.all(Kind::Evals, state.evals().cloned(), EVALS_PER_CHUNK)?;

    let mut lists = Vec::new();
    let mut ids_in_batch = 0;
    let mut evals_listed = 0;
    for (key, ids) in state.eval_lists() {
        counts.eval_lists += 1;
        evals_listed += ids.len();
        ids_in_batch += ids.len().max(1);
        lists.push(EvalListRecord { key: key.clone(), eval_ids: ids.to_vec() });
        if ids_in_batch >= EVAL_IDS_PER_CHUNK {
            w.items(Kind::EvalLists, std::mem::take(&mut lists))?;
            ids_in_batch = 0;
        }
    }
    w.items(Kind::EvalLists, lists)?;
    expect_count("evaluations", counts.evals, evals_listed)?;
    counts.deployments = w.all(Kind::Deployments, state.deployments().cloned(), DEPLOYMENTS_PER_CHUNK)?;
    w.items(Kind::SchedulerConfig, vec![state.scheduler_config().clone()])?;
    let launches =
        state.periodic_launches().map(|(key, launch)| PeriodicLaunchRecord { key: key.clone(), launch: *launch });
    counts.periodic_launches = w.all(Kind::PeriodicLaunches, launches, PERIODIC_LAUNCHES_PER_CHUNK)?;
    expect_count("periodic launches", counts.periodic_launches, state.periodic_launch_count())?;
    let scaling = state
        .all_scaling_events()
        .map(|(key, events)| ScalingEventsRecord { key: key.clone(), events: (**events).clone() });
    counts.scaling_events = w.all(Kind::ScalingEvents, scaling, SCALING_EVENTS_PER_CHUNK)?;
    expect_count("jobs' scaling events", counts.scaling_events, state.scaling_events_count())?;

    let trailer = Trailer {
        index: state.index(),
        table_indexes: state.table_indexes(),
        counts,
        chunks: w.seq,
        stream_crc32: w.stream.clone().finalize(),
    };
    let payload = archive(&trailer)?;
    w.chunk(Kind::Trailer, &payload)?;
    w.out.flush()?;
    Ok(SnapshotStats { index: state.index(), bytes: w.bytes, chunks: w.seq, counts })
}

/// The state's own counts disagree with what its indexes list: a bug in the
/// state store, which a snapshot must not paper over.
fn expect_count(what: &str, written: u64, stored: usize) -> Result<(), WireError> {
    if written == stored as u64 {
        return Ok(());
    }
    Err(WireError::Inconsistent(format!("state holds {stored} {what} but its indexes list {written}")))
}

struct ChunkWriter<'w, W: Write> {
    out: &'w mut W,
    stream: crc32fast::Hasher,
    bytes: u64,
    seq: u32,
}

impl<W: Write> ChunkWriter<'_, W> {
    fn raw(&mut self, data: &[u8]) -> Result<(), WireError> {
        self.out.write_all(data)?;
        self.stream.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn header(&mut self, index: u64) -> Result<(), WireError> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
        header[8] = SNAPSHOT_FORMAT_VERSION;
        header[12..20].copy_from_slice(&index.to_le_bytes());
        let crc = crc32fast::hash(&header[..20]);
        header[20..].copy_from_slice(&crc.to_le_bytes());
        self.raw(&header)
    }

    fn chunk(&mut self, kind: Kind, payload: &[u8]) -> Result<(), WireError> {
        let len = payload.len() as u64;
        if len > CHUNK_BYTES_MAX {
            return Err(WireError::ChunkTooLarge { len, max: CHUNK_BYTES_MAX });
        }
        let mut header = [0u8; CHUNK_HEADER_LEN];
        header[0] = kind as u8;
        header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[8..12].copy_from_slice(&self.seq.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[..12]);
        crc.update(payload);
        header[12..].copy_from_slice(&crc.finalize().to_le_bytes());
        self.raw(&header)?;
        self.raw(payload)?;
        self.seq = self.seq.checked_add(1).expect("fewer than 2^32 chunks");
        Ok(())
    }

    /// One chunk of `items`, split in halves while it exceeds the chunk
    /// bound (only for unusually large records). Nothing for no items.
    fn items<T>(&mut self, kind: Kind, mut items: Vec<T>) -> Result<(), WireError>
    where
        T: for<'a> rkyv::Serialize<Serializer<'a>>,
    {
        if items.is_empty() {
            return Ok(());
        }
        let payload = archive(&items)?;
        if payload.len() as u64 <= CHUNK_BYTES_MAX || items.len() == 1 {
            return self.chunk(kind, &payload);
        }
        drop(payload);
        let second = items.split_off(items.len() / 2);
        self.items(kind, items)?;
        self.items(kind, second)
    }

    /// Every item of `all` in chunks of `per_chunk`; returns how many.
    fn all<T>(&mut self, kind: Kind, all: impl Iterator<Item = T>, per_chunk: usize) -> Result<u64, WireError>
    where
        T: for<'a> rkyv::Serialize<Serializer<'a>>,
    {
        let mut count = 0;
        let mut batch = Vec::with_capacity(per_chunk);
        for item in all {
            count += 1;
            batch.push(item);
            if batch.len() == per_chunk {
                self.items(kind, std::mem::replace(&mut batch, Vec::with_capacity(per_chunk)))?;
            }
        }
        self.items(kind, batch)?;
        Ok(count)
    }
}

fn archive<T>(value: &T) -> Result<AlignedVec, WireError>
where
    T: for<'a> rkyv::Serialize<Serializer<'a>>,
{
    rkyv::to_bytes::<rancor::Error>(value).map_err(WireError::Encode)
}

fn unarchive<T>(bytes: &[u8]) -> Result<T, WireError>
where
    T: rkyv::Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(bytes).map_err(WireError::Malformed)
}

/// Reads a snapshot written by [`write_snapshot`] and rebuilds the state,
/// refusing anything truncated, reordered, corrupted or left over.
pub fn read_snapshot(input: &mut impl Read) -> Result<State, WireError> {
    let mut r = ChunkReader { input, stream: crc32fast::Hasher::new(), buf: AlignedVec::new(), seq: 0 };
    let index = r.header()?;
    let mut restore = Restore::default();
    let mut last = Kind::Jobs;
    let mut config_seen = false;
    loop {
        let stream_crc32 = r.stream.clone().finalize();
        let (kind, seq) = r.next_chunk()?;
        if kind < last {
            return Err(WireError::OutOfOrder { seq, reason: format!("{kind:?} chunk after {last:?}") });
        }
        if kind > Kind::Allocs && last <= Kind::Allocs {
            restore.allocs_done()?;
        }
        last = kind;
        let payload = r.buf.as_slice();
        match kind {
            Kind::Jobs => restore.jobs(unarchive(payload)?)?,
            Kind::Nodes => restore.nodes(unarchive(payload)?)?,
            Kind::Allocs => restore.allocs(unarchive(payload)?)?,
            Kind::NodeSlots => restore.slots(unarchive(payload)?)?,
            Kind::Evals => restore.evals(unarchive(payload)?)?,
            Kind::EvalLists => restore.eval_lists(unarchive(payload)?)?,
            Kind::Deployments => restore.deployments(unarchive(payload)?)?,
            Kind::SchedulerConfig => {
                if config_seen {
                    return Err(WireError::OutOfOrder { seq, reason: "second scheduler configuration".into() });
                }
                config_seen = true;
                let mut configs: Vec<SchedulerConfig> = unarchive(payload)?;
                match (configs.pop(), configs.is_empty()) {
                    (Some(config), true) => restore.builder.set_scheduler_config(config),
                    _ => return Err(WireError::Inconsistent("expected one scheduler configuration".into())),
                }
            }
            Kind::PeriodicLaunches => {
                let records: Vec<PeriodicLaunchRecord> = unarchive(payload)?;
                for record in records {
                    restore.counts.periodic_launches += 1;
                    restore.builder.put_periodic_launch(record.key, record.launch)?;
                }
            }
            Kind::ScalingEvents => {
                let records: Vec<ScalingEventsRecord> = unarchive(payload)?;
                for record in records {
                    restore.counts.scaling_events += 1;
                    restore.builder.put_scaling_events(record.key, Arc::new(record.events))?;
                }
            }
            Kind::Trailer => {
                if !config_seen {
                    return Err(WireError::Truncated("no scheduler configuration before the trailer"));
                }
                let trailer: Trailer = unarchive(payload)?;
                check_trailer(&trailer, index, seq, stream_crc32, &restore.counts)?;
                r.expect_end()?;
                return Ok(restore.builder.finish(index, trailer.table_indexes));
            }
        }
    }
}

fn check_trailer(
    trailer: &Trailer,
    index: u64,
    seq: u32,
    stream_crc32: u32,
    counts: &ItemCounts,
) -> Result<(), WireError> {
    if trailer.index != index {
        return Err(WireError::TrailerMismatch(format!(
            "index {} in the header, {} in the trailer",
            index, trailer.index
        )));
    }
    if trailer.chunks != seq {
        return Err(WireError::TrailerMismatch(format!("{seq} chunks read, trailer says {}", trailer.chunks)));
    }
    if trailer.stream_crc32 != stream_crc32 {
        return Err(WireError::TrailerMismatch("stream checksum differs".into()));
    }
    if trailer.counts != *counts {
        return Err(WireError::TrailerMismatch(format!("read {counts:?}, trailer says {:?}", trailer.counts)));
    }
    Ok(())
}

/// The reader's side of a restore: the engine's builder plus what must wait
/// for a later chunk.
#[derive(Default)]
struct Restore {
    builder: StateBuilder,
    counts: ItemCounts,
    /// Each node's allocation list, applied once the allocations are in.
    slot_orders: Vec<NodeSlotRecord>,
}

impl Restore {
    fn jobs(&mut self, records: Vec<JobRecord>) -> Result<(), WireError> {
        for record in records {
            self.counts.jobs += 1;
            self.counts.job_versions += record.versions.len() as u64;
            self.builder.put_job_history(&record.key, record.current, record.versions)?;
        }
        Ok(())
    }

    fn nodes(&mut self, nodes: Vec<Arc<Node>>) -> Result<(), WireError> {
        for node in nodes {
            self.counts.nodes += 1;
            self.builder.put_node(node)?;
        }
        Ok(())
    }

    fn slots(&mut self, slots: Vec<NodeSlotRecord>) -> Result<(), WireError> {
        for slot in slots {
            self.counts.node_slots += 1;
            self.builder.put_node_slot(slot.node_id);
            self.slot_orders.push(slot);
        }
        Ok(())
    }

    fn allocs(&mut self, allocs: Vec<Arc<Allocation>>) -> Result<(), WireError> {
        // A chunk shares each job among its allocations; across chunks, and
        // with the kept job versions, sharing is restored by value here:
        // one lookup per distinct job of the chunk.
        let mut shared: HashMap<*const Job, Arc<Job>> = HashMap::new();
        for mut alloc in allocs {
            self.counts.allocs += 1;
            let job = shared
                .entry(Arc::as_ptr(&alloc.job))
                .or_insert_with(|| self.builder.kept_job_version(&alloc.job).unwrap_or_else(|| alloc.job.clone()))
                .clone();
            if !Arc::ptr_eq(&job, &alloc.job) {
                Arc::make_mut(&mut alloc).job = job;
            }
            self.builder.put_alloc(alloc)?;
        }
        Ok(())
    }

    /// Every allocation is in: put each node's list in its stored order.
    fn allocs_done(&mut self) -> Result<(), WireError> {
        for slot in std::mem::take(&mut self.slot_orders) {
            self.builder.order_node_allocs(slot.node_id, &slot.alloc_ids)?;
        }
        Ok(())
    }

    fn evals(&mut self, evals: Vec<Arc<Evaluation>>) -> Result<(), WireError> {
        for eval in evals {
            self.counts.evals += 1;
            self.builder.put_eval(eval)?;
        }
        Ok(())
    }

    fn eval_lists(&mut self, lists: Vec<EvalListRecord>) -> Result<(), WireError> {
        for list in lists {
            self.counts.eval_lists += 1;
            self.builder.order_job_evals(&list.key, &list.eval_ids)?;
        }
        Ok(())
    }

    fn deployments(&mut self, deployments: Vec<Arc<Deployment>>) -> Result<(), WireError> {
        for deployment in deployments {
            self.counts.deployments += 1;
            self.builder.put_deployment(deployment)?;
        }
        Ok(())
    }
}

struct ChunkReader<'r, R: Read> {
    input: &'r mut R,
    stream: crc32fast::Hasher,
    /// The current chunk's payload, aligned for rkyv; reused across chunks.
    buf: AlignedVec,
    seq: u32,
}

impl<R: Read> ChunkReader<'_, R> {
    fn exact(&mut self, into: &mut [u8], what: &'static str) -> Result<(), WireError> {
        match self.input.read_exact(into) {
            Ok(()) => {
                self.stream.update(into);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(WireError::Truncated(what)),
            Err(e) => Err(WireError::Io(e)),
        }
    }

    fn header(&mut self) -> Result<u64, WireError> {
        const WHAT: &str = "snapshot";
        let mut header = [0u8; HEADER_LEN];
        self.exact(&mut header, "in the header")?;
        if header[..8] != SNAPSHOT_MAGIC {
            return Err(WireError::BadMagic { what: WHAT, found: header[..8].to_vec() });
        }
        if crc32fast::hash(&header[..20]).to_le_bytes() != header[20..] {
            return Err(WireError::HeaderChecksum);
        }
        if header[8] != SNAPSHOT_FORMAT_VERSION {
            return Err(WireError::UnsupportedVersion {
                what: WHAT,
                found: header[8],
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        Ok(u64::from_le_bytes(header[12..20].try_into().expect("8 bytes")))
    }

    /// Reads the next chunk into `buf` after checking its header and checksum.
    fn next_chunk(&mut self) -> Result<(Kind, u32), WireError> {
        let mut header = [0u8; CHUNK_HEADER_LEN];
        self.exact(&mut header, "before the trailer")?;
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let (len, seq, crc) = (word(4), word(8), word(12));
        // Bound the length before allocating for it: the checksum can only
        // be checked once the payload is in.
        if u64::from(len) > CHUNK_BYTES_MAX {
            return Err(WireError::ChunkTooLarge { len: u64::from(len), max: CHUNK_BYTES_MAX });
        }
        self.buf.clear();
        self.buf.resize(len as usize, 0);
        let mut payload = std::mem::take(&mut self.buf);
        let read = self.exact(payload.as_mut_slice(), "inside a chunk");
        self.buf = payload;
        read?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[..12]);
        hasher.update(&self.buf);
        if hasher.finalize() != crc {
            return Err(WireError::ChunkChecksum { seq: self.seq });
        }
        if seq != self.seq {
            return Err(WireError::OutOfOrder {
                seq: self.seq,
                reason: format!("chunk carries sequence number {seq}"),
            });
        }
        let kind = Kind::from_byte(header[0]).ok_or(WireError::UnknownChunk { seq, kind: header[0] })?;
        self.seq += 1;
        Ok((kind, seq))
    }

    fn expect_end(&mut self) -> Result<(), WireError> {
        let mut byte = [0u8; 1];
        loop {
            match self.input.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(WireError::TrailingBytes),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }
}
