//! `caravan deployment list|status|fail|pause|resume|promote`, as Nomad's
//! CLI; deployment ids may be given by a unique prefix.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::api_client::ApiClient;
use crate::reads::{print_json, s, short, table};

#[derive(Subcommand, Debug)]
pub(crate) enum DeploymentCommand {
    /// List deployments, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one deployment and its task groups' progress.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Mark a deployment failed.
    Fail { id: String },
    /// Pause a deployment.
    Pause { id: String },
    /// Resume a paused deployment.
    Resume { id: String },
    /// Promote a deployment's canaries (all groups, or `-group` ones).
    Promote {
        id: String,
        #[arg(long = "group")]
        groups: Vec<String>,
    },
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(cmd: DeploymentCommand) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let resolve = |id: &str| client.resolve_id("/v1/deployments", "deployment", id);
    match cmd {
        DeploymentCommand::List { json } => {
            let list = client.get("/v1/deployments")?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    vec![
                        short(&d["ID"]),
                        s(&d["JobID"]),
                        s(&d["JobVersion"]),
                        s(&d["Status"]),
                        s(&d["StatusDescription"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("No deployments found");
            } else {
                table(&["ID", "Job ID", "Job Version", "Status", "Description"], &rows);
            }
        }
        DeploymentCommand::Status { id, json } => {
            let id = resolve(&id)?;
            let d = client.get(&format!("/v1/deployment/{id}"))?;
            if json {
                return print_json(&d);
            }
            print_status(&d);
        }
        DeploymentCommand::Fail { id } => {
            let id = resolve(&id)?;
            client.post(&format!("/v1/deployment/fail/{id}"), &json!({"DeploymentID": id}))?;
            println!("Deployment {:?} failed", short(&Value::String(id)));
        }
        DeploymentCommand::Pause { id } => {
            let id = resolve(&id)?;
            client.post(&format!("/v1/deployment/pause/{id}"), &json!({"DeploymentID": id, "Pause": true}))?;
            println!("Deployment {:?} paused", short(&Value::String(id)));
        }
        DeploymentCommand::Resume { id } => {
            let id = resolve(&id)?;
            client.post(&format!("/v1/deployment/pause/{id}"), &json!({"DeploymentID": id, "Pause": false}))?;
            println!("Deployment {:?} resumed", short(&Value::String(id)));
        }
        DeploymentCommand::Promote { id, groups } => {
            let id = resolve(&id)?;
            let body = json!({"DeploymentID": id, "All": groups.is_empty(), "Groups": groups});
            client.post(&format!("/v1/deployment/promote/{id}"), &body)?;
            println!("Deployment {:?} promoted", short(&Value::String(id)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
fn print_status(d: &Value) {
    for (label, key) in [
        ("ID", "ID"),
        ("Job ID", "JobID"),
        ("Job Version", "JobVersion"),
        ("Status", "Status"),
        ("Description", "StatusDescription"),
    ] {
        println!("{label:<11} = {}", s(&d[key]));
    }
    println!("\nDeployed");
    let groups: Vec<(&String, &Value)> = d["TaskGroups"].as_object().into_iter().flatten().collect();
    // Nomad adds the canary columns when some group has canaries.
    let canaries = groups.iter().any(|(_, g)| g["DesiredCanaries"].as_u64().unwrap_or(0) > 0);
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|(name, g)| {
            let mut row = vec![(*name).clone()];
            if canaries {
                row.push(s(&g["Promoted"]));
            }
            row.push(s(&g["DesiredTotal"]));
            if canaries {
                row.push(s(&g["DesiredCanaries"]));
            }
            row.extend([s(&g["PlacedAllocs"]), s(&g["HealthyAllocs"]), s(&g["UnhealthyAllocs"])]);
            row
        })
        .collect();
    if canaries {
        table(&["Task Group", "Promoted", "Desired", "Canaries", "Placed", "Healthy", "Unhealthy"], &rows);
    } else {
        table(&["Task Group", "Desired", "Placed", "Healthy", "Unhealthy"], &rows);
    }
}
