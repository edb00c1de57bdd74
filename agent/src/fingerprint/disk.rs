//! Disk: size and free space of the filesystem holding the data dir
//! (`statvfs`), and the device it is mounted from (`/proc/self/mountinfo`).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// `unique.storage.volume`: the mount's source, e.g. `/dev/nvme0n1p2`.
    pub volume: String,
    pub bytes_total: u64,
    /// Space an unprivileged process may still use.
    pub bytes_free: u64,
}

/// Mount points examined at most; a machine with more is misconfigured.
const MOUNTS_MAX: usize = 100_000;

/// The source of the mount that holds `path` (the longest mount point that
/// is a prefix of it). Mountinfo fields: id parent dev root mountpoint
/// options [optional...] - fstype source superoptions.
pub fn parse_mount_source(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines().take(MOUNTS_MAX) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(mount_point) = fields.get(4) else { continue };
        let mount_point = unescape_octal(mount_point);
        let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
        let Some(source) = fields.get(dash + 2) else { continue };
        if path.starts_with(&mount_point) && best.as_ref().is_none_or(|(len, _)| mount_point.len() >= *len) {
            best = Some((mount_point.len(), unescape_octal(source)));
        }
    }
    best.map(|(_, source)| source)
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The nearest existing directory at or above `path`: the data dir may not
/// have been created yet, and its parent's filesystem is where it will live.
/// Bounded by the path's own depth.
fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().ok()?.join(path) };
    absolute.ancestors().find(|p| p.exists()).and_then(|p| p.canonicalize().ok())
}

/// Read the disk holding `data_dir`; `None` when nothing can be learned.
pub fn read(root: &Path, data_dir: &Path) -> Option<DiskInfo> {
    let dir = existing_ancestor(data_dir)?;
    let stat = match rustix::fs::statvfs(&dir) {
        Ok(stat) => stat,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "statvfs failed; no disk fingerprint");
            return None;
        }
    };
    let volume = std::fs::read_to_string(root.join("proc/self/mountinfo"))
        .ok()
        .and_then(|text| parse_mount_source(&text, &dir))
        .unwrap_or_else(|| "unknown".to_owned());
    Some(DiskInfo {
        volume,
        bytes_total: stat.f_blocks.saturating_mul(stat.f_frsize),
        bytes_free: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}
