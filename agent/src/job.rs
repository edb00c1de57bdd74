//! `caravan job ...` verbs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum JobCommand {
    /// Check a jobspec (HCL2 or JSON) without submitting it.
    Validate {
        /// The jobspec file; `-` reads standard input.
        file: PathBuf,
        /// Set an HCL variable: `-var name=value` (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// Read HCL variables from a file (repeatable).
        #[arg(long = "var-file", value_name = "FILE")]
        var_files: Vec<PathBuf>,
    },
}

pub(crate) fn run(cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Validate { file, vars, var_files } => validate(&file, &vars, &var_files),
    }
}

fn read_source(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// Parse (HCL or JSON), canonicalize and validate; print what is wrong.
fn validate(file: &PathBuf, vars: &[String], var_files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let source = read_source(file)?;
    let mut parsed_vars = Vec::with_capacity(vars.len());
    for v in vars {
        let Some((name, value)) = v.split_once('=') else { bail!("-var {v:?}: expected NAME=VALUE") };
        parsed_vars.push((name.to_string(), value.to_string()));
    }
    let var_sources: Vec<String> = var_files.iter().map(read_source).collect::<anyhow::Result<_>>()?;
    let var_refs: Vec<&str> = var_sources.iter().map(String::as_str).collect();
    let is_json = file.extension().is_some_and(|e| e == "json") || source.trim_start().starts_with('{');
    let body = if is_json {
        source.into_bytes()
    } else {
        match caravan_net::jobspec::parse_jobspec(&source, &parsed_vars, &var_refs) {
            Ok(json) => serde_json::to_vec(&json)?,
            Err(e) => {
                eprintln!("Error parsing job file from {}:\n{e}", file.display());
                return Ok(ExitCode::from(1));
            }
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
