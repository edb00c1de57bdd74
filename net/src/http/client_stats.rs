//! `GET /v1/client/stats` and `GET /v1/client/allocation/<alloc_id>/stats`:
//! the usage a client measures, in Nomad's shapes (`HostStats`,
//! `AllocResourceUsage`), device stats included (`DeviceGroupStats`: per
//! device group, each instance's `Summary` and `Stats` as `StatValue`s).
//!
//! The numbers live on the client: this agent answers from its own client
//! through [`LocalStats`] (the agent fills it, as [`LocalLogs`] for the
//! files), and sends a request for another node on to that node's agent,
//! as `/v1/client/fs/*` is (`fs_forward.rs`): an allocation's stats go to
//! the allocation's node, `/v1/client/stats?node_id=` to that node.
//!
//! What is measured: host memory and uptime, and devices. CPU and disk
//! usage of the host (`CPU`, `DiskStats`) are empty lists, and an
//! allocation's or task's memory and CPU usage are zeros with an empty
//! `Measured` list, which is how Nomad says a value was not measured.
//!
//! [`LocalLogs`]: super::LocalLogs

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use caravan_engine::ids::{AllocId, NodeId};
use caravan_engine::model::NodeStatus;
use serde_json::{Map, Value, json};

use super::client_fs::{LocalLogsError, LogsState};
use super::fs_forward::{FORWARDED_HEADER, forward, remote_route};
use super::handlers::{refuse, reply};

/// Nomad's `StatValue`: a number (with an optional denominator, e.g. used
/// of total), or a string (`N/A` when a device did not report it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatValue {
    pub int_numerator: Option<i64>,
    pub int_denominator: Option<i64>,
    pub string: Option<String>,
    pub unit: String,
    pub desc: String,
}

/// Nomad's `DeviceStats`: one device instance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceStats {
    pub summary: StatValue,
    /// `Stats.Attributes`, by name.
    pub attributes: BTreeMap<String, StatValue>,
    /// When the values were read, ns since the epoch.
    pub timestamp_ns: i64,
}

/// Nomad's `DeviceGroupStats`: the instances of one device group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceGroupStats {
    pub vendor: String,
    /// Nomad's `Type` (`gpu`).
    pub kind: String,
    pub name: String,
    /// By instance id.
    pub instances: BTreeMap<String, DeviceStats>,
}

/// Nomad's `HostMemoryStats`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostMemoryStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// What `/v1/client/stats` reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostStats {
    pub memory: Option<HostMemoryStats>,
    pub uptime_s: u64,
    pub devices: Vec<DeviceGroupStats>,
    pub timestamp_ns: i64,
}

/// What `/v1/client/allocation/<id>/stats` reports: the device stats of the
/// instances assigned to the allocation, in all and per task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AllocStats {
    pub devices: Vec<DeviceGroupStats>,
    /// By task name; every task of the allocation, with its own devices.
    pub tasks: BTreeMap<String, Vec<DeviceGroupStats>>,
    pub timestamp_ns: i64,
}

/// The usage of the client running in this agent.
pub trait LocalStats: Send + Sync + std::fmt::Debug + 'static {
    /// This client's node id, once it has one; `None` before the client runs.
    fn node_id(&self) -> Option<NodeId>;

    /// The host's usage now.
    fn host_stats(&self) -> HostStats;

    /// An allocation's usage now; `UnknownAlloc` when this client does not
    /// hold it.
    fn alloc_stats(&self, alloc_id: AllocId) -> Result<AllocStats, LocalLogsError>;
}

/// `GET /v1/client/stats[?node_id=]`.
pub(super) async fn host_stats_handler(
    State(ctx): LogsState,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let wanted = match params.get("node_id").map(String::as_str) {
        None | Some("") => None,
        Some(text) => match text.parse::<NodeId>() {
            Ok(id) => Some(id),
            Err(_) => return refuse(StatusCode::BAD_REQUEST, format!("malformed node id {text:?}")),
        },
    };
    let local = ctx.stats.as_ref().filter(|stats| match wanted {
        None => true,
        Some(id) => stats.node_id() == Some(id),
    });
    if let Some(stats) = local {
        return reply(0, &host_stats_json(&stats.host_stats()));
    }
    let Some(node_id) = wanted else {
        return refuse(
            StatusCode::NOT_IMPLEMENTED,
            "no client runs in this agent: ask for a node's stats with ?node_id=<node id>",
        );
    };
    if headers.contains_key(FORWARDED_HEADER) {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("node {node_id} is not this agent's client, though another agent forwarded the request here"),
        );
    }
    let Some(server) = &ctx.server else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("node {node_id} is not this client, and a client-only agent cannot look up other nodes"),
        );
    };
    let snapshot = server.store().snapshot();
    let Some(node) = snapshot.node(node_id) else {
        return refuse(StatusCode::NOT_FOUND, format!("unknown node {node_id}"));
    };
    let name = format!("{} ({})", node.id, node.name);
    if node.status == NodeStatus::Down {
        return refuse(StatusCode::BAD_GATEWAY, format!("node {name} is down: its client cannot be reached"));
    }
    if node.http_addr.is_empty() {
        return refuse(StatusCode::BAD_GATEWAY, format!("node {name} registered no HTTP address"));
    }
    let http_addr = node.http_addr.to_string();
    drop(snapshot);
    forward(&name, &http_addr, &uri).await
}

