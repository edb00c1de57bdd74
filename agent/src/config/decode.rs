//! Typed decoding of a [`ConfigValue`] tree into an [`AgentConfig`]: every key
//! is taken out of its block by name, so whatever is left at the end is an
//! unknown key and is refused with its path. Missing keys keep the value of
//! the base config (the defaults, or the `-dev` defaults).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::duration::parse_duration;
use super::raw::{ConfigValue, join};
use super::{
    Addresses, Advertise, AgentConfig, ClientConfig, LogLevel, Plugins, Ports, RawExecConfig, Reserved, ServerConfig,
    ServerJoin, TelemetryConfig, TlsConfig,
};

/// Errors reported per file before giving up: enough to fix a file in one
/// pass, few enough to read.
pub(crate) const ERRORS_PER_FILE_MAX: usize = 32;

/// Entries in one list or map setting (`retry_join`, `meta`, ...).
pub(crate) const LIST_ITEMS_MAX: usize = 4096;

/// Errors found while decoding, each a key path and what is wrong with it.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) list: Vec<(String, String)>,
}

impl Problems {
    pub(crate) fn push(&mut self, path: &str, message: impl Into<String>) {
        if self.list.len() < ERRORS_PER_FILE_MAX {
            self.list.push((path.to_owned(), message.into()));
        }
    }

    fn type_error(&mut self, path: &str, expected: &str, found: &ConfigValue) {
        self.push(path, format!("expected {expected}, found {}", found.type_name()));
    }
}

/// One block being decoded: the keys not yet taken.
struct Block {
    path: String,
    keys: BTreeMap<String, ConfigValue>,
}

impl Block {
    /// A block from an object, or from a list of objects (HCL's JSON form),
    /// which merge in order.
    fn new(path: String, value: ConfigValue, problems: &mut Problems) -> Option<Block> {
        match value {
            ConfigValue::Object(keys) => Some(Block { path, keys }),
            ConfigValue::List(items) => {
                let mut merged = ConfigValue::empty_object();
                for item in items {
                    if !matches!(item, ConfigValue::Object(_)) {
                        problems.type_error(&path, "a block", &item);
                        return None;
                    }
                    merged.merge(item);
                }
                Block::new(path, merged, problems)
            }
            other => {
                problems.type_error(&path, "a block", &other);
                None
            }
        }
    }

    /// Take a key; `null` counts as unset.
    fn take(&mut self, key: &str) -> Option<(String, ConfigValue)> {
        match self.keys.remove(key)? {
            ConfigValue::Null => None,
            value => Some((join(&self.path, key), value)),
        }
    }

    fn block(&mut self, key: &str, problems: &mut Problems) -> Option<Block> {
        let (path, value) = self.take(key)?;
        Block::new(path, value, problems)
    }

    fn string(&mut self, key: &str, problems: &mut Problems) -> Option<String> {
        let (path, value) = self.take(key)?;
        match value {
            ConfigValue::String(s) => Some(s),
            other => {
                problems.type_error(&path, "a string", &other);
                None
            }
        }
    }

    fn path(&mut self, key: &str, problems: &mut Problems) -> Option<PathBuf> {
        self.string(key, problems).map(PathBuf::from)
    }

