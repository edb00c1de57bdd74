//! CPU: logical cores, model, clock and total compute, from `/proc/cpuinfo`
//! and cpufreq in sysfs.

use std::path::Path;

/// Clock assumed when neither cpufreq nor `/proc/cpuinfo` gives one (ARM
/// guests, some containers). Nomad refuses to start without a clock; a
/// modest guess keeps the node schedulable, and `cpu_total_compute` in the
/// client config overrides it with the truth.
pub const CPU_MHZ_FALLBACK: u64 = 1000;

/// Clocks outside this range are misreadings (cpufreq says kHz, cpuinfo MHz).
const CPU_MHZ_PLAUSIBLE_MAX: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// Logical CPUs.
    pub cores: u32,
    pub model: String,
    /// The clock of one core, in MHz.
    pub mhz: u64,
    /// Whether `mhz` was read rather than assumed.
    pub mhz_detected: bool,
}

impl CpuInfo {
    /// `cpu.totalcompute`: cores × MHz.
    pub fn total_compute_mhz(&self) -> u64 {
        u64::from(self.cores).saturating_mul(self.mhz)
    }
}

/// What `/proc/cpuinfo` says: processor count, first model name, first clock.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CpuinfoText {
    pub processors: u32,
    pub model: Option<String>,
    pub mhz: Option<f64>,
}

/// Parse `/proc/cpuinfo` (x86 `model name` / `cpu MHz`; ARM has no clock
/// there and names the core in `Model`, `Hardware` or `CPU part`).
pub fn parse_cpuinfo(text: &str) -> CpuinfoText {
    let mut out = CpuinfoText::default();
    let mut arm_model = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => out.processors += 1,
            "model name" if out.model.is_none() && !value.is_empty() => out.model = Some(value.to_owned()),
            "Model" | "Hardware" if arm_model.is_none() && !value.is_empty() => arm_model = Some(value.to_owned()),
            "cpu MHz" if out.mhz.is_none() => out.mhz = value.parse().ok(),
            _ => {}
        }
    }
    if out.model.is_none() {
        out.model = arm_model;
    }
    out
}

/// Parse cpufreq's `cpuinfo_max_freq` (kHz) into MHz.
pub fn parse_cpufreq_khz(text: &str) -> Option<u64> {
    let khz: u64 = text.trim().parse().ok()?;
    let mhz = khz / 1000;
    (1..=CPU_MHZ_PLAUSIBLE_MAX).contains(&mhz).then_some(mhz)
}

/// Combine the sources: the cpufreq maximum is the nominal clock (cpuinfo's
/// `cpu MHz` is the current one, which varies with load), else cpuinfo, else
/// the fallback. Cores come from cpuinfo, else the scheduler's count.
pub fn combine(cpuinfo: &CpuinfoText, cpufreq_mhz: Option<u64>, parallelism: u32) -> CpuInfo {
    let cpuinfo_mhz = cpuinfo
        .mhz
        .filter(|mhz| mhz.is_finite() && *mhz >= 1.0 && *mhz <= CPU_MHZ_PLAUSIBLE_MAX as f64)
        .map(|mhz| mhz.round() as u64);
    let detected = cpufreq_mhz.or(cpuinfo_mhz);
    CpuInfo {
        cores: if cpuinfo.processors > 0 { cpuinfo.processors } else { parallelism.max(1) },
        model: cpuinfo.model.clone().unwrap_or_else(|| "unknown".to_owned()),
        mhz: detected.unwrap_or(CPU_MHZ_FALLBACK),
        mhz_detected: detected.is_some(),
    }
}

/// Read this machine's CPU.
pub fn read(root: &Path) -> CpuInfo {
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).map(|t| parse_cpuinfo(&t)).unwrap_or_default();
    let cpufreq = std::fs::read_to_string(root.join("sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
        .ok()
        .and_then(|t| parse_cpufreq_khz(&t));
    let parallelism = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    combine(&cpuinfo, cpufreq, parallelism)
}

/// Nomad's `cpu.arch` is Go's `GOARCH`; map Rust's names to it so existing
/// constraints (`${attr.cpu.arch} = "amd64"`) keep working.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}
