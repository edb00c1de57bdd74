//! Agent configuration in Nomad's shape, from HCL or JSON files.
//!
//! - [`load`] reads `-config` paths in order (a directory contributes its
//!   `*.hcl` and `*.json` files, sorted by name), checks each file on its own
//!   so errors name the file, merges them (later files win; blocks and maps
//!   merge key by key) and returns a typed [`AgentConfig`] with every default
//!   filled, plus warnings. [`load_sources`] does the same from text.
//! - Unknown keys are refused with their path (`agent.hcl:
//!   server.bootstap_expect: unknown key`); a wrong type names the key and the
//!   type wanted; durations are Nomad strings (`"30s"`, `"5m"`).
//! - [`AgentConfig::dev`] is `-dev`: server and client in one process,
//!   `bootstrap_expect = 1`, `raw_exec` on, a temporary data dir, loopback.
//!
//! ```text
//! let loaded = config::load(&[PathBuf::from("/etc/caravan.d")], false)?;
//! for warning in &loaded.warnings { tracing::warn!("{warning}") }
//! let http = (loaded.config.bind_addr, loaded.config.ports.http);
//! ```

// Wired in by the client agent and server mode, which are being written
// alongside; until then only the tests call most of this.
#![allow(dead_code)]

mod decode;
mod duration;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::ConfigValue;

use decode::Problems;

/// Largest configuration file read; agent configs are a few KiB.
pub const CONFIG_FILE_BYTES_MAX: u64 = 4 << 20;

/// Files taken from one `-config` directory.
pub const CONFIG_DIR_FILES_MAX: usize = 1024;

/// Errors reported across all files before giving up.
pub const ERRORS_MAX: usize = 64;

/// Nomad's default ports.
pub const HTTP_PORT_DEFAULT: u16 = 4646;
pub const RPC_PORT_DEFAULT: u16 = 4647;
pub const SERF_PORT_DEFAULT: u16 = 4648;

/// Nomad's server defaults: heartbeats are granted at least 10 s and the
/// leader waits 10 s more before marking a node down; raft snapshots every
/// 8192 entries, checked every 2 minutes.
pub const HEARTBEAT_GRACE_DEFAULT: Duration = Duration::from_secs(10);
pub const MIN_HEARTBEAT_TTL_DEFAULT: Duration = Duration::from_secs(10);
pub const RAFT_SNAPSHOT_THRESHOLD_DEFAULT: u64 = 8192;
pub const RAFT_SNAPSHOT_INTERVAL_DEFAULT: Duration = Duration::from_secs(120);

/// Nomad's `server_join` default: retry every 30 s, forever (`retry_max = 0`).
pub const RETRY_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);

/// Nomad's dynamic port range for allocations.
pub const MIN_DYNAMIC_PORT_DEFAULT: u16 = 20000;
pub const MAX_DYNAMIC_PORT_DEFAULT: u16 = 32000;

/// Nomad's telemetry default collection interval.
pub const TELEMETRY_COLLECTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

