//! Snapshot files: one file per snapshot in the snapshot directory
//! (`data_dir/raft/snapshots/`), in Caravan's own self-checking format.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "CRVNSNAP" | version u32 | header_len u32 | header | body ...
//! | body_len u64 | crc32 u32 | magic "CRVNSEND"
//! ```
//!
//! The header holds openraft's `SnapshotMeta` (last log id, last
//! membership) and our snapshot id; the body is whatever the FSM's writer
//! streamed. The crc covers every byte before it, header and `body_len`
//! included, so one pass over the file tells whether it is whole.
//!
//! A file is written under a `.tmp` name, fsynced, renamed to its final
//! name, and the directory fsynced: a crash leaves either no snapshot or a
//! complete one (temp files are removed on open). Final names are
//! `{last index + 1:020}-{seq:010}.snap` (0 for a snapshot of nothing), so
//! sorting names sorts snapshots by how much log they cover, then by age.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use openraft::StoredMembership;
use openraft::type_config::alias::SnapshotMetaOf;

use super::entry_codec::{CodecError, LogId, Reader, put_bytes, put_membership, put_option_log_id};
use super::types::TypeConfig;

/// openraft's description of a snapshot for Caravan's type configuration.
pub type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// Streams a snapshot of the state into a writer; runs on another thread.
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

const MAGIC: [u8; 8] = *b"CRVNSNAP";
const TRAILER_MAGIC: [u8; 8] = *b"CRVNSEND";
/// Bumped when the layout changes; files of an unknown version are refused.
const FORMAT_VERSION: u32 = 1;
/// magic + version + header_len.
const PREAMBLE_BYTES: u64 = 16;
/// body_len + crc + trailer magic.
const TRAILER_BYTES: u64 = 20;
/// Largest header accepted: the meta holds one membership of at most
/// `MEMBERSHIP_NODES_MAX` nodes of three bounded strings (~12 MiB worst
/// case); 16 MiB covers it and stops a corrupt length from allocating more.
const HEADER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest snapshot id: ids are `term-node-index-seq`, under 100 bytes.
const SNAPSHOT_ID_BYTES_MAX: usize = 256;
/// Read and write buffer for streaming a snapshot: large enough that a
/// multi-GiB state streams in few syscalls, small enough to not matter.
const STREAM_BUFFER_BYTES: usize = 256 * 1024;
/// Snapshot files kept in the directory: the newest, plus the one before
/// it so a follower still streaming the previous snapshot keeps its file.
pub const SNAPSHOTS_KEPT: usize = 2;
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";

/// Why a snapshot file could not be written, read or accepted.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{context} {path}: {source}")]
    Io { context: &'static str, path: String, source: io::Error },
    #[error("{path}: {len} bytes is too short to be a snapshot")]
    TooShort { path: String, len: u64 },
    #[error("{path}: not a Caravan snapshot (bad magic)")]
    BadMagic { path: String },
    #[error("{path}: unknown snapshot format version {version}")]
    Version { path: String, version: u32 },
    #[error("{path}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): corrupt or incomplete")]
    Checksum { path: String, stored: u32, computed: u32 },
    #[error("{path}: header of {len} bytes is over the bound of {max}")]
    HeaderTooLarge { path: String, len: usize, max: usize },
    #[error("{path}: lengths do not add up (header {header_len}, body {body_len}, file {file_len})")]
    Length { path: String, header_len: u64, body_len: u64, file_len: u64 },
    #[error("{path}: header: {source}")]
    Header { path: String, source: CodecError },
    #[error("{path}: snapshot meta {found} does not match the expected {expected}")]
    MetaMismatch { path: String, found: String, expected: String },
    #[error("snapshot worker thread failed: {0}")]
    Worker(String),
    #[error("the snapshot builder was already used")]
    BuilderUsed,
}