/// `GET /v1/client/allocation/<alloc_id>/stats`.
pub(super) async fn alloc_stats_handler(
    State(ctx): LogsState,
    Path(alloc_text): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Ok(alloc_id) = alloc_text.parse::<AllocId>() else {
        return refuse(StatusCode::BAD_REQUEST, format!("malformed allocation id {alloc_text:?}"));
    };
    if let Some(stats) = &ctx.stats {
        match stats.alloc_stats(alloc_id) {
            Ok(found) => return reply(0, &alloc_stats_json(&found)),
            Err(LocalLogsError::UnknownAlloc(_) | LocalLogsError::UnknownTask { .. }) => {}
            Err(err @ LocalLogsError::Io(_)) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }
    match remote_route(&ctx, ctx.stats.is_some(), &alloc_text, &headers) {
        Ok((node, http_addr)) => forward(&node, &http_addr, &uri).await,
        Err((status, message)) => refuse(status, message),
    }
}

fn stat_value_json(value: &StatValue) -> Value {
    let mut object = Map::new();
    if let Some(n) = value.int_numerator {
        object.insert("IntNumeratorVal".into(), json!(n));
    }
    if let Some(d) = value.int_denominator {
        object.insert("IntDenominatorVal".into(), json!(d));
    }
    if let Some(s) = &value.string {
        object.insert("StringVal".into(), json!(s));
    }
    object.insert("Unit".into(), json!(value.unit));
    object.insert("Desc".into(), json!(value.desc));
    Value::Object(object)
}

/// Nomad's `[]*DeviceGroupStats`.
fn device_groups_json(groups: &[DeviceGroupStats]) -> Value {
    Value::Array(
        groups
            .iter()
            .map(|group| {
                let instances: Map<String, Value> = group
                    .instances
                    .iter()
                    .map(|(id, stats)| {
                        let attributes: Map<String, Value> =
                            stats.attributes.iter().map(|(name, v)| (name.clone(), stat_value_json(v))).collect();
                        let one = json!({
                            "Summary": stat_value_json(&stats.summary),
                            "Stats": {"Attributes": attributes, "Nested": null},
                            "Timestamp": crate::api::rfc3339(stats.timestamp_ns),
                        });
                        (id.clone(), one)
                    })
                    .collect();
                json!({"Vendor": group.vendor, "Type": group.kind, "Name": group.name, "InstanceStats": instances})
            })
            .collect(),
    )
}

/// Nomad's `HostStats`.
fn host_stats_json(stats: &HostStats) -> Value {
    let memory = stats.memory.map(
        |m| json!({"Total": m.total_bytes, "Available": m.available_bytes, "Used": m.used_bytes, "Free": m.free_bytes}),
    );
    json!({
        "Memory": memory,
        "CPU": [],
        "DiskStats": [],
        "AllocDirStats": null,
        "DeviceStats": device_groups_json(&stats.devices),
        "Uptime": stats.uptime_s,
        "Timestamp": stats.timestamp_ns,
        "CPUTicksConsumed": 0.0,
    })
}

/// Nomad's `ResourceUsage` with memory and CPU not measured.
fn resource_usage_json(devices: &[DeviceGroupStats]) -> Value {
    json!({
        "MemoryStats": {
            "RSS": 0, "Cache": 0, "Swap": 0, "MappedFile": 0, "Usage": 0, "MaxUsage": 0,
            "KernelUsage": 0, "KernelMaxUsage": 0, "Measured": [],
        },
        "CpuStats": {
            "SystemMode": 0.0, "UserMode": 0.0, "TotalTicks": 0.0, "ThrottledPeriods": 0,
            "ThrottledTime": 0, "Percent": 0.0, "Measured": [],
        },
        "DeviceStats": device_groups_json(devices),
    })
}

/// Nomad's `AllocResourceUsage`.
fn alloc_stats_json(stats: &AllocStats) -> Value {
    let tasks: Map<String, Value> = stats
        .tasks
        .iter()
        .map(|(name, devices)| {
            let task = json!({
                "ResourceUsage": resource_usage_json(devices),
                "Timestamp": stats.timestamp_ns,
                "Pids": null,
            });
            (name.clone(), task)
        })
        .collect();
    json!({
        "ResourceUsage": resource_usage_json(&stats.devices),
        "Tasks": tasks,
        "Timestamp": stats.timestamp_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_stats_render_in_nomads_shape() {
        let mut attributes = BTreeMap::new();
        attributes.insert(
            "Temperature".to_string(),
            StatValue { int_numerator: Some(40), unit: "C".into(), desc: "t".into(), ..StatValue::default() },
        );
        attributes.insert(
            "Power usage".to_string(),
            StatValue { string: Some("N/A".into()), unit: "W".into(), desc: "p".into(), ..StatValue::default() },
        );
        let summary = StatValue {
            int_numerator: Some(10),
            int_denominator: Some(100),
            unit: "MiB".into(),
            desc: "UsedMemory / TotalMemory".into(),
            ..StatValue::default()
        };
        let group = DeviceGroupStats {
            vendor: "nvidia".into(),
            kind: "gpu".into(),
            name: "NVIDIA H200".into(),
            instances: [("GPU-1".to_string(), DeviceStats { summary, attributes, timestamp_ns: 0 })].into(),
        };
        let text = serde_json::to_string(&device_groups_json(&[group])).unwrap();
        expect_test::expect![[r#"[{"InstanceStats":{"GPU-1":{"Stats":{"Attributes":{"Power usage":{"Desc":"p","StringVal":"N/A","Unit":"W"},"Temperature":{"Desc":"t","IntNumeratorVal":40,"Unit":"C"}},"Nested":null},"Summary":{"Desc":"UsedMemory / TotalMemory","IntDenominatorVal":100,"IntNumeratorVal":10,"Unit":"MiB"},"Timestamp":"0001-01-01T00:00:00Z"}},"Name":"NVIDIA H200","Type":"gpu","Vendor":"nvidia"}]"#]]
        .assert_eq(&text);
    }
}
