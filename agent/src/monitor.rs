//! `caravan job run` (submit, then follow the evaluation as Nomad's CLI
//! does) and `caravan job status`.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::api_client::ApiClient;
use crate::job::{JobspecArgs, load};

/// Evaluations followed at most this many steps (blocked re-evaluations
/// included) before the CLI stops following and says so.
const MONITOR_STEPS_MAX: usize = 600;

/// The jobspec as `{"Job": ...}`; `None` after printing why it did not parse.
fn load_wrapped(spec: &JobspecArgs) -> anyhow::Result<Option<Value>> {
    match load(spec)? {
        Ok(job) if job.get("Job").is_some() => Ok(Some(job)),
        Ok(job) => Ok(Some(serde_json::json!({ "Job": job }))),
        Err(e) => {
            eprintln!("Error parsing job file from {}:\n{e}", spec.file.display());
            Ok(None)
        }
    }
}

/// The reasons in one task group's failed-placement metric, one per line.
#[allow(clippy::print_stdout)]
fn print_failure_reasons(metric: &Value, indent: &str) {
    for (name, n) in metric["DimensionExhausted"].as_object().into_iter().flatten() {
        println!("{indent}* Resources exhausted on {n} nodes: {name}");
    }
    for (name, n) in metric["ConstraintFiltered"].as_object().into_iter().flatten() {
        println!("{indent}* Constraint \"{name}\": {n} nodes excluded by filter");
    }
    if metric["NodesEvaluated"].as_u64() == Some(0) {
        println!("{indent}* No nodes were eligible for evaluation");
    }
}

#[allow(clippy::print_stdout)]
pub(crate) fn run_job(spec: &JobspecArgs, output: bool, detach: bool) -> anyhow::Result<ExitCode> {
    let Some(job) = load_wrapped(spec)? else { return Ok(ExitCode::from(1)) };
    if output {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(ExitCode::SUCCESS);
    }
    let client = ApiClient::from_env();
    let registered = client.put("/v1/jobs", &job)?;
    let eval_id = registered["EvalID"].as_str().context("register response has no EvalID")?.to_string();
    if detach {
        println!("Job registration successful\nEvaluation ID: {eval_id}");
        return Ok(ExitCode::SUCCESS);
    }
    monitor(&client, &eval_id)
}