impl From<SnapshotError> for io::Error {
    fn from(err: SnapshotError) -> io::Error {
        let kind = match &err {
            SnapshotError::Io { source, .. } => source.kind(),
            SnapshotError::Worker(_) | SnapshotError::BuilderUsed => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + use<> {
    let path = path.display().to_string();
    move |source| SnapshotError::Io { context, path, source }
}

/// A snapshot file handle: openraft's `SnapshotData`. It is the whole file
/// in the format above (so a follower receiving it in chunks rebuilds the
/// same bytes and verifies them on install); the network layer streams it
/// with [`SnapshotFile::file_mut`] or [`SnapshotFile::into_file`].
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: File,
}

impl SnapshotFile {
    /// Opens `path` for reading, without verifying it (install does).
    pub fn open(path: &Path) -> Result<SnapshotFile, SnapshotError> {
        let file = File::open(path).map_err(io_err("opening snapshot", path))?;
        Ok(SnapshotFile { path: path.to_path_buf(), file })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, to stream it in chunks.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// The open file.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// What verifying a snapshot file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSnapshot {
    pub meta: SnapshotMeta,
    pub snapshot_id: String,
    /// Byte offset where the FSM body starts.
    pub body_offset: u64,
    pub body_len: u64,
}

impl VerifiedSnapshot {
    /// The raft index the snapshot reflects, 0 for a snapshot of nothing.
    pub fn index(&self) -> u64 {
        self.meta.last_log_id.as_ref().map_or(0, |id| id.index)
    }
}

fn encode_header(meta: &SnapshotMeta, snapshot_id: &str) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    put_option_log_id(&mut out, meta.last_log_id.as_ref());
    put_option_log_id(&mut out, meta.last_membership.log_id().as_ref());
    put_membership(&mut out, meta.last_membership.membership())?;
    put_bytes(&mut out, "snapshot id", snapshot_id.as_bytes(), SNAPSHOT_ID_BYTES_MAX)?;
    Ok(out)
}

fn decode_header(bytes: &[u8]) -> Result<(SnapshotMeta, String), CodecError> {
    let mut reader = Reader::new(bytes);
    let last_log_id = reader.option_log_id()?;
    let membership_log_id = reader.option_log_id()?;
    let membership = reader.membership()?;
    let snapshot_id = reader.string("snapshot id", SNAPSHOT_ID_BYTES_MAX)?;
    reader.finish()?;
    let meta = SnapshotMeta { last_log_id, last_membership: StoredMembership::new(membership_log_id, membership) };
    Ok((meta, snapshot_id))
}

/// A writer that counts and checksums what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The final file name of a snapshot.
pub(crate) fn snapshot_file_name(last_log_id: Option<&LogId>, seq: u64) -> String {
    let index_key = last_log_id.map_or(0, |id| id.index.saturating_add(1));
    format!("{index_key:020}-{seq:010}{SNAPSHOT_SUFFIX}")
}

/// Parses `(index key, seq)` back out of a final snapshot name.
fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (index_key, seq) = stem.split_once('-')?;
    Some((index_key.parse().ok()?, seq.parse().ok()?))
}

/// Writes a snapshot: temp file, header, the FSM's body, trailer, fsync,
/// rename, directory fsync. Blocking; runs on a worker thread.
pub(crate) fn write_snapshot(
    dir: &Path,
    file_name: &str,
    meta: &SnapshotMeta,
    snapshot_id: &str,
    body: SnapshotWriter,
) -> Result<PathBuf, SnapshotError> {
    let final_path = dir.join(file_name);
    let temp_path = dir.join(format!("{file_name}{TEMP_SUFFIX}"));
    let header = encode_header(meta, snapshot_id)
        .map_err(|source| SnapshotError::Header { path: final_path.display().to_string(), source })?;
    let header_len = u32::try_from(header.len()).ok().filter(|len| (*len as usize) <= HEADER_BYTES_MAX).ok_or(
        SnapshotError::HeaderTooLarge {
            path: final_path.display().to_string(),
            len: header.len(),
            max: HEADER_BYTES_MAX,
        },
    )?;
    let result = (|| {
        let file = File::create(&temp_path).map_err(io_err("creating snapshot", &temp_path))?;
        let mut out = HashingWriter {
            inner: BufWriter::with_capacity(STREAM_BUFFER_BYTES, file),
            hasher: crc32fast::Hasher::new(),
            written: 0,
        };
        let write_err = io_err("writing snapshot", &temp_path);
        let preamble_and_header = (|| {
            out.write_all(&MAGIC)?;
            out.write_all(&FORMAT_VERSION.to_le_bytes())?;
            out.write_all(&header_len.to_le_bytes())?;
            out.write_all(&header)
        })();
        preamble_and_header.map_err(write_err)?;
        let body_start = out.written;
        body(&mut out).map_err(io_err("streaming the state into snapshot", &temp_path))?;
        let body_len = out.written - body_start;
        out.write_all(&body_len.to_le_bytes()).map_err(io_err("writing snapshot", &temp_path))?;
        let crc = out.hasher.clone().finalize();
        let mut file = out.inner.into_inner().map_err(|err| SnapshotError::Io {
            context: "flushing snapshot",
            path: temp_path.display().to_string(),
            source: err.into_error(),
        })?;
        file.write_all(&crc.to_le_bytes()).map_err(io_err("writing snapshot", &temp_path))?;
        file.write_all(&TRAILER_MAGIC).map_err(io_err("writing snapshot", &temp_path))?;
        file.sync_all().map_err(io_err("syncing snapshot", &temp_path))?;
        Ok(())
    })();
    if let Err(err) = result {
        // Best effort: a leftover temp file is also removed on next open.
        let _ = fs::remove_file(&temp_path);
        return Err(err);
    }
    publish(dir, &temp_path, &final_path)?;
    Ok(final_path)
}

/// Renames a complete, synced temp file to its final name and syncs the
/// directory so the rename itself survives a crash.
fn publish(dir: &Path, temp_path: &Path, final_path: &Path) -> Result<(), SnapshotError> {
    fs::rename(temp_path, final_path).map_err(io_err("renaming snapshot", final_path))?;
    File::open(dir).and_then(|dir_file| dir_file.sync_all()).map_err(io_err("syncing snapshot directory", dir))
}

/// Reads and checks a whole snapshot file: trailer, checksum over every
/// byte, preamble, header, and that the lengths add up.
pub fn verify_snapshot(file: &mut File, path: &Path) -> Result<VerifiedSnapshot, SnapshotError> {
    let path_text = || path.display().to_string();
    let read_err = io_err("reading snapshot", path);
    let file_len = file.metadata().map_err(io_err("reading snapshot", path))?.len();
    if file_len < PREAMBLE_BYTES + TRAILER_BYTES {
        return Err(SnapshotError::TooShort { path: path_text(), len: file_len });
    }
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    file.seek(SeekFrom::Start(file_len - TRAILER_BYTES))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(io_err("reading snapshot", path))?;
    let (body_len_bytes, rest) = trailer.split_at(8);
    let (crc_bytes, magic) = rest.split_at(4);
    if magic != TRAILER_MAGIC {
        return Err(SnapshotError::BadMagic { path: path_text() });
    }
    let body_len = u64::from_le_bytes(body_len_bytes.try_into().unwrap_or([0; 8]));
    let stored = u32::from_le_bytes(crc_bytes.try_into().unwrap_or([0; 4]));

    // The checksum first: nothing else in the file is trusted before it.
    file.seek(SeekFrom::Start(0)).map_err(io_err("reading snapshot", path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut covered = BufReader::with_capacity(STREAM_BUFFER_BYTES, &mut *file).take(file_len - 12);
    let mut buffer = vec![0u8; STREAM_BUFFER_BYTES];
    loop {
        let n = covered.read(&mut buffer).map_err(io_err("reading snapshot", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let computed = hasher.finalize();
    if stored != computed {
        return Err(SnapshotError::Checksum { path: path_text(), stored, computed });
    }

    let mut preamble = [0u8; PREAMBLE_BYTES as usize];
    file.seek(SeekFrom::Start(0)).and_then(|_| file.read_exact(&mut preamble)).map_err(read_err)?;
    if preamble[..8] != MAGIC {
        return Err(SnapshotError::BadMagic { path: path_text() });
    }
    let version = u32::from_le_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { path: path_text(), version });
    }
    let header_len = u32::from_le_bytes([preamble[12], preamble[13], preamble[14], preamble[15]]) as usize;
    if header_len > HEADER_BYTES_MAX {
        return Err(SnapshotError::HeaderTooLarge { path: path_text(), len: header_len, max: HEADER_BYTES_MAX });
    }
    let expected_len = PREAMBLE_BYTES
        .checked_add(header_len as u64)
        .and_then(|n| n.checked_add(body_len))
        .and_then(|n| n.checked_add(TRAILER_BYTES));
    if expected_len != Some(file_len) {
        return Err(SnapshotError::Length { path: path_text(), header_len: header_len as u64, body_len, file_len });
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).map_err(io_err("reading snapshot", path))?;
    let (meta, snapshot_id) =
        decode_header(&header).map_err(|source| SnapshotError::Header { path: path_text(), source })?;
    Ok(VerifiedSnapshot { meta, snapshot_id, body_offset: PREAMBLE_BYTES + header_len as u64, body_len })
}

/// A buffered reader over exactly the FSM body of a verified file.
pub(crate) fn body_reader<'a>(
    file: &'a mut File,
    path: &Path,
    verified: &VerifiedSnapshot,
) -> Result<io::Take<BufReader<&'a mut File>>, SnapshotError> {
    file.seek(SeekFrom::Start(verified.body_offset)).map_err(io_err("reading snapshot", path))?;
    Ok(BufReader::with_capacity(STREAM_BUFFER_BYTES, file).take(verified.body_len))
}

/// Copies a received snapshot into `dir` under `file_name`, verifies the
/// copy and that it describes `expected`, and publishes it. A bad file is
/// removed and refused. Blocking; runs on a worker thread.
pub(crate) fn import_snapshot(
    dir: &Path,
    file_name: &str,
    source: &mut File,
    expected: &SnapshotMeta,
) -> Result<(PathBuf, VerifiedSnapshot), SnapshotError> {
    let final_path = dir.join(file_name);
    let temp_path = dir.join(format!("{file_name}{TEMP_SUFFIX}"));
    let result = (|| {
        source.seek(SeekFrom::Start(0)).map_err(io_err("reading received snapshot", &temp_path))?;
        let mut copy = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)
            .map_err(io_err("creating snapshot", &temp_path))?;
        let mut reader = BufReader::with_capacity(STREAM_BUFFER_BYTES, &mut *source);
        io::copy(&mut reader, &mut copy).map_err(io_err("copying received snapshot", &temp_path))?;
        copy.sync_all().map_err(io_err("syncing snapshot", &temp_path))?;
        let verified = verify_snapshot(&mut copy, &temp_path)?;
        if verified.meta != *expected {
            return Err(SnapshotError::MetaMismatch {
                path: temp_path.display().to_string(),
                found: verified.meta.to_string(),
                expected: expected.to_string(),
            });
        }
        Ok(verified)
    })();
    match result {
        Ok(verified) => {
            publish(dir, &temp_path, &final_path)?;
            Ok((final_path, verified))
        }
        Err(err) => {
            let _ = fs::remove_file(&temp_path);
            Err(err)
        }
    }
}

/// Final snapshot files in `dir`, newest (most log covered, then latest
/// seq) first. Names that do not parse are not ours and are left alone.
pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, SnapshotError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("listing snapshots in", dir))? {
        let item = item.map_err(io_err("listing snapshots in", dir))?;
        let name = item.file_name();
        let Some((index_key, seq)) = name.to_str().and_then(parse_file_name) else { continue };
        found.push((index_key, seq, item.path()));
    }
    found.sort_by_key(|(index_key, seq, _)| std::cmp::Reverse((*index_key, *seq)));
    Ok(found)
}

