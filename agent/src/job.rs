//! `caravan job ...` verbs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

/// A jobspec on the command line, with its HCL variables.
#[derive(clap::Args, Debug)]
pub(crate) struct JobspecArgs {
    /// The jobspec file (HCL2, or JSON); `-` reads standard input.
    pub(crate) file: PathBuf,
    /// Set an HCL variable: `-var name=value` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Read HCL variables from a file (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum JobCommand {
    /// Check a jobspec without submitting it.
    Validate(JobspecArgs),
    /// Submit a jobspec and follow its evaluation.
    Run {
        #[command(flatten)]
        spec: JobspecArgs,
        /// Print the job as API JSON instead of submitting it.
        #[arg(long)]
        output: bool,
        /// Return after submitting, without following the evaluation.
        #[arg(long)]
        detach: bool,
    },
    /// Show a job and its allocations.
    Status {
        /// The job id.
        id: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what submitting a jobspec would change, without changing anything.
    Plan(JobspecArgs),
    /// Stop a job (and with -purge, forget it).
    Stop {
        id: String,
        #[arg(long)]
        purge: bool,
    },
    /// Print a job as the API stores it (JSON, with or without -json).
    Inspect {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List a job's kept versions.
    History {
        id: String,
        /// Print the versions as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Submit a kept version of a job again, as its newest version.
    Revert {
        id: String,
        version: u64,
        /// Return after submitting, without following the evaluation.
        #[arg(long)]
        detach: bool,
    },
    /// Change a task group's count: `job scale <job> [<group>] <count>`
    /// (the group may be left out when the job has only one).
    Scale {
        id: String,
        /// `[<group>] <count>`.
        #[arg(num_args = 1..=2, required = true)]
        group_and_count: Vec<String>,
        #[arg(long)]
        detach: bool,
    },
    /// List a job's recent scaling events, newest first.
    #[command(name = "scaling-events")]
    ScalingEvents {
        id: String,
        /// Also show each event's error flag, message and eval.
        #[arg(long)]
        verbose: bool,
        /// Print the job's scale status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dispatch an instance of a parameterized job, with an optional
    /// payload file (`-` reads standard input).
    Dispatch {
        id: String,
        input: Option<PathBuf>,
        /// Dispatch metadata: `-meta key=value` (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        #[arg(long)]
        detach: bool,
    },
    /// Periodic job actions: `job periodic force <job>`.
    #[command(subcommand)]
    Periodic(PeriodicCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum PeriodicCommand {
    /// Launch a child of a periodic job now, whatever its schedule (and
    /// `prohibit_overlap`) says, then follow its evaluation.
    Force {
        id: String,
        /// Return after launching, without following the evaluation.
        #[arg(long)]
        detach: bool,
    },
}

pub(crate) fn run(cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Validate(spec) => validate(&spec),
        JobCommand::Run { spec, output, detach } => crate::monitor::run_job(&spec, output, detach),
        JobCommand::Status { id, json: true } => print_get(&format!("/v1/job/{id}"), None),
        JobCommand::Status { id, json: false } => crate::monitor::status(&id),
        JobCommand::Plan(spec) => crate::monitor::plan(&spec),
        JobCommand::Stop { id, purge } => crate::monitor::stop(&id, purge),
        JobCommand::Inspect { id, json: _ } => crate::monitor::inspect(&id),
        JobCommand::History { id, json: true } => print_get(&format!("/v1/job/{id}/versions"), Some("Versions")),
        JobCommand::History { id, json: false } => crate::monitor::history(&id),
        JobCommand::Revert { id, version, detach } => crate::job_actions::revert(&id, version, detach),
        JobCommand::Scale { id, group_and_count, detach } => crate::job_actions::scale(&id, &group_and_count, detach),
        JobCommand::ScalingEvents { id, verbose, json } => crate::job_actions::scaling_events(&id, verbose, json),
        JobCommand::Dispatch { id, input, meta, detach } => {
            crate::job_actions::dispatch(&id, input.as_deref(), &meta, detach)
        }
        JobCommand::Periodic(PeriodicCommand::Force { id, detach }) => crate::job_actions::periodic_force(&id, detach),
    }
}

/// The jobspec as Nomad API JSON (`{"Job": ...}`), or the parse error text.
pub(crate) fn load(spec: &JobspecArgs) -> anyhow::Result<Result<serde_json::Value, String>> {
    let source = read_source(&spec.file)?;
    if spec.file.extension().is_some_and(|e| e == "json") || source.trim_start().starts_with('{') {
        return Ok(serde_json::from_str(&source).map_err(|e| format!("invalid JSON: {e}")));
    }
    let mut parsed_vars = Vec::with_capacity(spec.vars.len());
    for v in &spec.vars {
        let Some((name, value)) = v.split_once('=') else { bail!("-var {v:?}: expected NAME=VALUE") };
        parsed_vars.push((name.to_string(), value.to_string()));
    }
    let var_sources: Vec<String> = spec.var_files.iter().map(|f| read_source(f)).collect::<anyhow::Result<_>>()?;
    let var_refs: Vec<&str> = var_sources.iter().map(String::as_str).collect();
    Ok(caravan_net::jobspec::parse_jobspec(&source, &parsed_vars, &var_refs).map_err(|e| e.to_string()))
}

pub(crate) fn read_source(file: &std::path::Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// Parse (HCL or JSON), canonicalize and validate; print what is wrong.
fn validate(spec: &JobspecArgs) -> anyhow::Result<ExitCode> {
    let file = &spec.file;
    let body = match load(spec)? {
        Ok(json) => serde_json::to_vec(&json)?,
        Err(e) => {
            eprintln!("Error parsing job file from {}:\n{e}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    match caravan_net::api::decode_job_request(&body) {
        Ok(job) => {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "Job validation successful: {} ({}, {} task groups)",
                    job.id,
                    job.job_type,
                    job.task_groups.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("Job validation errors:\n{e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `-json` on a read: the API's JSON (or one field of it), pretty-printed.
pub(crate) fn print_get(path: &str, field: Option<&str>) -> anyhow::Result<ExitCode> {
    let value = crate::api_client::ApiClient::from_env().get(path)?;
    crate::reads::print_json(field.map_or(&value, |f| &value[f]))
}
