//! `caravan agent`: load the agent configuration (`-config` files and
//! flags, Nomad's shape), then run a raft-replicated server with the HTTP
//! API, a client that runs allocations, or both. `-dev` is one server and
//! one client in this process, data in a temporary directory; the client
//! talks to the server over the same QUIC RPC as a remote one would.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use caravan_engine::clock::SystemClock;
use caravan_engine::worker::WorkerConfig;
use caravan_net::http;
use caravan_net::quic::ClusterTls;
use caravan_net::server::{RaftServer, RaftTimings, ServerClient, ServerConfig, TlsFiles};

use caravan::config::{self, AgentConfig};

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
    let data_dir = config.data_dir.clone().context("data_dir is required")?;
    let mut server = None;
    let mut client_slots = None;
    if config.server.enabled {
        let server_config = server_config(&config, data_dir.clone())?;
        let http_ip = config.addresses.http.unwrap_or(config.bind_addr);
        let http_addr = SocketAddr::new(http_ip, config.ports.http);
        let started = Arc::new(RaftServer::start(server_config, Arc::new(SystemClock)).context("starting the server")?);
        let (options, slots) = api_options(&config)?;
        client_slots = slots;
        let bound = http::spawn_with(http_addr, started.clone(), options)
            .with_context(|| format!("starting the HTTP API on {http_addr}"))?;
        #[allow(clippy::print_stdout)]
        {
            println!("==> Caravan agent started{}", if config.dev { " (dev mode)" } else { "" });
            println!("    Name:     {}", started.name);
            println!("    Server:   id {}, rpc {}", started.id, started.rpc_addr);
            println!("    HTTP API: http://{bound}  (NOMAD_ADDR=http://{bound})");
            println!("    Data dir: {}", data_dir.display());
        }
        // The client registers the port actually bound (0 picks one), so
        // other agents can forward `/v1/client/fs` requests to it.
        config.ports.http = bound.port();
        server = Some(started);
    } else if config.client.enabled {
        // A client-only agent serves its own allocations' files, which the
        // servers' agents forward `/v1/client/fs` requests to.
        let http_ip = config.addresses.http.unwrap_or(config.bind_addr);
        let http_addr = SocketAddr::new(http_ip, config.ports.http);
        let (options, slots) = api_options(&config)?;
        client_slots = slots;
        let bound = http::spawn_client(http_addr, options)
            .with_context(|| format!("starting the client's HTTP API on {http_addr}"))?;
        config.ports.http = bound.port();
        #[allow(clippy::print_stdout)]
        {
            println!("==> Caravan client agent started");
            println!("    HTTP API: http://{bound}  (/v1/client/fs/* of this client's allocations)");
            println!("    Data dir: {}", data_dir.display());
        }
    }
    let _client = if config.client.enabled {
        let client = start_client(&config, server.as_deref(), &data_dir)?;
        if let Some(slots) = &client_slots {
            let _ = slots.liveness.set(client.task_liveness());
            let _ = slots.stats.set(client.stats_source());
        }
        Some(client)
    } else {
        None
    };
    // The API, raft, the scheduler and the client run on their own threads
    // until the process is stopped; the raft log and the client's state are
    // durable, so stopping is safe at any instant.
    loop {
        std::thread::park();
    }
}

/// The HTTP API's client endpoints: the files and the usage of this
/// agent's client, and the slots its task states and stats source go in
/// once it runs.
fn api_options(config: &AgentConfig) -> anyhow::Result<(http::ApiOptions, Option<ClientSlots>)> {
    let mut options = http::ApiOptions::default();
    let mut slots = None;
    if config.client.enabled {
        let alloc_dir = caravan::client::agent::alloc_dir(config).map_err(|e| anyhow::anyhow!("client: {e}"))?;
        let logs = caravan::client::logs_api::AllocDirLogs::new(alloc_dir);
        let stats = caravan::client::stats_api::ClientStats::new();
        slots = Some(ClientSlots { liveness: logs.liveness_slot(), stats: stats.source_slot() });
        options.local_logs = Some(Arc::new(logs));
        options.local_stats = Some(Arc::new(stats));
    }
    Ok((options, slots))
}

