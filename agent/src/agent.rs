//! `caravan agent`: load the agent configuration (`-config` files and
//! flags, Nomad's shape), then run a raft-replicated server with the HTTP
//! API. `-dev` is one server with its data in a temporary directory.
//! The client half (fingerprinting, running tasks) is wired in by the
//! client agent.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use caravan_engine::clock::SystemClock;
use caravan_engine::worker::WorkerConfig;
use caravan_net::http;
use caravan_net::server::{RaftServer, RaftTimings, ServerConfig, TlsFiles};

use crate::config::{self, AgentConfig};

#[derive(clap::Args, Debug)]
pub(crate) struct AgentArgs {
    /// Start a development agent: one server, data in a temporary directory.
    #[arg(long)]
    dev: bool,
    /// Run a server (Nomad's `server { enabled = true }`).
    #[arg(long)]
    server: bool,
    /// Run a client (Nomad's `client { enabled = true }`).
    #[arg(long)]
    client: bool,
    /// A configuration file or directory (HCL or JSON); repeatable, later
    /// files override earlier ones.
    #[arg(long = "config", value_name = "PATH")]
    config: Vec<PathBuf>,
    /// Address to bind every listener to (Nomad's `bind_addr`).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Where the agent keeps its state (Nomad's `data_dir`).
    #[arg(long = "data-dir")]
    data_dir: Option<PathBuf>,
    /// Servers to wait for before forming the cluster.
    #[arg(long = "bootstrap-expect")]
    bootstrap_expect: Option<u32>,
    /// A server to join (`host` or `host:port`); repeatable.
    #[arg(long = "retry-join")]
    retry_join: Vec<String>,
    /// The agent's name (Nomad's `name`).
    #[arg(long = "node")]
    node: Option<String>,
    /// HTTP port (Nomad's `ports { http }`); 0 picks a free one.
    #[arg(long = "http-port")]
    http_port: Option<u16>,
    /// RPC port (Nomad's `ports { rpc }`); 0 picks a free one.
    #[arg(long = "rpc-port")]
    rpc_port: Option<u16>,
}

pub(crate) fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let loaded = config::load(&args.config, args.dev).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = loaded.config;
    apply_flags(&mut config, &args);
    let mut warnings = loaded.warnings;
    warnings.extend(config.validate().map_err(|e| anyhow::anyhow!("{e}"))?);
    init_logging(&config);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    if !config.server.enabled {
        bail!("client-only agents are not available in this build yet: run with -server or -dev");
    }
    let data_dir = config.data_dir.clone().context("data_dir is required")?;
    let server_config = server_config(&config, data_dir)?;
    let http_ip = config.addresses.http.unwrap_or(config.bind_addr);
    let http_addr = SocketAddr::new(http_ip, config.ports.http);
    let server = RaftServer::start(server_config, Arc::new(SystemClock)).context("starting the server")?;
    let server = Arc::new(server);
    let bound =
        http::spawn(http_addr, server.clone()).with_context(|| format!("starting the HTTP API on {http_addr}"))?;
    #[allow(clippy::print_stdout)]
    {
        let mode = if config.dev { "dev mode, server only" } else { "server" };
        println!("==> Caravan agent started ({mode})");
        println!("    Name:     {}", server.name);
        println!("    Server:   id {}, rpc {}", server.id, server.rpc_addr);
        println!("    HTTP API: http://{bound}  (NOMAD_ADDR=http://{bound})");
        println!("    Data dir: {}", config.data_dir.as_ref().map_or(String::new(), |d| d.display().to_string()));
    }
    // The API, raft and the scheduler run on their own threads until the
    // process is stopped; the raft log is durable, so stopping is safe at
    // any instant.
    loop {
        std::thread::park();
    }
}

fn apply_flags(config: &mut AgentConfig, args: &AgentArgs) {
    if args.server {
        config.server.enabled = true;
    }
    if args.client {
        config.client.enabled = true;
    }
    if let Some(bind) = args.bind {
        config.bind_addr = bind;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if let Some(n) = args.bootstrap_expect {
        config.server.bootstrap_expect = n;
    }
    if !args.retry_join.is_empty() {
        config.server.server_join.retry_join = args.retry_join.clone();
    }
    if let Some(name) = &args.node {
        config.name = Some(name.clone());
    }
    if let Some(port) = args.http_port {
        config.ports.http = port;
    }
    match args.rpc_port {
        Some(port) => config.ports.rpc = port,
        // A dev agent is its own cluster: nothing dials its RPC port, so
        // it takes a free one and several dev agents can run side by side.
        None if config.dev && args.config.is_empty() => config.ports.rpc = 0,
        None => {}
    }
}

/// Logs to stderr at the configured level; `RUST_LOG` overrides.
fn init_logging(config: &AgentConfig) {
    use crate::config::LogLevel;
    let level = match config.log_level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Our crates at the configured level; dependencies (openraft, quinn)
    // one notch quieter unless asked, their debug output is per-packet.
    let default = format!("warn,caravan={level},caravan_net={level},caravan_engine={level}");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// The server's configuration from the agent's.
fn server_config(config: &AgentConfig, data_dir: PathBuf) -> anyhow::Result<ServerConfig> {
    let rpc_ip = config.addresses.rpc.unwrap_or(config.bind_addr);
    let rpc_bind = SocketAddr::new(rpc_ip, config.ports.rpc);
    let hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let name = config.node_name(&hostname);
    let advertise_ip = if rpc_ip.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { rpc_ip };
    let rpc_advertise = match &config.advertise.rpc {
        Some(a) if a.contains(':') => a.clone(),
        Some(host) => format!("{host}:{}", config.ports.rpc),
        // Port 0 is resolved by the server once bound.
        None if config.ports.rpc == 0 => String::new(),
        None => SocketAddr::new(advertise_ip, config.ports.rpc).to_string(),
    };
    let http_ip = config.addresses.http.unwrap_or(config.bind_addr);
    let http_advertise = match &config.advertise.http {
        Some(a) if a.contains(':') => a.clone(),
        Some(host) => format!("{host}:{}", config.ports.http),
        None => SocketAddr::new(if http_ip.is_unspecified() { advertise_ip } else { http_ip }, config.ports.http)
            .to_string(),
    };
    let tls = match (&config.tls.ca_file, &config.tls.cert_file, &config.tls.key_file) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(TlsFiles { ca_file: ca.clone(), cert_file: cert.clone(), key_file: key.clone() })
        }
        (None, None, None) => None,
        _ => bail!("tls: ca_file, cert_file and key_file are needed together"),
    };
    if tls.is_none() && config.server.bootstrap_expect > 1 {
        bail!(
            "tls: a cluster of {} servers needs a shared CA: set tls {{ ca_file cert_file key_file }} \
             (all traffic between servers is mutual TLS)",
            config.server.bootstrap_expect
        );
    }
    let retry_join = config
        .server
        .server_join
        .retry_join
        .iter()
        .map(|peer| if peer.contains(':') { peer.clone() } else { format!("{peer}:{}", config.ports.rpc) })
        .collect();
    let workers = match config.server.num_schedulers {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()) + 1,
    };
    // Ids must differ from one agent run to the next.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    Ok(ServerConfig {
        name,
        data_dir,
        rpc_bind,
        rpc_advertise,
        http_advertise,
        bootstrap_expect: config.server.bootstrap_expect as usize,
        retry_join,
        workers,
        worker: WorkerConfig::default(),
        raft: RaftTimings { snapshot_threshold: config.server.raft_snapshot_threshold, ..RaftTimings::default() },
        tls,
        seed,
    })
}
