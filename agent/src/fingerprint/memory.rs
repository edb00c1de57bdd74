//! Memory: `MemTotal` from `/proc/meminfo`, capped by a cgroup v2 limit when
//! the agent runs inside one (a container), since that is all it can use.

use std::path::Path;

/// `MemTotal` in bytes.
pub fn parse_meminfo_total_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let multiplier = match fields.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(multiplier)
}

/// A cgroup v2 `memory.max`: bytes, or `None` for `max` (no limit).
pub fn parse_cgroup_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// This machine's memory in bytes, `None` when `/proc/meminfo` is unreadable.
pub fn read_total_bytes(root: &Path) -> Option<u64> {
    let total = parse_meminfo_total_bytes(&std::fs::read_to_string(root.join("proc/meminfo")).ok()?)?;
    let limit =
        std::fs::read_to_string(root.join("sys/fs/cgroup/memory.max")).ok().and_then(|t| parse_cgroup_memory_max(&t));
    Some(limit.map_or(total, |limit| limit.min(total)))
}
