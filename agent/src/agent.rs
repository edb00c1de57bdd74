//! `caravan agent -dev`: one in-process server (state store, broker,
//! scheduler workers, plan applier) with the HTTP API. The client half
//! (fingerprinting, running tasks) arrives with the client agent issue, so
//! today jobs are placed onto registered nodes but nothing runs them.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use caravan_engine::clock::SystemClock;
use caravan_engine::local::{LocalCluster, LocalConfig};
use caravan_net::http::{self, LocalServer};

/// Nomad's default ports: HTTP 4646, RPC 4647.
const HTTP_PORT_DEFAULT: u16 = 4646;
const RPC_PORT_DEFAULT: u16 = 4647;

#[derive(clap::Args, Debug)]
pub(crate) struct AgentArgs {
    /// Start a development agent: one server in this process, state in memory.
    #[arg(long)]
    dev: bool,
    /// Address to bind the HTTP API to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// HTTP port (Nomad's `ports { http }`); 0 picks a free one.
    #[arg(long = "http-port", default_value_t = HTTP_PORT_DEFAULT)]
    http_port: u16,
}

pub(crate) fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if !args.dev {
        bail!("only `caravan agent -dev` is available in this build: server mode with raft and client mode come later");
    }
    let addr: SocketAddr = format!("{}:{}", args.bind, args.http_port)
        .parse()
        .with_context(|| format!("invalid -bind address {:?}", args.bind))?;
    // Ids must differ from one agent run to the next; only tests want the
    // seeded, repeatable kind.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let cluster = LocalCluster::start(LocalConfig { seed, ..LocalConfig::default() }, Arc::new(SystemClock));
    let server = Arc::new(LocalServer { cluster, rpc_addr: format!("{}:{RPC_PORT_DEFAULT}", args.bind) });
    let bound = http::spawn(addr, server).with_context(|| format!("starting the HTTP API on {addr}"))?;
    #[allow(clippy::print_stdout)]
    {
        println!("==> Caravan agent started in dev mode (server only; no client runs tasks yet)");
        println!("    HTTP API: http://{bound}  (NOMAD_ADDR=http://{bound})");
        println!("    Try: caravan job validate examples/hello.nomad.hcl");
    }
    // The API and the server run on their own threads until the process is stopped.
    loop {
        std::thread::park();
    }
}