    fn bool(&mut self, key: &str, problems: &mut Problems) -> Option<bool> {
        let (path, value) = self.take(key)?;
        match value {
            ConfigValue::Bool(b) => Some(b),
            other => {
                problems.type_error(&path, "a bool", &other);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn int<T: TryFrom<i64>>(&mut self, key: &str, min: i64, max: i64, problems: &mut Problems) -> Option<T> {
        let (path, value) = self.take(key)?;
        let int = match value {
            ConfigValue::Int(i) => i,
            ConfigValue::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => f as i64,
            other => {
                problems.type_error(&path, "an integer", &other);
                return None;
            }
        };
        if int < min || int > max {
            problems.push(&path, format!("{int} is out of range ({min} to {max})"));
            return None;
        }
        T::try_from(int).ok()
    }

    fn u64(&mut self, key: &str, problems: &mut Problems) -> Option<u64> {
        self.int(key, 0, i64::MAX, problems)
    }

    fn u32(&mut self, key: &str, problems: &mut Problems) -> Option<u32> {
        self.int(key, 0, i64::from(u32::MAX), problems)
    }

    fn port(&mut self, key: &str, problems: &mut Problems) -> Option<u16> {
        self.int(key, 0, i64::from(u16::MAX), problems)
    }

    fn duration(&mut self, key: &str, problems: &mut Problems) -> Option<Duration> {
        let (path, value) = self.take(key)?;
        match value {
            ConfigValue::String(s) => match parse_duration(&s) {
                Ok(d) => Some(d),
                Err(why) => {
                    problems.push(&path, format!("invalid duration {s:?}: {why}"));
                    None
                }
            },
            other => {
                problems.type_error(&path, "a duration string such as \"30s\"", &other);
                None
            }
        }
    }

    fn ip(&mut self, key: &str, problems: &mut Problems) -> Option<IpAddr> {
        let path = join(&self.path, key);
        let text = self.string(key, problems)?;
        match text.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.push(&path, format!("expected an IP address, found {text:?}"));
                None
            }
        }
    }

    fn strings(&mut self, key: &str, problems: &mut Problems) -> Option<Vec<String>> {
        let (path, value) = self.take(key)?;
        let ConfigValue::List(items) = value else {
            problems.type_error(&path, "a list of strings", &value);
            return None;
        };
        if items.len() > LIST_ITEMS_MAX {
            problems.push(&path, format!("more than {LIST_ITEMS_MAX} items"));
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                ConfigValue::String(s) => out.push(s),
                other => {
                    problems.type_error(&format!("{path}[{index}]"), "a string", &other);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A map of strings (`meta`, `options`). Numbers and bools are taken as
    /// their text, as Nomad does, since `meta { rack = 12 }` is common.
    fn string_map(&mut self, key: &str, problems: &mut Problems) -> Option<BTreeMap<String, String>> {
        let block = self.block(key, problems)?;
        if block.keys.len() > LIST_ITEMS_MAX {
            problems.push(&block.path, format!("more than {LIST_ITEMS_MAX} entries"));
            return None;
        }
        let mut out = BTreeMap::new();
        for (name, value) in block.keys {
            let text = match value {
                ConfigValue::String(s) => s,
                ConfigValue::Int(i) => i.to_string(),
                ConfigValue::Float(f) => f.to_string(),
                ConfigValue::Bool(b) => b.to_string(),
                ConfigValue::Null => continue,
                other => {
                    problems.type_error(&join(&block.path, &name), "a string", &other);
                    continue;
                }
            };
            out.insert(name, text);
        }
        Some(out)
    }

    /// Refuse whatever was not taken.
    fn finish(self, problems: &mut Problems) {
        for key in self.keys.into_keys() {
            problems.push(&join(&self.path, &key), "unknown key");
        }
    }
}

/// Decode a whole file (or the merge of several) over `base`.
pub(crate) fn decode(value: ConfigValue, base: &AgentConfig, problems: &mut Problems) -> AgentConfig {
    let Some(mut top) = Block::new(String::new(), value, problems) else { return base.clone() };
    let p = problems;
    let mut config = base.clone();
    if let Some(v) = top.string("name", p) {
        config.name = Some(v);
    }
    config.region = top.string("region", p).unwrap_or(config.region);
    config.datacenter = top.string("datacenter", p).unwrap_or(config.datacenter);
    if let Some(v) = top.path("data_dir", p) {
        config.data_dir = Some(v);
    }
    config.bind_addr = top.ip("bind_addr", p).unwrap_or(config.bind_addr);
    if let Some(text) = top.string("log_level", p) {
        match LogLevel::parse(&text) {
            Some(level) => config.log_level = level,
            None => p.push("log_level", format!("expected one of TRACE, DEBUG, INFO, WARN, ERROR, found {text:?}")),
        }
    }
    if let Some(b) = top.block("ports", p) {
        config.ports = ports(b, &config.ports, p);
    }
    if let Some(b) = top.block("addresses", p) {
        config.addresses = addresses(b, &config.addresses, p);
    }
    if let Some(b) = top.block("advertise", p) {
        config.advertise = advertise(b, &config.advertise, p);
    }
    if let Some(b) = top.block("server", p) {
        config.server = server(b, &config.server, p);
    }
    if let Some(b) = top.block("client", p) {
        config.client = client(b, &config.client, p);
    }
    if let Some(b) = top.block("plugin", p) {
        config.plugins = plugins(b, &config.plugins, p);
    }
    if let Some(b) = top.block("tls", p) {
        config.tls = tls(b, &config.tls, p);
    }
    if let Some(b) = top.block("telemetry", p) {
        config.telemetry = telemetry(b, &config.telemetry, p);
    }
    top.finish(p);
    config
}

fn ports(mut b: Block, base: &Ports, p: &mut Problems) -> Ports {
    let ports = Ports {
        http: b.port("http", p).unwrap_or(base.http),
        rpc: b.port("rpc", p).unwrap_or(base.rpc),
        serf: b.port("serf", p).unwrap_or(base.serf),
    };
    b.finish(p);
    ports
}

fn addresses(mut b: Block, base: &Addresses, p: &mut Problems) -> Addresses {
    let addresses = Addresses {
        http: b.ip("http", p).or(base.http),
        rpc: b.ip("rpc", p).or(base.rpc),
        serf: b.ip("serf", p).or(base.serf),
    };
    b.finish(p);
    addresses
}

fn advertise(mut b: Block, base: &Advertise, p: &mut Problems) -> Advertise {
    let advertise = Advertise {
        http: b.string("http", p).or_else(|| base.http.clone()),
        rpc: b.string("rpc", p).or_else(|| base.rpc.clone()),
        serf: b.string("serf", p).or_else(|| base.serf.clone()),
    };
    b.finish(p);
    advertise
}

fn server_join(mut b: Block, base: &ServerJoin, p: &mut Problems) -> ServerJoin {
    let join = ServerJoin {
        retry_join: b.strings("retry_join", p).unwrap_or_else(|| base.retry_join.clone()),
        retry_interval: b.duration("retry_interval", p).unwrap_or(base.retry_interval),
        retry_max: b.u32("retry_max", p).unwrap_or(base.retry_max),
    };
    b.finish(p);
    join
}

fn server(mut b: Block, base: &ServerConfig, p: &mut Problems) -> ServerConfig {
    let mut server = base.clone();
    server.enabled = b.bool("enabled", p).unwrap_or(server.enabled);
    server.bootstrap_expect = b.u32("bootstrap_expect", p).unwrap_or(server.bootstrap_expect);
    if let Some(join) = b.block("server_join", p) {
        server.server_join = server_join(join, &server.server_join, p);
    }
    if let Some(n) = b.u32("num_schedulers", p) {
        server.num_schedulers = Some(n);
    }
    server.heartbeat_grace = b.duration("heartbeat_grace", p).unwrap_or(server.heartbeat_grace);
    server.min_heartbeat_ttl = b.duration("min_heartbeat_ttl", p).unwrap_or(server.min_heartbeat_ttl);
    server.max_heartbeats_per_second =
        b.u32("max_heartbeats_per_second", p).unwrap_or(server.max_heartbeats_per_second);
    server.raft_snapshot_threshold = b.u64("raft_snapshot_threshold", p).unwrap_or(server.raft_snapshot_threshold);
    server.raft_snapshot_interval = b.duration("raft_snapshot_interval", p).unwrap_or(server.raft_snapshot_interval);
    b.finish(p);
    server
}

fn client(mut b: Block, base: &ClientConfig, p: &mut Problems) -> ClientConfig {
    let mut client = base.clone();
    client.enabled = b.bool("enabled", p).unwrap_or(client.enabled);
    if let Some(v) = b.path("state_dir", p) {
        client.state_dir = Some(v);
    }
    if let Some(v) = b.path("alloc_dir", p) {
        client.alloc_dir = Some(v);
    }
    client.servers = b.strings("servers", p).unwrap_or(client.servers);
    if let Some(join) = b.block("server_join", p) {
        client.server_join = server_join(join, &client.server_join, p);
    }
    client.node_class = b.string("node_class", p).unwrap_or(client.node_class);
    client.node_pool = b.string("node_pool", p).unwrap_or(client.node_pool);
    // Maps merge key by key with the base, as they do across files.
    if let Some(meta) = b.string_map("meta", p) {
        client.meta.extend(meta);
    }
    if let Some(options) = b.string_map("options", p) {
        client.options.extend(options);
    }
    if let Some(r) = b.block("reserved", p) {
        client.reserved = reserved(r, &client.reserved, p);
    }
    if let Some(v) = b.string("network_interface", p) {
        client.network_interface = Some(v);
    }
    if let Some(v) = b.u64("network_speed", p) {
        client.network_speed_mbits = Some(v);
    }
    if let Some(v) = b.u64("cpu_total_compute", p) {
        client.cpu_total_compute_mhz = Some(v);
    }
    if let Some(v) = b.u64("memory_total_mb", p) {
        client.memory_total_mb = Some(v);
    }
    if let Some(v) = b.u64("disk_total_mb", p) {
        client.disk_total_mb = Some(v);
    }
    if let Some(v) = b.u64("disk_free_mb", p) {
        client.disk_free_mb = Some(v);
    }
    client.min_dynamic_port = b.port("min_dynamic_port", p).unwrap_or(client.min_dynamic_port);
    client.max_dynamic_port = b.port("max_dynamic_port", p).unwrap_or(client.max_dynamic_port);
    b.finish(p);
    client
}

fn reserved(mut b: Block, base: &Reserved, p: &mut Problems) -> Reserved {
    let mut reserved = base.clone();
    reserved.cpu_mhz = b.u64("cpu", p).unwrap_or(reserved.cpu_mhz);
    reserved.memory_mb = b.u64("memory", p).unwrap_or(reserved.memory_mb);
    reserved.disk_mb = b.u64("disk", p).unwrap_or(reserved.disk_mb);
    let path = join(&b.path, "reserved_ports");
    if let Some(text) = b.string("reserved_ports", p) {
        match parse_port_ranges(&text) {
            Ok(ports) => reserved.ports = ports,
            Err(why) => p.push(&path, why),
        }
    }
    b.finish(p);
    reserved
}

/// Nomad's port list: `"22,80,8000-8100"`, sorted and deduplicated.
pub(crate) fn parse_port_ranges(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parse = |s: &str| s.trim().parse::<u16>().map_err(|_| format!("invalid port {:?} in {text:?}", s.trim()));
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (parse(low)?, parse(high)?),
            None => (parse(part)?, parse(part)?),
        };
        if low > high {
            return Err(format!("port range {part:?} is backwards"));
        }
        // At most 65536 ports in all: the range is bounded by the type.
        ports.extend(low..=high);
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// `plugin "name" { config { ... } args = [...] }` for every plugin.
fn plugins(mut b: Block, base: &Plugins, p: &mut Problems) -> Plugins {
    let mut plugins = base.clone();
    let names: Vec<String> = b.keys.keys().cloned().collect();
    for name in names {
        let Some(mut plugin) = b.block(&name, p) else { continue };
        let config = plugin.block("config", p);
        // `args` is for external plugin binaries, which Caravan does not run;
        // it is accepted so that Nomad files load.
        let _ = plugin.strings("args", p);
        plugin.finish(p);
        let Some(mut config) = config else { continue };
        match name.as_str() {
            "raw_exec" => {
                plugins.raw_exec = RawExecConfig {
                    enabled: config.bool("enabled", p).unwrap_or(plugins.raw_exec.enabled),
                    no_cgroups: config.bool("no_cgroups", p).unwrap_or(plugins.raw_exec.no_cgroups),
                };
                config.finish(p);
            }
            "nvidia-gpu" => {
                let gpu = &mut plugins.gpu;
                gpu.enabled = config.bool("enabled", p).unwrap_or(gpu.enabled);
                gpu.ignored_gpu_ids = config.strings("ignored_gpu_ids", p).unwrap_or(gpu.ignored_gpu_ids.clone());
                gpu.fingerprint_period = config.duration("fingerprint_period", p).unwrap_or(gpu.fingerprint_period);
                let simulated_path = join(&config.path, "simulated");
                if let Some(simulated) = config.string_map("simulated", p) {
                    let pairs = simulated.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                    match caravan_gpu::SimulatedGpus::from_key_values(pairs) {
                        Ok(sim) => gpu.simulated = Some(sim),
                        Err(error) => p.push(&simulated_path, error.to_string()),
                    }
                }
                config.finish(p);
            }
            // Other drivers (docker, exec) decode and check their own config.
            _ => {
                let mut value = ConfigValue::Object(config.keys);
                if let Some(existing) = plugins.others.remove(&name) {
                    let mut merged = existing;
                    merged.merge(value);
                    value = merged;
                }
                plugins.others.insert(name, value);
            }
        }
    }
    b.finish(p);
    plugins
}

fn tls(mut b: Block, base: &TlsConfig, p: &mut Problems) -> TlsConfig {
    let mut tls = base.clone();
    tls.http = b.bool("http", p).unwrap_or(tls.http);
    tls.rpc = b.bool("rpc", p).unwrap_or(tls.rpc);
    for (key, slot) in
        [("ca_file", &mut tls.ca_file), ("cert_file", &mut tls.cert_file), ("key_file", &mut tls.key_file)]
    {
        if let Some(v) = b.path(key, p) {
            *slot = Some(v);
        }
    }
    tls.verify_server_hostname = b.bool("verify_server_hostname", p).unwrap_or(tls.verify_server_hostname);
    tls.verify_https_client = b.bool("verify_https_client", p).unwrap_or(tls.verify_https_client);
    b.finish(p);
    tls
}

fn telemetry(mut b: Block, base: &TelemetryConfig, p: &mut Problems) -> TelemetryConfig {
    let mut t = base.clone();
    t.collection_interval = b.duration("collection_interval", p).unwrap_or(t.collection_interval);
    t.publish_allocation_metrics = b.bool("publish_allocation_metrics", p).unwrap_or(t.publish_allocation_metrics);
    t.publish_node_metrics = b.bool("publish_node_metrics", p).unwrap_or(t.publish_node_metrics);
    t.prometheus_metrics = b.bool("prometheus_metrics", p).unwrap_or(t.prometheus_metrics);
    t.disable_hostname = b.bool("disable_hostname", p).unwrap_or(t.disable_hostname);
    b.finish(p);
    t
}
