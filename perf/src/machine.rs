//! Facts about the machine a result was taken on, and where results go.

use std::path::PathBuf;

use serde_json::{Value, json};

/// Cores, memory, kernel, build profile and git commit.
pub(crate) fn facts() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kb = read_field("/proc/meminfo", "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cores": cores,
        "memory_gib": (memory_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "git_commit": commit,
    })
}

/// Resident set size now, and its peak, in MiB.
pub(crate) fn rss_mb() -> (f64, f64) {
    let now = read_field("/proc/self/status", "VmRSS:").unwrap_or(0) as f64 / 1024.0;
    let peak = read_field("/proc/self/status", "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    (now, peak)
}

fn read_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `perf/results/<scenario>-<date>.json`, relative to the workspace root.
pub(crate) fn result_path(scenario: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "undated".into());
    root.join("results").join(format!("{scenario}-{date}.json"))
}

/// Write a scenario's result to `perf/results/` unless told not to.
pub(crate) fn save(scenario: &str, result: &Value, no_save: bool, quiet: bool) -> anyhow::Result<()> {
    if no_save {
        return Ok(());
    }
    let path = result_path(scenario);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(result)? + "\n")?;
    if !quiet {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
