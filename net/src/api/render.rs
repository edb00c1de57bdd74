//! Engine model → Nomad's JSON shapes: the submitted job's shape for
//! `GET /v1/job/:id`, and the read shapes of [`super::read`].

use std::collections::BTreeMap;
use std::sync::Arc;

use caravan_engine::model::{self, ConfigValue, DeviceAttribute, RestartMode};
use serde_json::Value;

use super::job as api;
use super::read;

fn map(m: &BTreeMap<Arc<str>, Arc<str>>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn id_or_empty<T: std::fmt::Display>(id: Option<T>) -> String {
    id.map(|i| i.to_string()).unwrap_or_default()
}

/// Nanoseconds since the Unix epoch as Go marshals a `time.Time`: RFC 3339
/// in UTC, with fractional seconds only when there are any; 0 is Go's zero
/// time, `0001-01-01T00:00:00Z`, which is what Nomad prints for "unset".
pub fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return "0001-01-01T00:00:00Z".to_string();
    }
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

fn constraints(list: &[model::Constraint]) -> Option<Vec<api::Constraint>> {
    Some(
        list.iter()
            .map(|c| api::Constraint {
                l_target: Some(c.l_target.to_string()),
                r_target: Some(c.r_target.to_string()),
                operand: Some(c.operand.as_str().to_string()),
            })
            .collect(),
    )
}

fn affinities(list: &[model::Affinity]) -> Option<Vec<api::Affinity>> {
    Some(
        list.iter()
            .map(|a| api::Affinity {
                l_target: Some(a.l_target.to_string()),
                r_target: Some(a.r_target.to_string()),
                operand: Some(a.operand.as_str().to_string()),
                weight: Some(i64::from(a.weight)),
            })
            .collect(),
    )
}

fn spreads(list: &[model::Spread]) -> Option<Vec<api::Spread>> {
    Some(
        list.iter()
            .map(|s| api::Spread {
                attribute: Some(s.attribute.to_string()),
                weight: Some(i64::from(s.weight)),
                spread_target: Some(
                    s.targets
                        .iter()
                        .map(|t| api::SpreadTarget {
                            value: Some(t.value.to_string()),
                            percent: Some(i64::from(t.percent)),
                        })
                        .collect(),
                ),
            })
            .collect(),
    )
}

fn update(u: &model::UpdateStrategy) -> api::UpdateStrategy {
    api::UpdateStrategy {
        stagger: Some(u.stagger_ns),
        max_parallel: Some(i64::from(u.max_parallel)),
        health_check: Some(u.health_check.to_string()),
        min_healthy_time: Some(u.min_healthy_time_ns),
        healthy_deadline: Some(u.healthy_deadline_ns),
        progress_deadline: Some(u.progress_deadline_ns),
        canary: Some(i64::from(u.canary)),
        auto_revert: Some(u.auto_revert),
        auto_promote: Some(u.auto_promote),
    }
}

fn config(v: &ConfigValue) -> Value {
    match v {
        ConfigValue::Null => Value::Null,
        ConfigValue::Bool(b) => Value::Bool(*b),
        ConfigValue::Int(i) => Value::from(*i),
        ConfigValue::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        ConfigValue::String(s) => Value::String(s.to_string()),
        ConfigValue::List(items) => Value::Array(items.iter().map(config).collect()),
        ConfigValue::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.to_string(), config(v))).collect()),
    }
}