/// The whole agent configuration, defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Started with `-dev`: relaxes the checks that a production agent needs.
    pub dev: bool,
    /// The node and server name; `None` means the hostname.
    pub name: Option<String>,
    pub region: String,
    pub datacenter: String,
    pub data_dir: Option<PathBuf>,
    pub bind_addr: IpAddr,
    pub log_level: LogLevel,
    pub ports: Ports,
    pub addresses: Addresses,
    pub advertise: Advertise,
    pub server: ServerConfig,
    pub client: ClientConfig,
    pub plugins: Plugins,
    pub tls: TlsConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Case-insensitive, as Nomad reads it.
    pub fn parse(text: &str) -> Option<LogLevel> {
        Some(match text.to_ascii_uppercase().as_str() {
            "TRACE" => LogLevel::Trace,
            "DEBUG" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARN" => LogLevel::Warn,
            "ERR" | "ERROR" => LogLevel::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub http: u16,
    pub rpc: u16,
    /// Accepted for Nomad compatibility; Caravan servers gossip over RPC.
    pub serf: u16,
}

/// Per-service bind addresses; `None` means `bind_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Addresses {
    pub http: Option<IpAddr>,
    pub rpc: Option<IpAddr>,
    pub serf: Option<IpAddr>,
}

/// Addresses other agents should use (`host` or `host:port`); `None` means
/// the bind address, or the node's IP when bound to 0.0.0.0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Advertise {
    pub http: Option<String>,
    pub rpc: Option<String>,
    pub serf: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerJoin {
    /// `host`, `host:port` addresses to join.
    pub retry_join: Vec<String>,
    pub retry_interval: Duration,
    /// Attempts before giving up; 0 retries forever.
    pub retry_max: u32,
}

impl Default for ServerJoin {
    fn default() -> ServerJoin {
        ServerJoin { retry_join: Vec::new(), retry_interval: RETRY_INTERVAL_DEFAULT, retry_max: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub enabled: bool,
    /// Servers to wait for before the first election; 0 is unset, refused
    /// when the server is enabled.
    pub bootstrap_expect: u32,
    pub server_join: ServerJoin,
    /// Scheduler workers; `None` is one per core, as in Nomad.
    pub num_schedulers: Option<u32>,
    pub heartbeat_grace: Duration,
    pub min_heartbeat_ttl: Duration,
    /// Nomad's `max_heartbeats_per_second` (50): TTLs grow with the fleet
    /// so the leader receives at most this many heartbeats a second.
    pub max_heartbeats_per_second: u32,
    pub raft_snapshot_threshold: u64,
    pub raft_snapshot_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            enabled: false,
            bootstrap_expect: 0,
            server_join: ServerJoin::default(),
            num_schedulers: None,
            heartbeat_grace: HEARTBEAT_GRACE_DEFAULT,
            min_heartbeat_ttl: MIN_HEARTBEAT_TTL_DEFAULT,
            max_heartbeats_per_second: caravan_engine::heartbeat::MAX_HEARTBEATS_PER_SECOND,
            raft_snapshot_threshold: RAFT_SNAPSHOT_THRESHOLD_DEFAULT,
            raft_snapshot_interval: RAFT_SNAPSHOT_INTERVAL_DEFAULT,
        }
    }
}

/// What the node keeps for itself (`client { reserved { ... } }`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reserved {
    pub cpu_mhz: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// Sorted, deduplicated.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub enabled: bool,
    /// Default `<data_dir>/client`.
    pub state_dir: Option<PathBuf>,
    /// Default `<data_dir>/alloc`.
    pub alloc_dir: Option<PathBuf>,
    /// Servers' RPC addresses (`host` or `host:port`).
    pub servers: Vec<String>,
    pub server_join: ServerJoin,
    /// Empty when unset.
    pub node_class: String,
    pub node_pool: String,
    pub meta: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub reserved: Reserved,
    /// Interface whose address and speed the node reports; `None` is the one
    /// holding the default route.
    pub network_interface: Option<String>,
    /// Overrides the interface's speed, in Mbit/s.
    pub network_speed_mbits: Option<u64>,
    /// Overrides the fingerprinted `cpu.totalcompute`.
    pub cpu_total_compute_mhz: Option<u64>,
    pub memory_total_mb: Option<u64>,
    pub disk_total_mb: Option<u64>,
    pub disk_free_mb: Option<u64>,
    pub min_dynamic_port: u16,
    pub max_dynamic_port: u16,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            enabled: false,
            state_dir: None,
            alloc_dir: None,
            servers: Vec::new(),
            server_join: ServerJoin::default(),
            node_class: String::new(),
            node_pool: "default".to_owned(),
            meta: BTreeMap::new(),
            options: BTreeMap::new(),
            reserved: Reserved::default(),
            network_interface: None,
            network_speed_mbits: None,
            cpu_total_compute_mhz: None,
            memory_total_mb: None,
            disk_total_mb: None,
            disk_free_mb: None,
            min_dynamic_port: MIN_DYNAMIC_PORT_DEFAULT,
            max_dynamic_port: MAX_DYNAMIC_PORT_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawExecConfig {
    pub enabled: bool,
    pub no_cgroups: bool,
}

/// `plugin "<name>" { config { ... } }` blocks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plugins {
    pub raw_exec: RawExecConfig,
    /// `plugin "nvidia-gpu"`, plus `simulated { count = 8 ... }` for GPUs
    /// that are not there (tests, the perf fleet).
    pub gpu: caravan_gpu::GpuConfig,
    /// Every other plugin's `config` block (docker, exec), checked by its
    /// driver, which alone knows its keys.
    pub others: BTreeMap<String, ConfigValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    pub http: bool,
    pub rpc: bool,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_server_hostname: bool,
    pub verify_https_client: bool,
}