/// Where the started client's parts go for the HTTP API.
struct ClientSlots {
    liveness: Arc<std::sync::OnceLock<caravan::client::agent::TaskLiveness>>,
    stats: Arc<std::sync::OnceLock<caravan::client::stats_api::StatsSource>>,
}

/// The client half: drivers, the servers' RPC, and the client loop.
fn start_client(
    config: &AgentConfig,
    local_server: Option<&RaftServer>,
    data_dir: &std::path::Path,
) -> anyhow::Result<caravan::client::agent::ClientAgent> {
    use caravan::client::driver::{
        Driver, docker::DockerDriver, exec::ExecDriver, executor::Executor, raw_exec::RawExecDriver,
    };
    let mut servers: Vec<SocketAddr> = Vec::new();
    for s in &config.client.servers {
        let with_port = if s.contains(':') { s.clone() } else { format!("{s}:{}", config.ports.rpc) };
        servers.push(with_port.parse().with_context(|| format!("client.servers: {s:?} is not an address"))?);
    }
    if let Some(server) = local_server {
        servers.push(server.rpc_addr);
    }
    if servers.is_empty() {
        bail!("client.servers: no servers to join (give their RPC addresses)");
    }
    let tls = match (&config.tls.ca_file, &config.tls.cert_file, &config.tls.key_file) {
        (Some(ca), Some(cert), Some(key)) => ClusterTls::load(ca, cert, key)?,
        // The server of this agent generated a dev CA in the data dir.
        _ if local_server.is_some() => {
            let dir = data_dir.join("tls");
            ClusterTls::load(&dir.join("ca.pem"), &dir.join("cert.pem"), &dir.join("key.pem"))?
        }
        _ => bail!("tls: a client needs ca_file, cert_file and key_file to reach the servers"),
    };
    let client = ServerClient::new(servers, &tls).context("starting the RPC client")?;
    // Tasks run under `caravan executor` (this binary), which records their
    // exit status for an agent that restarts while they run.
    let executor = Executor::current_exe().context("finding the caravan binary for the task executor")?;
    let mut drivers: Vec<Arc<dyn Driver>> = Vec::new();
    if config.plugins.raw_exec.enabled {
        drivers.push(Arc::new(RawExecDriver::with_executor(executor.clone())));
    }
    // The exec driver finds a MIG instance's device nodes by the GPU
    // fingerprint's placements, which the client's node loop refreshes.
    let gpus = caravan::client::agent::detect_gpus(config);
    let mig_index = gpus.as_ref().map(|gpus| gpus.mig_index()).unwrap_or_default();
    drivers.push(Arc::new(ExecDriver::with_executor(executor).with_mig_index(mig_index)));
    drivers.push(Arc::new(DockerDriver::new()));
    let server_api = Arc::new(caravan::client::rpc_server::RpcServerApi { client });
    let agent = caravan::client::agent::ClientAgent::start(config, server_api, drivers, gpus)
        .map_err(|e| anyhow::anyhow!("starting the client: {e}"))?;
    #[allow(clippy::print_stdout)]
    {
        println!("    Client:   node {}", agent.node_id());
    }
    Ok(agent)
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
    use caravan::config::LogLevel;
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

/// Scheduler workers per core when `num_schedulers` is not set (Nomad
/// runs one per core). A worker spends most of an eval waiting for its
/// plan's raft commit, and scheduling itself runs on at most one worker per
/// core at a time, so more workers keep evals moving. Measured with
/// `caravan-perf latency` (one server, 10,000 nodes, 2 cores, ~990
/// background evals/s, one run each): p99 register → placed 442 ms with 3
/// workers, 21 ms with 8, 11 ms with 16 (perf/README.md, session 9).
const WORKERS_PER_CORE: usize = 8;

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
        None => std::thread::available_parallelism().map_or(2, |n| n.get()) * WORKERS_PER_CORE,
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
        min_heartbeat_ttl: config.server.min_heartbeat_ttl,
        heartbeat_grace: config.server.heartbeat_grace,
        max_heartbeats_per_second: config.server.max_heartbeats_per_second,
        tls,
        seed,
    })
}
