//! Task logs with rotation: `<log_dir>/<task>.stdout.N` and `.stderr.N`, as
//! Nomad names them. A [`RotatingWriter`] appends to the file with the highest
//! index, starts the next one when a file would pass `max_file_size_mb`, and
//! deletes the oldest beyond `max_files`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Nomad's `logs { max_files = 10 }` default.
pub const LOG_MAX_FILES_DEFAULT: u32 = 10;
/// Nomad's `logs { max_file_size = 10 }` default, in MB.
pub const LOG_MAX_FILE_SIZE_MB_DEFAULT: u64 = 10;
/// Bytes per MB in `max_file_size` (Nomad counts MiB).
const BYTES_PER_MB: u64 = 1024 * 1024;
/// Read buffer of a log pump: one pipe's worth (Linux pipes hold 64 KiB).
const PUMP_BUFFER_BYTES: usize = 64 * 1024;

/// A task's `logs { }` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    pub max_files: u32,
    pub max_file_size_mb: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { max_files: LOG_MAX_FILES_DEFAULT, max_file_size_mb: LOG_MAX_FILE_SIZE_MB_DEFAULT }
    }
}

/// Which stream of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Appends to `<dir>/<task>.<stream>.N`, rotating by size.
#[derive(Debug)]
pub struct RotatingWriter {
    dir: PathBuf,
    /// `<task>.<stream>`; files are `<prefix>.N`.
    prefix: String,
    config: LogConfig,
    index: u64,
    file: File,
    size_bytes: u64,
}

impl RotatingWriter {
    /// Opens the newest file of the stream, so a writer started after an
    /// agent restart continues where the last one stopped.
    pub fn open(dir: &Path, task: &str, stream: LogStream, config: LogConfig) -> io::Result<RotatingWriter> {
        std::fs::create_dir_all(dir)?;
        let prefix = format!("{task}.{}", stream.as_str());
        let index = existing_indexes(dir, &prefix)?.into_iter().max().unwrap_or(0);
        let (file, size_bytes) = open_append(&dir.join(format!("{prefix}.{index}")))?;
        Ok(RotatingWriter { dir: dir.to_path_buf(), prefix, config: sanitized(config), index, file, size_bytes })
    }

    /// The file being written.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}.{}", self.prefix, self.index))
    }

    fn max_bytes(&self) -> u64 {
        self.config.max_file_size_mb * BYTES_PER_MB
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.index += 1;
        let (file, size_bytes) = open_append(&self.current_path())?;
        self.file = file;
        self.size_bytes = size_bytes;
        // Keep `max_files` files: the current one and the newest before it.
        let keep_from = (self.index + 1).saturating_sub(u64::from(self.config.max_files));
        for index in existing_indexes(&self.dir, &self.prefix)? {
            if index < keep_from {
                let _ = std::fs::remove_file(self.dir.join(format!("{}.{index}", self.prefix)));
            }
        }
        Ok(())
    }
}

impl Write for RotatingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.size_bytes >= self.max_bytes() {
            self.rotate()?;
        }
        let room = usize::try_from(self.max_bytes() - self.size_bytes).unwrap_or(usize::MAX);
        let take = buf.len().min(room);
        let written = self.file.write(&buf[..take])?;
        self.size_bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copies `source` into `writer` until end of file: a task's stdout or
/// stderr into its log files. Errors end the copy; the task keeps running.
pub(crate) fn pump(mut source: impl Read, mut writer: RotatingWriter) {
    let mut buffer = vec![0u8; PUMP_BUFFER_BYTES];
    loop {
        match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(err) = writer.write_all(&buffer[..n]) {
                    tracing::warn!(path = %writer.current_path().display(), %err, "task log write failed");
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(%err, "task log read failed");
                break;
            }
        }
    }
    let _ = writer.flush();
}

/// Zero files or zero bytes would lose every line; clamp to one.
fn sanitized(config: LogConfig) -> LogConfig {
    LogConfig { max_files: config.max_files.max(1), max_file_size_mb: config.max_file_size_mb.max(1) }
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size_bytes = file.metadata()?.len();
    Ok((file, size_bytes))
}

fn existing_indexes(dir: &Path, prefix: &str) -> io::Result<Vec<u64>> {
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(index) = name.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('.'))
            && let Ok(index) = index.parse::<u64>()
        {
            indexes.push(index);
        }
    }
    Ok(indexes)
}

/// The rotated files of a stream with their index, oldest first.
pub fn log_files(dir: &Path, task: &str, stream: LogStream) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = format!("{task}.{}", stream.as_str());
    let mut indexes = existing_indexes(dir, &prefix)?;
    indexes.sort_unstable();
    Ok(indexes.into_iter().map(|index| (index, dir.join(format!("{prefix}.{index}")))).collect())
}

/// Reads every rotated file of a stream, oldest first: what `alloc logs`
/// shows, and what tests check.
pub fn read_all(dir: &Path, task: &str, stream: LogStream) -> io::Result<Vec<u8>> {
    let prefix = format!("{task}.{}", stream.as_str());
    let mut indexes = existing_indexes(dir, &prefix)?;
    indexes.sort_unstable();
    let mut out = Vec::new();
    for index in indexes {
        out.extend(std::fs::read(dir.join(format!("{prefix}.{index}")))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("caravan-logs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = LogConfig { max_files: 3, max_file_size_mb: 1 };
        let mut writer = RotatingWriter::open(&dir, "web", LogStream::Stdout, config).unwrap();
        let chunk = vec![b'x'; 600 * 1024];
        for _ in 0..10 {
            writer.write_all(&chunk).unwrap();
        }
        writer.flush().unwrap();
        let mut indexes = existing_indexes(&dir, "web.stdout").unwrap();
        indexes.sort_unstable();
        // 6000 KiB in 1024 KiB files: indexes 0..=5, the newest 3 kept.
        assert_eq!(indexes, vec![3, 4, 5]);
        assert_eq!(std::fs::metadata(dir.join("web.stdout.3")).unwrap().len(), BYTES_PER_MB);
        // A writer opened again continues the newest file.
        let writer = RotatingWriter::open(&dir, "web", LogStream::Stdout, config).unwrap();
        assert_eq!(writer.current_path(), dir.join("web.stdout.5"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