/// Accepted so Nomad files load; metrics export comes later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub collection_interval: Duration,
    pub publish_allocation_metrics: bool,
    pub publish_node_metrics: bool,
    pub prometheus_metrics: bool,
    pub disable_hostname: bool,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            collection_interval: TELEMETRY_COLLECTION_INTERVAL_DEFAULT,
            publish_allocation_metrics: false,
            publish_node_metrics: false,
            prometheus_metrics: false,
            disable_hostname: false,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            dev: false,
            name: None,
            region: "global".to_owned(),
            datacenter: "dc1".to_owned(),
            data_dir: None,
            bind_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            log_level: LogLevel::Info,
            ports: Ports { http: HTTP_PORT_DEFAULT, rpc: RPC_PORT_DEFAULT, serf: SERF_PORT_DEFAULT },
            addresses: Addresses::default(),
            advertise: Advertise::default(),
            server: ServerConfig::default(),
            client: ClientConfig::default(),
            plugins: Plugins::default(),
            tls: TlsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl AgentConfig {
    /// `-dev`: one server and one client in this process, on loopback, with
    /// `raw_exec` on and state in a temporary directory of its own.
    pub fn dev() -> AgentConfig {
        let mut config = AgentConfig {
            dev: true,
            bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            log_level: LogLevel::Debug,
            data_dir: Some(std::env::temp_dir().join(format!("caravan-dev-{}", std::process::id()))),
            ..AgentConfig::default()
        };
        config.server.enabled = true;
        config.server.bootstrap_expect = 1;
        config.client.enabled = true;
        config.plugins.raw_exec.enabled = true;
        config
    }

    /// The node name: `name`, else the hostname.
    pub fn node_name(&self, hostname: &str) -> String {
        self.name.clone().unwrap_or_else(|| hostname.to_owned())
    }

    /// Check what no single key can: returns warnings, or every error.
    pub fn validate(&self) -> Result<Vec<String>, ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut error = |path: &str, message: String| errors.push(ConfigError::new(None, path, message));
        if !self.server.enabled && !self.client.enabled {
            error("", "neither server.enabled nor client.enabled is set (or use -dev)".to_owned());
        }
        if self.server.enabled {
            if self.data_dir.is_none() && !self.dev {
                error("data_dir", "required when server.enabled is true".to_owned());
            }
            if self.server.bootstrap_expect == 0 {
                error("server.bootstrap_expect", "must be at least 1 when server.enabled is true".to_owned());
            } else if self.server.bootstrap_expect.is_multiple_of(2) {
                warnings.push(format!(
                    "server.bootstrap_expect = {}: an even number of servers tolerates no more failures than one \
                     fewer; 3 or 5 is recommended",
                    self.server.bootstrap_expect
                ));
            }
            if self.server.min_heartbeat_ttl.is_zero() {
                error("server.min_heartbeat_ttl", "must be greater than 0s".to_owned());
            }
            if self.server.max_heartbeats_per_second == 0 {
                error("server.max_heartbeats_per_second", "must be greater than 0".to_owned());
            }
        }
        if self.client.enabled && self.data_dir.is_none() && self.client.state_dir.is_none() && !self.dev {
            error("data_dir", "required when client.enabled is true (or set client.state_dir)".to_owned());
        }
        let ports = [("ports.http", self.ports.http), ("ports.rpc", self.ports.rpc), ("ports.serf", self.ports.serf)];
        for (i, (name_a, a)) in ports.iter().enumerate() {
            for (name_b, b) in &ports[i + 1..] {
                // Port 0 asks the OS for a free one, so zeros never collide.
                if a == b && *a != 0 {
                    error(name_b, format!("port {b} is already used by {name_a}"));
                }
            }
        }
        if self.client.min_dynamic_port > self.client.max_dynamic_port {
            error(
                "client.min_dynamic_port",
                format!(
                    "{} is above client.max_dynamic_port ({})",
                    self.client.min_dynamic_port, self.client.max_dynamic_port
                ),
            );
        }
        let tls = &self.tls;
        if (tls.http || tls.rpc) && (tls.cert_file.is_none() || tls.key_file.is_none()) {
            error("tls", "cert_file and key_file are required when http or rpc is true".to_owned());
        }
        if tls.http {
            warnings.push(
                "tls.http = true: the HTTP API does not serve HTTPS yet and answers plain HTTP, and agents \
                 forward /v1/client/fs requests to each other over plain HTTP"
                    .to_owned(),
            );
        }
        if errors.is_empty() { Ok(warnings) } else { Err(ConfigErrors(errors)) }
    }
}

