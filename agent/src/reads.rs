//! Read-only verbs that render the HTTP API as Nomad's CLI tables:
//! `node status`, `eval status|list`, `alloc status`, `server members`,
//! `operator raft list-peers`, `status`. `-json` prints the API's JSON.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use crate::api_client::ApiClient;

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCommand {
    /// List nodes, or show one.
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start or stop draining a node.
    Drain {
        id: String,
        #[arg(long)]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// How long allocations may take to leave, e.g. 1h (default 1h).
        #[arg(long, default_value = "1h")]
        deadline: String,
        #[arg(long = "ignore-system")]
        ignore_system: bool,
    },
    /// Allow or forbid new placements on a node.
    Eligibility {
        id: String,
        #[arg(long)]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum EvalCommand {
    /// Show one evaluation.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List evaluations.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AllocCommand {
    /// Show one allocation.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop an allocation; the scheduler replaces it.
    Stop { id: String },
    /// Show a task's stdout or stderr.
    Logs(crate::alloc_logs::LogsArgs),
    /// List a directory of an allocation or print one of its files.
    Fs(crate::alloc_logs::FsArgs),
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn short(v: &Value) -> String {
    let text = s(v);
    text.get(..8).map(str::to_string).unwrap_or(text)
}

#[allow(clippy::print_stdout)]
pub(crate) fn print_json(v: &Value) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

/// Rows padded to their widest cell, two spaces apart, as Nomad prints.
#[allow(clippy::print_stdout)]
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(header.to_vec()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

pub(crate) fn node(cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let (id, json) = match cmd {
        NodeCommand::Status { id, json } => (id, json),
        NodeCommand::Drain { id, enable, disable, deadline, ignore_system } => {
            anyhow::ensure!(enable != disable, "exactly one of -enable or -disable is required");
            let spec = if enable {
                let ns = caravan_net::jobspec::parse_duration_ns(&deadline)
                    .ok_or_else(|| anyhow::anyhow!("invalid -deadline {deadline:?}"))?;
                serde_json::json!({"DrainSpec": {"Deadline": ns, "IgnoreSystemJobs": ignore_system}, "MarkEligible": false})
            } else {
                serde_json::json!({"DrainSpec": null, "MarkEligible": true})
            };
            let id = client.resolve_id("/v1/nodes", "node", &id)?;
            client.post(&format!("/v1/node/{id}/drain"), &spec)?;
            #[allow(clippy::print_stdout)]
            {
                println!("Node {:?} drain strategy {}", id, if enable { "set" } else { "unset" });
            }
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::Eligibility { id, enable, disable } => {
            anyhow::ensure!(enable != disable, "exactly one of -enable or -disable is required");
            let id = client.resolve_id("/v1/nodes", "node", &id)?;
            let body = serde_json::json!({"Eligibility": if enable { "eligible" } else { "ineligible" }});
            client.post(&format!("/v1/node/{id}/eligibility"), &body)?;
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "Node {:?} scheduling eligibility set: {}",
                    id,
                    if enable { "eligible" } else { "ineligible" }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    match id {
        None => {
            let nodes = client.get("/v1/nodes")?;
            if json {
                return print_json(&nodes);
            }
            let rows: Vec<Vec<String>> = nodes
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    vec![
                        short(&n["ID"]),
                        s(&n["Datacenter"]),
                        s(&n["Name"]),
                        s(&n["NodeClass"]),
                        s(&n["Drain"]),
                        s(&n["SchedulingEligibility"]),
                        s(&n["Status"]),
                    ]
                })
                .collect();
            table(&["ID", "DC", "Name", "Class", "Drain", "Eligibility", "Status"], &rows);
        }
        Some(id) => {
            let id = client.resolve_id("/v1/nodes", "node", &id)?;
            let node = client.get(&format!("/v1/node/{id}"))?;
            if json {
                return print_json(&node);
            }
            #[allow(clippy::print_stdout)]
            {
                for key in ["ID", "Name", "Datacenter", "NodePool", "Status", "SchedulingEligibility", "Drain"] {
                    println!("{key:<22} = {}", s(&node[key]));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn eval(cmd: EvalCommand) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    match cmd {
        EvalCommand::Status { id, json } => {
            let id = client.resolve_id("/v1/evaluations", "evaluation", &id)?;
            let eval = client.get(&format!("/v1/evaluation/{id}"))?;
            if json {
                return print_json(&eval);
            }
            #[allow(clippy::print_stdout)]
            {
                for key in
                    ["ID", "Status", "StatusDescription", "Type", "TriggeredBy", "JobID", "Priority", "BlockedEval"]
                {
                    println!("{key:<18} = {}", s(&eval[key]));
                }
                if let Some(failed) = eval["FailedTGAllocs"].as_object().filter(|m| !m.is_empty()) {
                    println!("\nFailed Placements");
                    for (group, metric) in failed {
                        println!(
                            "Task Group \"{group}\": {} nodes evaluated, {} filtered, {} exhausted",
                            s(&metric["NodesEvaluated"]),
                            s(&metric["NodesFiltered"]),
                            s(&metric["NodesExhausted"])
                        );
                    }
                }
            }
        }
        EvalCommand::List { json } => {
            let evals = client.get("/v1/evaluations")?;
            if json {
                return print_json(&evals);
            }
            let rows: Vec<Vec<String>> = evals
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    vec![
                        short(&e["ID"]),
                        s(&e["Priority"]),
                        s(&e["TriggeredBy"]),
                        s(&e["JobID"]),
                        s(&e["Status"]),
                        s(&e["FailedTGAllocs"].as_object().map_or(0, |m| m.len()).into()),
                    ]
                })
                .collect();
            table(&["ID", "Priority", "Triggered By", "Job ID", "Status", "Placement Failures"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn alloc(cmd: AllocCommand) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let (id, json) = match cmd {
        AllocCommand::Status { id, json } => (client.resolve_id("/v1/allocations", "allocation", &id)?, json),
        AllocCommand::Logs(args) => return crate::alloc_logs::run(args),
        AllocCommand::Fs(args) => return crate::alloc_logs::run_fs(args),
        AllocCommand::Stop { id } => {
            let id = client.resolve_id("/v1/allocations", "allocation", &id)?;
            let reply = client.post(&format!("/v1/allocation/{id}/stop"), &serde_json::json!({}))?;
            #[allow(clippy::print_stdout)]
            {
                println!("==> Allocation {id:?} stopping; evaluation {:?}", s(&reply["EvalID"]));
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let alloc = client.get(&format!("/v1/allocation/{id}"))?;
    if json {
        return print_json(&alloc);
    }
    #[allow(clippy::print_stdout)]
    {
        for key in [
            "ID",
            "EvalID",
            "Name",
            "NodeID",
            "NodeName",
            "JobID",
            "JobVersion",
            "ClientStatus",
            "DesiredStatus",
            "DesiredDescription",
        ] {
            println!("{key:<20} = {}", s(&alloc[key]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `server members`: the servers of the cluster (one in dev mode), from
/// `/v1/agent/members`, as Nomad prints them.
pub(crate) fn server_members(json: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let members = client.get("/v1/agent/members")?;
    if json {
        return print_json(&members["Members"]);
    }
    let rows: Vec<Vec<String>> = members["Members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let tags = &m["Tags"];
            vec![
                s(&m["Name"]),
                s(&m["Addr"]),
                s(&m["Port"]),
                s(&m["Status"]),
                s(&tags["leader"]),
                s(&tags["raft_vsn"]),
                s(&tags["build"]),
                s(&tags["dc"]),
                s(&tags["region"]),
            ]
        })
        .collect();
    table(&["Name", "Address", "Port", "Status", "Leader", "Raft Version", "Build", "Datacenter", "Region"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `operator raft list-peers`.
pub(crate) fn raft_peers() -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let config = client.get("/v1/operator/raft/configuration")?;
    let rows: Vec<Vec<String>> = config["Servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let state = if p["Leader"].as_bool() == Some(true) { "leader" } else { "follower" };
            vec![s(&p["Node"]), s(&p["ID"]), s(&p["Address"]), state.into(), s(&p["Voter"])]
        })
        .collect();
    table(&["Node", "ID", "Address", "State", "Voter"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `status`: every job, as `nomad status` lists them.
pub(crate) fn status() -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let jobs = client.get("/v1/jobs")?;
    let rows: Vec<Vec<String>> = jobs
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| vec![s(&j["ID"]), s(&j["Type"]), s(&j["Priority"]), s(&j["Status"])])
        .collect();
    if rows.is_empty() {
        #[allow(clippy::print_stdout)]
        {
            println!("No running jobs");
        }
        return Ok(ExitCode::SUCCESS);
    }
    table(&["ID", "Type", "Priority", "Status"], &rows);
    Ok(ExitCode::SUCCESS)
}
