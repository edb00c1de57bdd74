//! `caravan job revert|scale|dispatch|periodic force`: one write each, then (unless
//! `-detach`) the evaluation is followed as `job run` follows it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::api_client::ApiClient;
use crate::monitor::monitor;

/// Follow the evaluation a write created, or print its id with `-detach`.
#[allow(clippy::print_stdout)]
fn follow(client: &ApiClient, reply: &Value, detach: bool) -> anyhow::Result<ExitCode> {
    let eval_id = reply["EvalID"].as_str().unwrap_or("");
    if eval_id.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if detach {
        println!("Evaluation ID: {eval_id}");
        return Ok(ExitCode::SUCCESS);
    }
    monitor(client, eval_id)
}

pub(crate) fn revert(id: &str, version: u64, detach: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let reply = client.post(&format!("/v1/job/{id}/revert"), &json!({"JobID": id, "JobVersion": version}))?;
    follow(&client, &reply, detach)
}

/// `<group> <count>`, or `<count>` alone for a job with one group.
#[allow(clippy::print_stdout)]
pub(crate) fn scale(id: &str, group_and_count: &[String], detach: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let (group, count) = match group_and_count {
        [count] => {
            let job = client.get(&format!("/v1/job/{id}"))?;
            let groups: Vec<&str> =
                job["TaskGroups"].as_array().into_iter().flatten().filter_map(|g| g["Name"].as_str()).collect();
            match groups.as_slice() {
                [one] => ((*one).to_string(), count),
                _ => bail!("job {id:?} has {} task groups: name the one to scale", groups.len()),
            }
        }
        [group, count] => (group.clone(), count),
        _ => bail!("expected [<group>] <count>"),
    };
    let count: u32 = count.parse().with_context(|| format!("count {count:?} is not a non-negative integer"))?;
    let body =
        json!({"Count": count, "Target": {"Job": id, "Group": group}, "Message": "submitted using the Caravan CLI"});
    let reply = client.post(&format!("/v1/job/{id}/scale"), &body)?;
    println!("==> Job {id:?} group {group:?} scaled to {count}");
    follow(&client, &reply, detach)
}

/// `job scaling-events <job>` (Nomad's): every group's events, newest
/// first, from the job's scale status.
#[allow(clippy::print_stdout)]
pub(crate) fn scaling_events(id: &str, verbose: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let status = client.get(&format!("/v1/job/{id}/scale"))?;
    if json {
        return crate::reads::print_json(&status);
    }
    let mut events: Vec<(&str, &Value)> = Vec::new();
    for (group, g) in status["TaskGroups"].as_object().into_iter().flatten() {
        events.extend(g["Events"].as_array().into_iter().flatten().map(|e| (group.as_str(), e)));
    }
    if events.is_empty() {
        println!("No events found");
        return Ok(ExitCode::SUCCESS);
    }
    events.sort_by_key(|(_, e)| std::cmp::Reverse(e["Time"].as_i64().unwrap_or(0)));
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut header = vec!["Task Group", "Count", "PrevCount"];
    if verbose {
        header.extend(["Error", "Message", "Eval ID"]);
    }
    header.push("Date");
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|(group, e)| {
            let mut row = vec![group.to_string(), text(&e["Count"]), text(&e["PreviousCount"])];
            if verbose {
                row.extend([text(&e["Error"]), text(&e["Message"]), text(&e["EvalID"])]);
            }
            // Whole seconds, as Nomad's `formatTime` prints them.
            let seconds = e["Time"].as_i64().unwrap_or(0) / 1_000_000_000;
            row.push(caravan_net::api::rfc3339(seconds * 1_000_000_000));
            row
        })
        .collect();
    crate::reads::table(&header, &rows);
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
pub(crate) fn dispatch(id: &str, input: Option<&Path>, meta: &[String], detach: bool) -> anyhow::Result<ExitCode> {
    let mut meta_map = serde_json::Map::new();
    for m in meta {
        let Some((k, v)) = m.split_once('=') else { bail!("-meta {m:?}: expected KEY=VALUE") };
        meta_map.insert(k.to_string(), Value::String(v.to_string()));
    }
    let payload = match input {
        None => None,
        Some(file) => {
            let bytes = if file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).context("reading standard input")?;
                bytes
            } else {
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
            };
            Some(caravan_net::api::base64::encode(&bytes))
        }
    };
    let client = ApiClient::from_env();
    let body = json!({"JobID": id, "Payload": payload, "Meta": meta_map});
    let reply = client.post(&format!("/v1/job/{id}/dispatch"), &body)?;
    println!("Dispatched Job ID = {}", reply["DispatchedJobID"].as_str().unwrap_or(""));
    follow(&client, &reply, detach)
}

/// `job periodic force <job>`: launch a child now (Nomad prints the
/// evaluation it creates, then follows it).
pub(crate) fn periodic_force(id: &str, detach: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let reply = client.post(&format!("/v1/job/{id}/periodic/force"), &json!({}))?;
    follow(&client, &reply, detach)
}