/// A configuration problem: where (file, key path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as named on the command line; `None` for checks across files.
    pub file: Option<String>,
    /// `server.server_join.retry_join`; empty for the whole config.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(file: Option<&str>, path: &str, message: String) -> ConfigError {
        ConfigError { file: file.map(str::to_owned), path: path.to_owned(), message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hcl,
    Json,
}

impl Format {
    /// `.json` is JSON; anything else is HCL, as Nomad reads `-config` files.
    pub fn of_path(path: &Path) -> Format {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) { Format::Json } else { Format::Hcl }
    }
}

/// One configuration text and the name errors give it.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub format: Format,
    pub text: String,
}

/// A valid configuration and what is worth a warning in it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    pub warnings: Vec<String>,
}

/// Read `-config` paths (files, or directories of `*.hcl` and `*.json`) in
/// order, then [`load_sources`].
pub fn load(paths: &[PathBuf], dev: bool) -> Result<Loaded, ConfigErrors> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        if path.is_dir() {
            match config_dir_files(path) {
                Ok(files) => {
                    for file in files {
                        read_source(&file, &mut sources, &mut errors);
                    }
                }
                Err(message) => errors.push(ConfigError::new(Some(&name), "", message)),
            }
        } else {
            read_source(path, &mut sources, &mut errors);
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    load_sources(&sources, dev)
}

/// The `*.hcl` and `*.json` files of a directory, sorted by name; hidden
/// files and subdirectories are skipped, as in Nomad.
fn config_dir_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read directory: {e}"))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot read directory: {e}"))?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "hcl" | "json"));
        if !hidden && wanted && path.is_file() {
            files.push(path);
        }
        if files.len() > CONFIG_DIR_FILES_MAX {
            return Err(format!("more than {CONFIG_DIR_FILES_MAX} configuration files"));
        }
    }
    files.sort();
    Ok(files)
}

fn read_source(path: &Path, sources: &mut Vec<Source>, errors: &mut Vec<ConfigError>) {
    let name = path.display().to_string();
    let text = std::fs::metadata(path).and_then(|meta| {
        if meta.len() > CONFIG_FILE_BYTES_MAX {
            Err(std::io::Error::other(format!("larger than {CONFIG_FILE_BYTES_MAX} bytes")))
        } else {
            std::fs::read_to_string(path)
        }
    });
    match text {
        Ok(text) => sources.push(Source { name, format: Format::of_path(path), text }),
        Err(e) => errors.push(ConfigError::new(Some(&name), "", format!("cannot read: {e}"))),
    }
}

/// Parse, check and merge configuration texts in order over the defaults
/// (or the `-dev` defaults), then validate the result.
pub fn load_sources(sources: &[Source], dev: bool) -> Result<Loaded, ConfigErrors> {
    let base = if dev { AgentConfig::dev() } else { AgentConfig::default() };
    let mut merged = ConfigValue::empty_object();
    let mut errors = Vec::new();
    for source in sources {
        let tree = match source.format {
            Format::Hcl => raw::from_hcl(&source.text),
            Format::Json => raw::from_json(&source.text),
        };
        let tree = match tree {
            Ok(tree) => tree,
            Err(raw::SyntaxError(message)) => {
                errors.push(ConfigError::new(Some(&source.name), "", message));
                continue;
            }
        };
        // Decode each file alone first, so a problem names the file it is in.
        let mut problems = Problems::default();
        decode::decode(tree.clone(), &base, &mut problems);
        for (path, message) in problems.list {
            errors.push(ConfigError::new(Some(&source.name), &path, message));
        }
        merged.merge(tree);
        if errors.len() >= ERRORS_MAX {
            errors.truncate(ERRORS_MAX);
            break;
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut problems = Problems::default();
    let config = decode::decode(merged, &base, &mut problems);
    // Every file decoded cleanly alone, so their merge should too; should it
    // not, say so rather than run with half a config.
    if !problems.list.is_empty() {
        let errors = problems.list.iter().map(|(path, message)| ConfigError::new(None, path, message.clone()));
        return Err(ConfigErrors(errors.collect()));
    }
    let warnings = config.validate()?;
    Ok(Loaded { config, warnings })
}

#[cfg(test)]
mod tests;
