//! CPU time and memory of a server process, from `/proc` (Linux).

/// Clock ticks per second of `/proc/<pid>/stat` times: 100 on every Linux
/// the project runs on (`getconf CLK_TCK`); read without libc.
const TICKS_PER_S: f64 = 100.0;

/// A process's CPU seconds (user + system) so far.
pub(crate) fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; `rest` starts at 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// Resident memory now and its peak, in MiB.
pub(crate) fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let (rss, peak) = rss_mb(me).unwrap();
        assert!(rss > 0.0);
        assert!(peak >= rss);
        let burn: u64 = (0..20_000_000u64).fold(0, |a, b| a ^ b.wrapping_mul(2654435761));
        assert!(burn != 1);
        assert!(cpu_s(me).unwrap() > 0.0);
    }
}