/// Follow an evaluation to a terminal status, print its placements and any
/// failures. Exit 0 when everything was placed, 2 on placement failures
/// (as Nomad's CLI).
#[allow(clippy::print_stdout)]
pub(crate) fn monitor(client: &ApiClient, eval_id: &str) -> anyhow::Result<ExitCode> {
    println!("==> Monitoring evaluation \"{}\"", short(eval_id));
    let mut index = 0u64;
    let mut eval = Value::Null;
    for _ in 0..MONITOR_STEPS_MAX {
        eval = client.get(&format!("/v1/evaluation/{eval_id}?index={index}&wait=2s"))?;
        index = eval["ModifyIndex"].as_u64().unwrap_or(index);
        let status = eval["Status"].as_str().unwrap_or("");
        if status != "pending" {
            break;
        }
    }
    let status = eval["Status"].as_str().unwrap_or("unknown").to_string();
    println!("    Evaluation triggered by job \"{}\"", eval["JobID"].as_str().unwrap_or(""));
    let allocs = client.get(&format!("/v1/evaluation/{eval_id}/allocations"))?;
    for a in allocs.as_array().into_iter().flatten() {
        println!(
            "    Allocation \"{}\" created: node \"{}\", group \"{}\"",
            short(a["ID"].as_str().unwrap_or("")),
            short(a["NodeID"].as_str().unwrap_or("")),
            a["TaskGroup"].as_str().unwrap_or("")
        );
    }
    println!("    Evaluation status changed: \"pending\" -> \"{status}\"");
    let failed = eval["FailedTGAllocs"].as_object().filter(|m| !m.is_empty());
    match failed {
        None => {
            println!("==> Evaluation \"{}\" finished with status \"{status}\"", short(eval_id));
            Ok(if status == "complete" { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Some(groups) => {
            println!(
                "==> Evaluation \"{}\" finished with status \"{status}\" but failed to place all allocations:",
                short(eval_id)
            );
            for (group, metric) in groups {
                let coalesced = metric["CoalescedFailures"].as_u64().unwrap_or(0);
                println!(
                    "    Task Group \"{group}\" (failed to place {} allocation{}):",
                    coalesced + 1,
                    if coalesced == 0 { "" } else { "s" }
                );
                print_failure_reasons(metric, "      ");
            }
            if let Some(blocked) = eval["BlockedEval"].as_str().filter(|b| !b.is_empty()) {
                println!("    Evaluation \"{}\" waiting for additional capacity to place remainder", short(blocked));
            }
            Ok(ExitCode::from(2))
        }
    }
}

#[allow(clippy::print_stdout)]
pub(crate) fn status(id: &str) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let job = client.get(&format!("/v1/job/{id}"))?;
    let field = |k: &str| job[k].as_str().map(str::to_string).unwrap_or_else(|| job[k].to_string());
    println!("ID            = {}", field("ID"));
    println!("Name          = {}", field("Name"));
    println!("Type          = {}", field("Type"));
    println!("Priority      = {}", field("Priority"));
    println!(
        "Datacenters   = {}",
        job["Datacenters"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    );
    println!("Status        = {}", field("Status"));
    if job["Periodic"].is_object() {
        return periodic_status(&client, id, &job["Periodic"]);
    }
    println!();
    println!("Allocations");
    println!(
        "{:<8}  {:<8}  {:<10}  {:<8}  {:<8}  {:<8}",
        "ID", "Node ID", "Task Group", "Version", "Desired", "Status"
    );
    let allocs = client.get(&format!("/v1/job/{id}/allocations"))?;
    for a in allocs.as_array().into_iter().flatten() {
        println!(
            "{:<8}  {:<8}  {:<10}  {:<8}  {:<8}  {:<8}",
            short(a["ID"].as_str().unwrap_or("")),
            short(a["NodeID"].as_str().unwrap_or("")),
            a["TaskGroup"].as_str().unwrap_or(""),
            a["JobVersion"].as_u64().unwrap_or(0),
            a["DesiredStatus"].as_str().unwrap_or(""),
            a["ClientStatus"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The periodic part of `job status`, as Nomad prints it: whether it
/// launches, when next (computed here from the job's schedule, as Nomad's
/// CLI does), and the children launched so far.
#[allow(clippy::print_stdout)]
fn periodic_status(client: &ApiClient, id: &str, periodic: &Value) -> anyhow::Result<ExitCode> {
    use caravan_engine::model::Periodic;
    let text = |k: &str| periodic[k].as_str().unwrap_or("").to_string();
    let mut specs: Vec<std::sync::Arc<str>> =
        periodic["Specs"].as_array().into_iter().flatten().filter_map(Value::as_str).map(Into::into).collect();
    if specs.is_empty() && !text("Spec").is_empty() {
        specs.push(text("Spec").into());
    }
    let config = Periodic {
        enabled: periodic["Enabled"].as_bool().unwrap_or(true),
        specs,
        legacy_spec: false,
        prohibit_overlap: periodic["ProhibitOverlap"].as_bool().unwrap_or(false),
        time_zone: text("TimeZone").into(),
    };
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let next = caravan_engine::periodic::CronSchedule::parse(&config)
        .ok()
        .filter(|_| config.enabled)
        .and_then(|schedule| schedule.next_after(now_ns));
    println!("Periodic      = true");
    match next {
        Some(at_ns) => println!(
            "Next Periodic Launch = {} (in {}s, {})",
            caravan_net::api::rfc3339(at_ns),
            (at_ns - now_ns) / 1_000_000_000,
            config.time_zone
        ),
        None => println!("Next Periodic Launch = none"),
    }
    println!();
    println!("Previously Launched Jobs");
    println!("{:<40}  {:<8}", "ID", "Status");
    let children = client.get(&format!("/v1/jobs?prefix={id}/periodic-"))?;
    for child in children.as_array().into_iter().flatten().filter(|c| c["ParentID"] == id) {
        println!("{:<40}  {:<8}", child["ID"].as_str().unwrap_or(""), child["Status"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `job plan`: Nomad's exit codes, 0 when nothing would change, 1 when
/// allocations would be created or destroyed, 255 on error.
#[allow(clippy::print_stdout)]
pub(crate) fn plan(spec: &JobspecArgs) -> anyhow::Result<ExitCode> {
    let Some(job) = load_wrapped(spec)? else { return Ok(ExitCode::from(255)) };
    let id = job["Job"]["ID"].as_str().unwrap_or("").to_string();
    let client = ApiClient::from_env();
    let plan = match client.post(&format!("/v1/job/{id}/plan"), &job) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Error during plan: {e:#}");
            return Ok(ExitCode::from(255));
        }
    };
    print!("{}", crate::plan_diff::render(&plan["Diff"]));
    println!("\nScheduler dry-run:");
    let mut changes = false;
    for (group, u) in plan["Annotations"]["DesiredTGUpdates"].as_object().into_iter().flatten() {
        let mut parts = Vec::new();
        for (key, label) in [
            ("Place", "create"),
            ("DestructiveUpdate", "create/destroy update"),
            ("InPlaceUpdate", "in-place update"),
            ("Stop", "destroy"),
            ("Migrate", "migrate"),
            ("Ignore", "ignore"),
        ] {
            let n = u[key].as_u64().unwrap_or(0);
            if n > 0 {
                parts.push(format!("{n} {label}"));
                changes |= key != "Ignore";
            }
        }
        println!(
            "- Task Group: \"{group}\" ({})",
            if parts.is_empty() { "no changes".to_string() } else { parts.join(", ") }
        );
    }
    match plan["FailedTGAllocs"].as_object().filter(|m| !m.is_empty()) {
        None => println!("- All tasks successfully allocated."),
        Some(failed) => {
            for (group, metric) in failed {
                println!("- WARNING: Failed to place all allocations for task group \"{group}\":");
                print_failure_reasons(metric, "    ");
            }
        }
    }
    Ok(ExitCode::from(if changes { 1 } else { 0 }))
}

#[allow(clippy::print_stdout)]
pub(crate) fn stop(id: &str, purge: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let path = if purge { format!("/v1/job/{id}?purge=true") } else { format!("/v1/job/{id}") };
    let reply = client.delete(&path)?;
    let eval_id = reply["EvalID"].as_str().unwrap_or("").to_string();
    println!(
        "==> Job \"{id}\" {}; evaluation \"{}\"",
        if purge { "stopped and purged" } else { "stopped" },
        short(&eval_id)
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
pub(crate) fn inspect(id: &str) -> anyhow::Result<ExitCode> {
    let job = ApiClient::from_env().get(&format!("/v1/job/{id}"))?;
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "Job": job }))?);
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
pub(crate) fn history(id: &str) -> anyhow::Result<ExitCode> {
    let versions = ApiClient::from_env().get(&format!("/v1/job/{id}/versions"))?;
    for v in versions["Versions"].as_array().into_iter().flatten() {
        println!("Version     = {}", v["Version"]);
        println!("Stable      = {}", v["Stable"]);
        println!("Submit Date = {}\n", v["SubmitTime"]);
    }
    Ok(ExitCode::SUCCESS)
}
