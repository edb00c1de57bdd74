//! The `caravan` binary: `main` parses arguments and maps errors to exit
//! codes; each verb lives in its own module.
//!
//! `caravan agent` runs a server, a client or both (`-dev`); every other
//! verb talks to the HTTP API (`NOMAD_ADDR`), except `job validate`.

mod agent;
mod alloc_logs;
mod api_client;
mod deployment;
mod job;
mod job_actions;
mod monitor;
mod plan_diff;
mod reads;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// How long mimalloc keeps freed pages before returning them to the OS.
/// Its default (10 ms) hands back the buffers a server frees between two
/// raft entries (encoded plans, status batches, RPC replies: hundreds of KB
/// to MBs), and the kernel zeroes fresh pages for the next one: that was
/// 17 % of the raft thread's samples during `caravan-perf c1m`. A second
/// keeps a busy server's working set mapped and still returns memory once
/// it idles (server CPU per c1m run 4.6 s → 4.4 s).
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// `mi_option_purge_delay` in mimalloc.h's option enum (v2 and v3); the
/// sys crate names only some options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn tune_allocator() {
    // Transparent huge pages off for the agent: with the kernel's THP
    // `always` (common), mimalloc's heaps are backed by 2 MiB pages that a
    // few live objects keep whole. Measured with `caravan-perf c1m`
    // (10,000 nodes): server RSS 274 → 155 MiB with no allocations, 496 →
    // 341 MiB with 100,000, no loss in placements/s. The setting is
    // inherited across fork and exec, so the executor turns it back on
    // before it starts a task (`executor::restore_transparent_huge_pages`).
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("caravan: cannot turn transparent huge pages off ({err}); memory use will be higher");
    }
    // SAFETY: mi_option_set only stores an option value (atomically) that
    // mimalloc reads when it next decides to purge; any thread, any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
    }
}

#[derive(Parser, Debug)]
#[command(name = "caravan", version, about = "Caravan: a fast workload orchestrator in the family of Nomad")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a Caravan agent.
    Agent(agent::AgentArgs),
    /// Work with jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Work with deployments.
    #[command(subcommand)]
    Deployment(deployment::DeploymentCommand),
    /// Work with client nodes.
    #[command(subcommand)]
    Node(reads::NodeCommand),
    /// Work with evaluations.
    #[command(subcommand)]
    Eval(reads::EvalCommand),
    /// Work with allocations.
    #[command(subcommand)]
    Alloc(reads::AllocCommand),
    /// Work with servers.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Cluster operations.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// List jobs.
    Status {
        /// Print the jobs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the cluster's CA and server certificates.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Print the version.
    Version,
}

/// Nomad's CLI spells flags with one dash (`-var`, `-json`, `-dev`); clap
/// wants two for long flags. Accept both.
fn nomad_style_args() -> Vec<std::ffi::OsString> {
    std::env::args_os()
        .map(|arg| match arg.to_str() {
            Some(s) if s.len() > 2 && s.starts_with('-') && s.as_bytes()[1].is_ascii_alphabetic() => {
                format!("-{s}").into()
            }
            _ => arg,
        })
        .collect()
}

#[derive(Subcommand, Debug)]
enum ServerCommand {
    /// List the servers.
    Members {
        /// Print the members as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Raft operations.
    #[command(subcommand)]
    Raft(RaftCommand),
}

#[derive(Subcommand, Debug)]
enum RaftCommand {
    /// List the raft peers.
    ListPeers,
}

fn main() -> ExitCode {
    tune_allocator();
    // `caravan executor ...`: the hidden task supervisor the client starts.
    if let Some(code) = caravan::client::driver::executor::main_if_executor() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // A usage error exits 1, as Nomad's CLI does: 2 means placement
    // failures. Help and version print and exit 0.
    let cli = match Cli::try_parse_from(nomad_style_args()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Job(cmd) => job::run(cmd),
        Command::Deployment(cmd) => deployment::run(cmd),
        Command::Node(cmd) => reads::node(cmd),
        Command::Eval(cmd) => reads::eval(cmd),
        Command::Alloc(cmd) => reads::alloc(cmd),
        Command::Server(ServerCommand::Members { json }) => reads::server_members(json),
        Command::Operator(OperatorCommand::Raft(RaftCommand::ListPeers)) => reads::raft_peers(),
        Command::Status { json: true } => job::print_get("/v1/jobs", None),
        Command::Status { json: false } => reads::status(),
        Command::Tls(cmd) => tls::run(cmd),
        Command::Version => {
            #[allow(clippy::print_stdout)]
            {
                println!("Caravan v{}", env!("CARGO_PKG_VERSION"));
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}