/// Removes leftover temp files of writes a crash interrupted.
pub(crate) fn remove_temp_files(dir: &Path) -> Result<(), SnapshotError> {
    for item in fs::read_dir(dir).map_err(io_err("listing snapshots in", dir))? {
        let item = item.map_err(io_err("listing snapshots in", dir))?;
        if item.file_name().to_str().is_some_and(|name| name.ends_with(TEMP_SUFFIX)) {
            tracing::info!(path = %item.path().display(), "removing an unfinished snapshot file");
            fs::remove_file(item.path()).map_err(io_err("removing", &item.path()))?;
        }
    }
    Ok(())
}

/// Keeps the newest [`SNAPSHOTS_KEPT`] snapshot files, removes the rest.
pub(crate) fn prune_snapshots(dir: &Path) -> Result<(), SnapshotError> {
    for (_, _, path) in list_snapshots(dir)?.into_iter().skip(SNAPSHOTS_KEPT) {
        fs::remove_file(&path).map_err(io_err("removing old snapshot", &path))?;
    }
    Ok(())
}

/// The highest sequence number used in `dir`, so new files never reuse one.
pub(crate) fn max_seq(dir: &Path) -> Result<u64, SnapshotError> {
    Ok(list_snapshots(dir)?.iter().map(|(_, seq, _)| *seq).max().unwrap_or(0))
}