fn task(t: &model::Task) -> api::Task {
    let r = &t.resources;
    api::Task {
        name: Some(t.name.to_string()),
        driver: Some(t.driver.to_string()),
        user: Some(t.user.as_deref().unwrap_or("").to_string()),
        config: match config(&t.config) {
            Value::Object(m) => Some(m),
            _ => None,
        },
        constraints: constraints(&t.constraints),
        affinities: affinities(&t.affinities),
        env: Some(map(&t.env)),
        resources: Some(api::Resources {
            cpu: Some(i64::from(r.cpu_mhz)),
            cores: Some(i64::from(r.cores)),
            memory_mb: Some(i64::from(r.memory_mb)),
            memory_max_mb: Some(i64::from(r.memory_max_mb)),
            devices: Some(
                r.devices
                    .iter()
                    .map(|d| api::RequestedDevice {
                        name: Some(d.name.to_string()),
                        count: Some(i64::from(d.count)),
                        constraints: constraints(&d.constraints),
                        affinities: affinities(&d.affinities),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        meta: Some(map(&t.meta)),
        kill_timeout: Some(t.kill_timeout_ns),
        leader: Some(t.leader),
        // `Some(Null)` renders `"Lifecycle": null`, as Nomad shows a main task.
        lifecycle: Some(
            t.lifecycle.map_or(Value::Null, |l| serde_json::json!({"Hook": l.hook.as_str(), "Sidecar": l.sidecar})),
        ),
        dispatch_payload: Some(
            t.dispatch_payload_file.as_ref().map_or(Value::Null, |file| serde_json::json!({"File": &**file})),
        ),
        ..Default::default()
    }
}

fn group(g: &model::TaskGroup) -> api::TaskGroup {
    let port = |p: &model::PortRequest| api::Port {
        label: Some(p.label.to_string()),
        value: Some(i64::from(p.static_port.unwrap_or(0))),
        to: Some(i64::from(p.to)),
        host_network: None,
    };
    let networks = (!g.ports.is_empty()).then(|| {
        vec![api::NetworkResource {
            mode: Some("host".to_string()),
            reserved_ports: Some(g.ports.iter().filter(|p| p.static_port.is_some()).map(port).collect()),
            dynamic_ports: Some(g.ports.iter().filter(|p| p.static_port.is_none()).map(port).collect()),
            ..Default::default()
        }]
    });
    let rp = &g.restart_policy;
    api::TaskGroup {
        name: Some(g.name.to_string()),
        count: Some(i64::from(g.count)),
        constraints: constraints(&g.constraints),
        affinities: affinities(&g.affinities),
        spreads: spreads(&g.spreads),
        tasks: Some(g.tasks.iter().map(task).collect()),
        restart_policy: Some(api::RestartPolicy {
            interval: Some(rp.interval_ns),
            attempts: Some(i64::from(rp.attempts)),
            delay: Some(rp.delay_ns),
            mode: Some(match rp.mode {
                RestartMode::Fail => "fail".to_string(),
                RestartMode::Delay => "delay".to_string(),
            }),
            render_templates: None,
        }),
        reschedule_policy: g.reschedule_policy.as_ref().map(|r| api::ReschedulePolicy {
            attempts: Some(i64::from(r.attempts)),
            interval: Some(r.interval_ns),
            delay: Some(r.delay_ns),
            delay_function: Some(r.delay_function.as_str().to_string()),
            max_delay: Some(r.max_delay_ns),
            unlimited: Some(r.unlimited),
        }),
        ephemeral_disk: Some(api::EphemeralDisk {
            sticky: Some(false),
            migrate: Some(false),
            size_mb: Some(i64::from(g.ephemeral_disk_mb)),
        }),
        update: g.update.as_ref().map(update),
        migrate: g.migrate.as_ref().map(|m| api::MigrateStrategy {
            max_parallel: Some(i64::from(m.max_parallel)),
            health_check: Some(m.health_check.to_string()),
            min_healthy_time: Some(m.min_healthy_time_ns),
            healthy_deadline: Some(m.healthy_deadline_ns),
        }),
        networks,
        meta: Some(map(&g.meta)),
        max_client_disconnect: g.max_client_disconnect_ns,
        gang: Some(g.gang),
        gang_topology: g.gang_topology.as_ref().map(|t| t.to_string()),
        ..Default::default()
    }
}

/// An engine job in Nomad's shape, every modelled field set (what
/// `nomad job inspect` prints).
pub fn job_to_api(j: &model::Job) -> api::Job {
    api::Job {
        region: Some(j.region.to_string()),
        namespace: Some(j.namespace.to_string()),
        id: Some(j.id.to_string()),
        name: Some(j.name.to_string()),
        job_type: Some(j.job_type.as_str().to_string()),
        priority: Some(i64::from(j.priority)),
        all_at_once: Some(j.all_at_once),
        datacenters: Some(j.datacenters.iter().map(|d| d.to_string()).collect()),
        node_pool: Some(j.node_pool.to_string()),
        constraints: constraints(&j.constraints),
        affinities: affinities(&j.affinities),
        spreads: spreads(&j.spreads),
        task_groups: Some(j.task_groups.iter().map(group).collect()),
        update: j.update.as_ref().map(update),
        reschedule: None,
        migrate: None,
        meta: Some(map(&j.meta)),
        stop: Some(j.stop),
        gang: Some(j.gang),
        status: Some(j.status.as_str().to_string()),
        status_description: Some(String::new()),
        stable: Some(j.stable),
        version: Some(j.version),
        submit_time: Some(j.submit_time_ns),
        create_index: Some(j.create_index),
        modify_index: Some(j.modify_index),
        job_modify_index: Some(j.job_modify_index),
        parameterized_job: j.parameterized.as_ref().map(|p| {
            serde_json::json!({"Payload": p.payload.as_str(),
                "MetaRequired": p.meta_required.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                "MetaOptional": p.meta_optional.iter().map(|k| k.to_string()).collect::<Vec<_>>()})
        }),
        periodic: j.periodic.as_ref().map(periodic),
        payload: (!j.payload.is_empty()).then(|| Value::String(super::base64::encode(&j.payload))),
        parent_id: j.parent_id.as_ref().map(|p| p.to_string()),
        // Launched children of a periodic job are not "dispatched".
        dispatched: j
            .parent_id
            .as_ref()
            .filter(|p| !j.id.starts_with(&format!("{p}{}", model::PERIODIC_LAUNCH_SUFFIX)))
            .map(|_| true),
        ..Default::default()
    }
}

/// Nomad's `api.PeriodicConfig`: a job submitted with `cron` reads back
/// with `Spec`, one submitted with `crons` with `Specs`.
fn periodic(p: &model::Periodic) -> Value {
    let specs: Vec<String> = p.specs.iter().map(|s| s.to_string()).collect();
    let (spec, specs) = match (p.legacy_spec, specs.first()) {
        (true, Some(first)) => (first.clone(), Value::Null),
        _ => (String::new(), Value::from(specs)),
    };
    serde_json::json!({"Enabled": p.enabled, "Spec": spec, "Specs": specs, "SpecType": "cron",
        "ProhibitOverlap": p.prohibit_overlap, "TimeZone": p.time_zone.to_string()})
}

/// Count a job's allocations per group and client status, as Nomad's job
/// summary does (`queued` comes from the latest eval, passed in per group).
pub fn job_summary<'a>(
    job: &model::Job,
    allocs: impl IntoIterator<Item = &'a model::Allocation>,
    queued: &BTreeMap<Arc<str>, u32>,
) -> read::JobSummary {
    let mut summary: BTreeMap<String, read::TaskGroupSummary> =
        job.task_groups.iter().map(|g| (g.name.to_string(), read::TaskGroupSummary::default())).collect();
    for (name, n) in queued {
        if let Some(s) = summary.get_mut(&**name) {
            s.queued = u64::from(*n);
        }
    }
    for a in allocs {
        let Some(s) = summary.get_mut(a.group_name()) else { continue };
        match a.client_status {
            model::ClientStatus::Pending => s.starting += 1,
            model::ClientStatus::Running => s.running += 1,
            model::ClientStatus::Complete => s.complete += 1,
            model::ClientStatus::Failed => s.failed += 1,
            model::ClientStatus::Lost => s.lost += 1,
            model::ClientStatus::Unknown => s.unknown += 1,
        }
    }
    read::JobSummary {
        job_id: job.id.to_string(),
        namespace: job.namespace.to_string(),
        summary,
        children: read::JobChildrenSummary::default(),
        create_index: job.create_index,
        modify_index: job.modify_index,
    }
}

/// A template job's children by status (zeros for any other job).
pub fn children_summary(state: &caravan_engine::state::State, job: &model::Job) -> read::JobChildrenSummary {
    let mut children = read::JobChildrenSummary::default();
    if !job.is_template() {
        return children;
    }
    for child in caravan_engine::periodic::children(state, job) {
        match child.status {
            model::JobStatus::Pending => children.pending += 1,
            model::JobStatus::Running => children.running += 1,
            model::JobStatus::Dead => children.dead += 1,
        }
    }
    children
}

/// `GET /v1/jobs` entry.
pub fn job_stub(j: &model::Job, summary: Option<read::JobSummary>) -> read::JobListStub {
    read::JobListStub {
        id: j.id.to_string(),
        parent_id: j.parent_id.as_deref().unwrap_or_default().to_string(),
        name: j.name.to_string(),
        namespace: j.namespace.to_string(),
        datacenters: j.datacenters.iter().map(|d| d.to_string()).collect(),
        node_pool: j.node_pool.to_string(),
        job_type: j.job_type.as_str().to_string(),
        priority: j.priority,
        periodic: j.periodic.is_some(),
        parameterized_job: j.parameterized.is_some(),
        stop: j.stop,
        status: j.status.as_str().to_string(),
        status_description: String::new(),
        job_summary: summary,
        meta: map(&j.meta),
        create_index: j.create_index,
        modify_index: j.modify_index,
        job_modify_index: j.job_modify_index,
        submit_time: j.submit_time_ns,
    }
}

fn driver(d: &model::DriverInfo) -> read::DriverInfo {
    read::DriverInfo {
        attributes: map(&d.attributes),
        detected: d.detected,
        healthy: d.healthy,
        health_description: d.health_description.to_string(),
    }
}

fn attribute(a: &DeviceAttribute) -> read::Attribute {
    let unit = |u: &Option<Arc<str>>| u.as_deref().unwrap_or("").to_string();
    match a {
        DeviceAttribute::Int { value, unit: u } => {
            read::Attribute { int_val: Some(*value), unit: unit(u), ..Default::default() }
        }
        DeviceAttribute::Float { value, unit: u } => {
            read::Attribute { float_val: Some(*value), unit: unit(u), ..Default::default() }
        }
        DeviceAttribute::String(s) => read::Attribute { string_val: Some(s.to_string()), ..Default::default() },
        DeviceAttribute::Bool(b) => read::Attribute { bool_val: Some(*b), ..Default::default() },
    }
}

/// `GET /v1/node/:id`.
pub fn node_to_api(n: &model::Node) -> read::Node {
    let r = &n.resources;
    read::Node {
        id: n.id.to_string(),
        name: n.name.to_string(),
        datacenter: n.datacenter.to_string(),
        node_class: n.node_class.to_string(),
        node_pool: n.node_pool.to_string(),
        http_addr: n.http_addr.to_string(),
        attributes: map(&n.attributes),
        meta: map(&n.meta),
        node_resources: read::NodeResources {
            cpu: read::NodeCpuResources { cpu_shares: r.cpu_mhz, total_cpu_cores: r.cores },
            memory: read::NodeMemoryResources { memory_mb: r.memory_mb },
            disk: read::NodeDiskResources { disk_mb: r.disk_mb },
            devices: r
                .devices
                .iter()
                .map(|d| read::NodeDeviceResource {
                    vendor: d.vendor.to_string(),
                    kind: d.kind.to_string(),
                    name: d.name.to_string(),
                    instances: d
                        .instances
                        .iter()
                        .map(|i| read::NodeDevice {
                            id: i.id.to_string(),
                            healthy: i.healthy,
                            health_description: i.health_description.to_string(),
                            locality: i
                                .pci_bus_id
                                .as_ref()
                                .map(|p| read::NodeDeviceLocality { pci_bus_id: p.to_string() }),
                        })
                        .collect(),
                    attributes: d.attributes.iter().map(|(k, v)| (k.to_string(), attribute(v))).collect(),
                })
                .collect(),
            min_dynamic_port: r.min_dynamic_port,
            max_dynamic_port: r.max_dynamic_port,
        },
        reserved_resources: read::NodeReservedResources {
            cpu: read::NodeReservedCpuResources { cpu_shares: n.reserved.cpu_mhz },
            memory: read::NodeMemoryResources { memory_mb: n.reserved.memory_mb },
            disk: read::NodeDiskResources { disk_mb: n.reserved.disk_mb },
            networks: read::NodeReservedNetworkResources {
                reserved_host_ports: n.reserved.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
            },
        },
        drivers: n.drivers.iter().map(|(k, d)| (k.to_string(), driver(d))).collect(),
        drain: n.drain.is_some(),
        drain_strategy: n.drain.as_ref().map(|d| read::DrainStrategy {
            drain_spec: read::DrainSpec { deadline: d.deadline_ns, ignore_system_jobs: d.ignore_system_jobs },
            force_deadline: rfc3339(d.force_deadline_ns),
            started_at: rfc3339(d.started_at_ns),
        }),
        scheduling_eligibility: n.eligibility.as_str().to_string(),
        status: n.status.as_str().to_string(),
        status_description: n.status_description.to_string(),
        status_updated_at: n.status_updated_at_ns.div_euclid(model::SECOND_NS),
        computed_class: format!("{:016x}", n.computed_class),
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

/// `GET /v1/nodes` entry.
pub fn node_stub(n: &model::Node) -> read::NodeListStub {
    read::NodeListStub {
        address: n.http_addr.split(':').next().unwrap_or("").to_string(),
        id: n.id.to_string(),
        datacenter: n.datacenter.to_string(),
        name: n.name.to_string(),
        node_class: n.node_class.to_string(),
        node_pool: n.node_pool.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        drain: n.drain.is_some(),
        scheduling_eligibility: n.eligibility.as_str().to_string(),
        status: n.status.as_str().to_string(),
        status_description: n.status_description.to_string(),
        drivers: n.drivers.iter().map(|(k, d)| (k.to_string(), driver(d))).collect(),
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

fn allocated(a: &model::Allocation) -> read::AllocatedResources {
    let group = a.group();
    let mut tasks = BTreeMap::new();
    for (index, t) in group.tasks.iter().enumerate() {
        let devices = a
            .resources
            .devices
            .iter()
            .filter(|d| usize::from(d.task_index) == index)
            .map(|d| read::AllocatedDeviceResource {
                vendor: d.vendor.to_string(),
                kind: d.kind.to_string(),
                name: d.name.to_string(),
                device_ids: d.instance_ids.iter().map(|i| i.to_string()).collect(),
            })
            .collect();
        tasks.insert(
            t.name.to_string(),
            read::AllocatedTaskResources {
                cpu: read::AllocatedCpuResources {
                    cpu_shares: u64::from(t.resources.cpu_mhz),
                    reserved_cores: Vec::new(),
                },
                memory: read::AllocatedMemoryResources {
                    memory_mb: u64::from(t.resources.memory_mb),
                    memory_max_mb: u64::from(t.resources.memory_max_mb),
                },
                devices,
            },
        );
    }
    read::AllocatedResources {
        tasks,
        shared: read::AllocatedSharedResources {
            disk_mb: a.resources.comparable.disk_mb,
            ports: a
                .resources
                .ports
                .iter()
                .map(|p| read::PortMapping {
                    label: p.label.to_string(),
                    value: p.value,
                    to: p.to,
                    host_ip: String::new(),
                })
                .collect(),
        },
    }
}

fn tracker(a: &model::Allocation) -> Option<read::RescheduleTracker> {
    a.reschedule_tracker.as_ref().map(|t| read::RescheduleTracker {
        events: t
            .events
            .iter()
            .map(|e| read::RescheduleEvent {
                reschedule_time: e.at_ns,
                prev_alloc_id: e.prev_alloc_id.to_string(),
                prev_node_id: e.prev_node_id.to_string(),
                delay: e.delay_ns,
            })
            .collect(),
    })
}

/// `GET /v1/allocation/:id`; `node` supplies `NodeName` when known.
/// A task's state in Nomad's shape; times never set render as Go's zero
/// time, as Nomad does.
fn task_states_to_api(a: &model::Allocation) -> BTreeMap<String, read::TaskState> {
    let time = |ns: i64| if ns == 0 { "0001-01-01T00:00:00Z".to_string() } else { rfc3339(ns) };
    a.task_states
        .iter()
        .map(|(name, t)| {
            let events = t
                .events
                .iter()
                .map(|e| read::TaskEvent {
                    kind: e.kind.to_string(),
                    time: e.time_ns,
                    message: e.message.to_string(),
                    display_message: e.message.to_string(),
                    exit_code: e.exit_code.unwrap_or(0),
                    signal: e.signal.unwrap_or(0),
                    restart_reason: String::new(),
                    start_delay: e.restart_delay_ns.unwrap_or(0),
                    fails_task: e.fails_task,
                })
                .collect();
            let state = read::TaskState {
                state: t.state.as_str().to_string(),
                failed: t.failed,
                restarts: u64::from(t.restarts),
                last_restart: time(t.last_restart_ns),
                started_at: time(t.started_at_ns),
                finished_at: time(t.finished_at_ns),
                events,
            };
            (name.to_string(), state)
        })
        .collect()
}

pub fn alloc_to_api(a: &model::Allocation, node: Option<&model::Node>) -> read::Allocation {
    let t = a.desired_transition;
    read::Allocation {
        id: a.id.to_string(),
        namespace: a.job.namespace.to_string(),
        eval_id: a.eval_id.to_string(),
        name: a.name(),
        node_id: a.node_id.to_string(),
        node_name: node.map(|n| n.name.to_string()).unwrap_or_default(),
        job_id: a.job.id.to_string(),
        job: job_to_api(&a.job),
        task_group: a.group_name().to_string(),
        allocated_resources: allocated(a),
        desired_status: a.desired_status.as_str().to_string(),
        desired_description: a.desired_description.to_string(),
        // Nomad's fields are pointers: unset rather than false.
        desired_transition: read::DesiredTransition {
            migrate: t.migrate.then_some(true),
            reschedule: t.reschedule.then_some(true),
            force_reschedule: t.force_reschedule.then_some(true),
        },
        client_status: a.client_status.as_str().to_string(),
        client_description: a.client_description.to_string(),
        deployment_id: id_or_empty(a.deployment_id),
        deployment_status: alloc_deployment_status(a),
        followup_eval_id: id_or_empty(a.followup_eval_id),
        previous_allocation: id_or_empty(a.previous_alloc),
        next_allocation: id_or_empty(a.next_alloc),
        reschedule_tracker: tracker(a),
        preempted_by_allocation: id_or_empty(a.preempted_by),
        create_index: a.create_index,
        modify_index: a.modify_index,
        alloc_modify_index: a.alloc_modify_index,
        create_time: a.create_time_ns,
        modify_time: a.modify_time_ns,
        job_version: a.job.version,
        task_states: task_states_to_api(a),
    }
}

fn alloc_deployment_status(a: &model::Allocation) -> Option<read::AllocDeploymentStatus> {
    a.deployment_status.map(|s| read::AllocDeploymentStatus {
        healthy: s.healthy,
        timestamp: rfc3339(s.timestamp_ns),
        canary: s.canary,
        modify_index: s.modify_index,
    })
}

/// `GET /v1/allocations` entry; `node` supplies `NodeName` when known.
pub fn alloc_stub(a: &model::Allocation, node: Option<&model::Node>) -> read::AllocationListStub {
    read::AllocationListStub {
        id: a.id.to_string(),
        eval_id: a.eval_id.to_string(),
        name: a.name(),
        namespace: a.job.namespace.to_string(),
        node_id: a.node_id.to_string(),
        node_name: node.map(|n| n.name.to_string()).unwrap_or_default(),
        job_id: a.job.id.to_string(),
        job_type: a.job.job_type.as_str().to_string(),
        job_version: a.job.version,
        task_group: a.group_name().to_string(),
        allocated_resources: allocated(a),
        desired_status: a.desired_status.as_str().to_string(),
        desired_description: a.desired_description.to_string(),
        client_status: a.client_status.as_str().to_string(),
        client_description: a.client_description.to_string(),
        deployment_status: alloc_deployment_status(a),
        followup_eval_id: id_or_empty(a.followup_eval_id),
        next_allocation: id_or_empty(a.next_alloc),
        reschedule_tracker: tracker(a),
        preempted_by_allocation: id_or_empty(a.preempted_by),
        create_index: a.create_index,
        modify_index: a.modify_index,
        create_time: a.create_time_ns,
        modify_time: a.modify_time_ns,
        task_states: task_states_to_api(a),
    }
}

fn counts(m: &BTreeMap<Arc<str>, u32>) -> BTreeMap<String, u32> {
    m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// One task group's placement failure, as Nomad renders `AllocMetric`.
pub fn metric(m: &model::AllocMetric) -> read::AllocMetric {
    read::AllocMetric {
        nodes_evaluated: m.nodes_evaluated,
        nodes_filtered: m.nodes_filtered,
        nodes_in_pool: m.nodes_in_pool,
        nodes_available: counts(&m.nodes_available),
        class_filtered: counts(&m.class_filtered),
        constraint_filtered: counts(&m.constraint_filtered),
        nodes_exhausted: m.nodes_exhausted,
        class_exhausted: counts(&m.class_exhausted),
        dimension_exhausted: counts(&m.dimension_exhausted),
        allocation_time: m.allocation_time_ns,
        coalesced_failures: m.coalesced_failures,
    }
}

/// `GET /v1/evaluation/:id`.
pub fn eval_to_api(e: &model::Evaluation) -> read::Evaluation {
    read::Evaluation {
        id: e.id.to_string(),
        priority: e.priority,
        job_type: e.job_type.as_str().to_string(),
        triggered_by: e.triggered_by.as_str().to_string(),
        namespace: e.namespace.to_string(),
        job_id: e.job_id.to_string(),
        job_modify_index: e.job_modify_index,
        node_id: id_or_empty(e.node_id),
        node_modify_index: e.node_modify_index,
        deployment_id: id_or_empty(e.deployment_id),
        status: e.status.as_str().to_string(),
        status_description: e.status_description.to_string(),
        wait: e.wait_ns,
        wait_until: rfc3339(e.wait_until_ns),
        next_eval: id_or_empty(e.next_eval),
        previous_eval: id_or_empty(e.previous_eval),
        blocked_eval: id_or_empty(e.blocked_eval),
        failed_tg_allocs: e.failed_tg_allocs.iter().map(|(k, m)| (k.to_string(), metric(m))).collect(),
        class_eligibility: e.class_eligibility.iter().map(|(c, ok)| (format!("{c:016x}"), *ok)).collect(),
        escaped_computed_class: e.escaped_computed_class,
        annotate_plan: e.annotate_plan,
        queued_allocations: counts(&e.queued_allocations),
        snapshot_index: e.snapshot_index,
        create_index: e.create_index,
        modify_index: e.modify_index,
        create_time: e.create_time_ns,
        modify_time: e.modify_time_ns,
    }
}

/// `GET /v1/deployment/:id`: the record, each group's settings from the
/// deployment and its counts from the allocations it placed.
pub fn deployment_to_api<'a>(
    d: &model::Deployment,
    job: Option<&model::Job>,
    allocs: impl Iterator<Item = &'a model::Allocation>,
) -> read::Deployment {
    let mut task_groups: BTreeMap<String, read::DeploymentState> = BTreeMap::new();
    for g in &d.task_groups {
        task_groups.insert(
            g.name.to_string(),
            read::DeploymentState {
                auto_revert: g.auto_revert,
                auto_promote: g.auto_promote,
                promoted: g.promoted,
                progress_deadline: g.progress_deadline_ns,
                require_progress_by: rfc3339(g.require_progress_by_ns),
                desired_canaries: g.desired_canaries,
                desired_total: g.desired_total,
                ..Default::default()
            },
        );
    }
    let mut placed: Vec<&model::Allocation> = allocs.filter(|a| a.deployment_id == Some(d.id)).collect();
    placed.sort_by_key(|a| (a.create_index, a.id));
    for a in placed {
        let Some(state) = task_groups.get_mut(a.group_name()) else { continue };
        state.placed_allocs += 1;
        if a.is_canary() {
            state.placed_canaries.push(a.id.to_string());
        }
        match a.deployment_healthy() {
            Some(true) => state.healthy_allocs += 1,
            Some(false) => state.unhealthy_allocs += 1,
            None => {}
        }
    }
    read::Deployment {
        id: d.id.to_string(),
        namespace: d.job.namespace.to_string(),
        job_id: d.job.id.to_string(),
        job_version: d.job_version,
        job_modify_index: d.job_modify_index,
        job_spec_modify_index: d.job_modify_index,
        job_create_index: job.map_or(0, |j| j.create_index),
        is_multiregion: false,
        task_groups,
        status: d.status.as_str().to_string(),
        status_description: d.status_description.to_string(),
        create_index: d.create_index,
        modify_index: d.modify_index,
    }
}
