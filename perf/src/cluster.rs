//! The servers a fleet scenario drives: real `caravan agent -server`
//! processes started here (one, or a cluster on loopback, with a fresh dev
//! CA), or a running cluster given by address. Either way the scenario
//! reaches them only through the HTTP API and the QUIC client RPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caravan_net::quic::{ClusterTls, DevCa};
use serde_json::Value;

use crate::api::Api;

/// How long a fresh cluster may take to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ClusterArgs {
    /// Servers to start (1 or 3 typically), all on loopback.
    #[arg(long, default_value_t = 1)]
    pub(crate) servers: usize,
    /// The `caravan` binary to start; default: next to this one.
    #[arg(long)]
    pub(crate) caravan_bin: Option<PathBuf>,
    /// Scheduler workers per server; default: the server's own (one per core).
    #[arg(long)]
    pub(crate) num_schedulers: Option<usize>,
    /// Drive a running cluster instead: a server's HTTP address
    /// (`http://127.0.0.1:4646`). Needs `--rpc-address` and `--tls-dir`.
    #[arg(long)]
    pub(crate) address: Option<String>,
    /// With `--address`: the servers' RPC addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) rpc_address: Vec<SocketAddr>,
    /// With `--address`: a directory with `ca.pem`, `cert.pem`, `key.pem`
    /// signed by the cluster's CA, for the simulated nodes.
    #[arg(long)]
    pub(crate) tls_dir: Option<PathBuf>,
    /// Extra lines for every started server's `server { }` block, e.g.
    /// `min_heartbeat_ttl = "2s"`.
    #[arg(long, default_value = "")]
    pub(crate) server_config: String,
}

/// A server process this harness started.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    pub(crate) http: String,
    child: Child,
}

impl ServerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The cluster under test.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// Every server's HTTP base URL.
    pub(crate) http: Vec<String>,
    /// Every server's RPC address (where simulated nodes connect).
    pub(crate) rpc: Vec<SocketAddr>,
    /// The simulated nodes' identity, signed by the cluster's CA.
    pub(crate) fleet_tls: ClusterTls,
    /// Processes started here (empty when attached).
    pub(crate) processes: Vec<ServerProcess>,
    root: Option<PathBuf>,
}

impl Cluster {
    /// Start servers or attach, per `args`, and wait for a leader.
    pub(crate) fn start(args: &ClusterArgs) -> anyhow::Result<Cluster> {
        let cluster = match &args.address {
            Some(address) => attach(args, address)?,
            None => start_processes(args)?,
        };
        let deadline = Instant::now() + LEADER_WAIT;
        while cluster.leader_http().is_none() {
            if Instant::now() > deadline {
                bail!("no leader after {} s; server logs are in {:?}", LEADER_WAIT.as_secs(), cluster.root);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// The leader's HTTP base URL, as the servers report it.
    pub(crate) fn leader_http(&self) -> Option<String> {
        for http in &self.http {
            let Ok(Value::String(leader)) = Api::new(http).get("/v1/status/leader") else { continue };
            let Ok(leader) = leader.parse::<SocketAddr>() else { continue };
            if let Some(at) = self.rpc.iter().position(|r| *r == leader) {
                return self.http.get(at).cloned();
            }
            // Attached to a cluster whose RPC list we were not given in
            // full: the server we asked can take the writes too.
            return Some(http.clone());
        }
        None
    }

    /// The started server that leads, if this harness started it.
    pub(crate) fn leader_process(&self) -> Option<&ServerProcess> {
        let leader = self.leader_http()?;
        self.processes.iter().find(|p| p.http == leader)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Some(root) = &self.root
            && std::env::var_os("CARAVAN_PERF_KEEP").is_none()
        {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

fn attach(args: &ClusterArgs, address: &str) -> anyhow::Result<Cluster> {
    if args.rpc_address.is_empty() {
        bail!("--address needs --rpc-address (the servers' RPC addresses)");
    }
    let dir = args.tls_dir.as_ref().context("--address needs --tls-dir (ca.pem, cert.pem, key.pem)")?;
    let fleet_tls = ClusterTls::load(&dir.join("ca.pem"), &dir.join("cert.pem"), &dir.join("key.pem"))
        .with_context(|| format!("loading certificates from {}", dir.display()))?;
    Ok(Cluster {
        http: vec![address.trim_end_matches('/').to_string()],
        rpc: args.rpc_address.clone(),
        fleet_tls,
        processes: Vec::new(),
        root: None,
    })
}

fn caravan_bin(args: &ClusterArgs) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &args.caravan_bin {
        return Ok(bin.clone());
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("caravan");
    if !bin.exists() {
        bail!("{} not found: build it (cargo build --release -p caravan) or pass --caravan-bin", bin.display());
    }
    Ok(bin)
}

fn free_tcp_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_processes(args: &ClusterArgs) -> anyhow::Result<Cluster> {
    let count = args.servers.max(1);
    let bin = caravan_bin(args)?;
    let root = std::env::temp_dir().join(format!("caravan-perf-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&root)?;
    let ca = DevCa::generate()?;
    let http_ports: Vec<u16> = (0..count).map(|_| free_tcp_port()).collect::<Result<_, _>>()?;
    let rpc_ports: Vec<u16> = (0..count).map(|_| free_udp_port()).collect::<Result<_, _>>()?;
    let rpc: Vec<SocketAddr> = rpc_ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let join: Vec<String> = rpc.iter().map(|a| format!("\"{a}\"")).collect();
    let mut processes = Vec::new();
    for i in 0..count {
        let dir = root.join(format!("s{i}"));
        let tls_dir = dir.join("tls");
        ca.issue_node(&[])?.write_pem(&tls_dir)?;
        let schedulers = args.num_schedulers.map(|n| format!("  num_schedulers = {n}\n")).unwrap_or_default();
        let config = format!(
            r#"name = "s{i}"
data_dir = "{data}"
bind_addr = "127.0.0.1"
log_level = "WARN"
ports {{
  http = {http}
  rpc = {rpc}
}}
server {{
  enabled = true
  bootstrap_expect = {count}
{schedulers}{extra}
  server_join {{
    retry_join = [{join}]
  }}
}}
tls {{
  rpc = true
  ca_file = "{tls}/ca.pem"
  cert_file = "{tls}/cert.pem"
  key_file = "{tls}/key.pem"
}}
"#,
            data = dir.join("data").display(),
            http = http_ports[i],
            rpc = rpc_ports[i],
            extra = args.server_config,
            join = join.join(", "),
            tls = tls_dir.display(),
        );
        let config_path = dir.join("agent.hcl");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(&bin)
            .args(["agent", "-config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        processes.push(ServerProcess { http: format!("http://127.0.0.1:{}", http_ports[i]), child });
    }
    Ok(Cluster {
        http: processes.iter().map(|p| p.http.clone()).collect(),
        rpc,
        fleet_tls: ca.issue_node(&[])?,
        processes,
        root: Some(root),
    })
}
