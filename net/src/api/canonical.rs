//! [`job_from_api`]: Nomad's canonicalization of a submitted job (the
//! `Canonicalize` methods of Nomad's `api` package), then conversion to the
//! engine's [`model::Job`] and the engine's validation.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;

use caravan_engine::model::{
    self, ConfigValue, ConstraintOp, DelayFunction, JobStatus, JobType, RestartMode, SECOND_NS,
};
use serde_json::Value;

use super::error::{ApiError, Problems};
use super::job::{
    Affinity, Constraint, MigrateStrategy, NetworkResource, ReschedulePolicy, Resources, RestartPolicy, Spread, Task,
    TaskGroup, UpdateStrategy,
};

/// Deepest task `Config` nesting converted. [`super::decode_job_request`]
/// refuses deeper bodies before parsing; this bound protects callers that
/// build an [`super::Job`] themselves.
pub const CONFIG_DEPTH_MAX: usize = 64;

/// Nomad's defaults (`api.DefaultResources`, `api.DefaultEphemeralDisk`,
/// `api.Task.Canonicalize`).
pub const DEFAULT_TASK_CPU_MHZ: u32 = 100;
pub const DEFAULT_TASK_MEMORY_MB: u32 = 300;
pub const DEFAULT_EPHEMERAL_DISK_MB: u32 = 300;
pub const DEFAULT_KILL_TIMEOUT_NS: i64 = 5 * SECOND_NS;
pub const DEFAULT_PRIORITY: u8 = 50;
/// `api.Affinity.Canonicalize` and `api.Spread.Canonicalize`.
pub const DEFAULT_WEIGHT: i64 = 50;

/// Canonicalize a submitted job as Nomad does, convert it, and validate it.
/// `Err` lists every problem, each with its JSON path.
pub fn job_from_api(job: super::Job) -> Result<model::Job, ApiError> {
    let mut cx = Cx::default();
    let converted = cx.job(job);
    if cx.p.is_empty() {
        // Validation messages read best about a job whose fields converted;
        // with conversion problems, defaults stand in and would mislead.
        if let Err(e) = caravan_engine::validate::validate_job(&converted) {
            cx.p.extend_validation(e);
        }
    }
    cx.p.finish()?;
    Ok(converted)
}

#[derive(Default)]
struct Cx {
    p: Problems,
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
}

fn arc(s: Option<String>) -> Arc<str> {
    s.unwrap_or_default().into()
}

fn arc_map(m: Option<BTreeMap<String, String>>) -> BTreeMap<Arc<str>, Arc<str>> {
    m.unwrap_or_default().into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// Whether a raw value is "unset" in Go's sense.
fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

impl Cx {
    fn problem(&mut self, path: &str, field: &str, what: impl Display) {
        self.p.push(&join(path, field), what);
    }

    /// `ParameterizedJob`: `Payload` (optional, required, forbidden),
    /// `MetaRequired`, `MetaOptional`.
    fn parameterized(&mut self, v: Option<&Value>) -> Option<model::Parameterized> {
        let v = v.filter(|v| !v.is_null())?;
        let Some(obj) = v.as_object() else {
            self.problem("", "ParameterizedJob", "must be an object");
            return None;
        };
        let payload = match obj.get("Payload") {
            None | Some(Value::Null) => Some(model::PayloadMode::Optional),
            Some(Value::String(p)) => model::PayloadMode::parse(p),
            Some(_) => None,
        };
        let payload = payload.unwrap_or_else(|| {
            self.problem("ParameterizedJob", "Payload", "must be \"optional\", \"required\" or \"forbidden\"");
            model::PayloadMode::Optional
        });
        let mut keys = |field: &str| -> Vec<Arc<str>> {
            match obj.get(field) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                    items.iter().filter_map(Value::as_str).map(Into::into).collect()
                }
                Some(_) => {
                    self.problem("ParameterizedJob", field, "must be a list of strings");
                    Vec::new()
                }
            }
        };
        let meta_required = keys("MetaRequired");
        let meta_optional = keys("MetaOptional");
        Some(model::Parameterized { payload, meta_required, meta_optional })
    }

    /// `Periodic`: `Enabled` (default true), `Spec` (the `cron` of a
    /// jobspec) or `Specs` (`crons`), `SpecType` (only "cron"),
    /// `ProhibitOverlap`, `TimeZone` (default "UTC"). The expressions and
    /// the zone are checked by the engine's validation.
    fn periodic(&mut self, v: Option<&Value>) -> Option<model::Periodic> {
        const AT: &str = "Periodic";
        let v = v.filter(|v| !v.is_null())?;
        let Some(obj) = v.as_object() else {
            self.problem("", AT, "must be an object");
            return None;
        };
        let mut flag = |field: &str, default: bool| match obj.get(field) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.problem(AT, field, "must be a boolean");
                default
            }
        };
        let enabled = flag("Enabled", true);
        let prohibit_overlap = flag("ProhibitOverlap", false);
        let mut text = |field: &str| -> Option<String> {
            match obj.get(field) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    self.problem(AT, field, "must be a string");
                    None
                }
            }
        };
        let spec = text("Spec").filter(|s| !s.is_empty());
        let spec_type = text("SpecType").unwrap_or_default();
        let time_zone = text("TimeZone").filter(|s| !s.is_empty()).unwrap_or_else(|| "UTC".to_string());
        if !spec_type.is_empty() && spec_type != "cron" {
            self.problem(AT, "SpecType", format!("unknown periodic specification type {spec_type:?} (only \"cron\")"));
        }
        let specs: Vec<Arc<str>> = match obj.get("Specs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(Value::as_str).map(Into::into).collect()
            }
            Some(_) => {
                self.problem(AT, "Specs", "must be a list of strings");
                Vec::new()
            }
        };
        let legacy_spec = spec.is_some();
        let specs = match (spec, specs.is_empty()) {
            (Some(spec), true) => vec![spec.into()],
            (None, _) => specs,
            (Some(spec), false) => {
                self.problem(AT, "Spec", "only one of cron (Spec) or crons (Specs) may be set");
                vec![spec.into()]
            }
        };
        Some(model::Periodic { enabled, specs, legacy_spec, prohibit_overlap, time_zone: time_zone.into() })
    }

    fn unsupported(&mut self, path: &str, field: &str, v: &Option<Value>) {
        if v.as_ref().is_some_and(|v| !is_empty_value(v)) {
            self.problem(path, field, "not supported by Caravan");
        }
    }

    /// An integer field in `min..=max`, converted to the engine's width;
    /// `fallback` stands in when it is out of range (the problem is recorded).
    fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        path: &str,
        field: &str,
        v: Option<i64>,
        range: (i64, i64),
        fallback: T,
    ) -> T {
        let Some(v) = v else { return fallback };
        let (min, max) = range;
        if v < 0 && min == 0 {
            self.problem(path, field, format!("must not be negative, got {v}"));
            return fallback;
        }
        if v < min || v > max {
            self.problem(path, field, format!("must be between {min} and {max}, got {v}"));
            return fallback;
        }
        T::try_from(v).unwrap_or(fallback)
    }

    /// A duration in nanoseconds: not negative.
    fn duration(&mut self, path: &str, field: &str, v: Option<i64>, fallback: i64) -> i64 {
        self.int(path, field, v, (0, i64::MAX), fallback)
    }

    fn job(&mut self, j: super::Job) -> model::Job {
        let periodic = self.periodic(j.periodic.as_ref());
        self.unsupported("", "Multiregion", &j.multiregion);
        let parameterized = self.parameterized(j.parameterized_job.as_ref());
        let payload = match &j.payload {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) => super::base64::decode(text).unwrap_or_else(|| {
                self.problem("", "Payload", "must be base64 (standard alphabet, padded)");
                Vec::new()
            }),
            Some(_) => {
                self.problem("", "Payload", "must be a base64 string");
                Vec::new()
            }
        };
        let job_type = match j.job_type.as_deref() {
            None | Some("") => JobType::Service,
            Some(t) => JobType::parse(t).unwrap_or_else(|| {
                self.problem("", "Type", format!("unknown job type {t:?} (service, batch, system, sysbatch)"));
                JobType::Service
            }),
        };
        let id = arc(j.id);
        let mut job = model::Job::new(&id, job_type, Vec::new());
        if let Some(name) = j.name.filter(|n| !n.is_empty()) {
            job.name = name.into();
        }
        if let Some(ns) = j.namespace.filter(|n| !n.is_empty()) {
            job.namespace = ns.into();
        }
        if let Some(region) = j.region.filter(|r| !r.is_empty()) {
            job.region = region.into();
        }
        job.priority = self.int("", "Priority", j.priority, (1, 100), DEFAULT_PRIORITY);
        job.all_at_once = j.all_at_once.unwrap_or(false);
        job.gang = j.gang.unwrap_or(false);
        if let Some(dcs) = j.datacenters.filter(|d| !d.is_empty()) {
            job.datacenters = dcs.into_iter().map(Into::into).collect();
        }
        if let Some(pool) = j.node_pool.filter(|p| !p.is_empty()) {
            job.node_pool = pool.into();
        }
        job.constraints = self.constraints("", "Constraints", j.constraints);
        job.affinities = self.affinities("", "Affinities", j.affinities);
        job.spreads = self.spreads("", j.spreads);
        job.meta = arc_map(j.meta);
        job.stop = j.stop.unwrap_or(false);
        job.parameterized = parameterized;
        job.periodic = periodic;
        job.payload = payload;
        job.parent_id = j.parent_id.filter(|p| !p.is_empty()).map(Into::into);
        job.update = match (&j.update, job_type) {
            (Some(u), _) => Some(self.update("Update", model::UpdateStrategy::default(), u)),
            // api.Job.Canonicalize gives service jobs the default strategy.
            (None, JobType::Service) => Some(model::UpdateStrategy::default()),
            (None, _) => None,
        };
        // Bookkeeping the servers overwrite on register; carried so that a
        // rendered job converts back unchanged.
        job.status = match j.status.as_deref() {
            Some("running") => JobStatus::Running,
            Some("dead") => JobStatus::Dead,
            _ => JobStatus::Pending,
        };
        job.stable = j.stable.unwrap_or(false);
        job.version = j.version.unwrap_or(0);
        job.submit_time_ns = j.submit_time.unwrap_or(0);
        job.create_index = j.create_index.unwrap_or(0);
        job.modify_index = j.modify_index.unwrap_or(0);
        job.job_modify_index = j.job_modify_index.unwrap_or(0);

        let groups = j.task_groups.unwrap_or_default();
        for (i, g) in groups.into_iter().enumerate() {
            let path = format!("TaskGroups[{i}]");
            let group = self.group(&path, g, &job, j.reschedule.as_ref(), j.migrate.as_ref());
            job.task_groups.push(group);
        }
        job
    }

    fn group(
        &mut self,
        path: &str,
        g: TaskGroup,
        job: &model::Job,
        job_reschedule: Option<&ReschedulePolicy>,
        job_migrate: Option<&MigrateStrategy>,
    ) -> model::TaskGroup {
        self.unsupported(path, "Services", &g.services);
        self.unsupported(path, "Volumes", &g.volumes);
        self.unsupported(path, "Scaling", &g.scaling);
        self.unsupported(path, "ShutdownDelay", &g.shutdown_delay);
        self.unsupported(path, "StopAfterClientDisconnect", &g.stop_after_client_disconnect);
        self.unsupported(path, "Disconnect", &g.disconnect);
        let count = self.int(path, "Count", g.count, (0, i64::from(u32::MAX)), 1u32);
        let mut group = model::TaskGroup::new(&g.name.unwrap_or_default(), count, job.job_type, Vec::new());
        group.constraints = self.constraints(path, "Constraints", g.constraints);
        group.affinities = self.affinities(path, "Affinities", g.affinities);
        group.spreads = self.spreads(path, g.spreads);
        group.meta = arc_map(g.meta);
        group.gang = g.gang.unwrap_or(false);
        group.gang_topology = g.gang_topology.filter(|t| !t.is_empty()).map(Into::into);
        group.max_client_disconnect_ns =
            g.max_client_disconnect.map(|ns| self.duration(path, "MaxClientDisconnect", Some(ns), 0));
        if let Some(r) = &g.restart_policy {
            group.restart_policy = self.restart(&join(path, "RestartPolicy"), group.restart_policy.clone(), r);
        }
        // Nomad merges the job's policy, then the group's, over the type's default.
        if let Some(base) = group.reschedule_policy.clone() {
            let mut policy = base;
            if let Some(r) = job_reschedule {
                policy = self.reschedule("Reschedule", policy, r);
            }
            if let Some(r) = &g.reschedule_policy {
                policy = self.reschedule(&join(path, "ReschedulePolicy"), policy, r);
            }
            group.reschedule_policy = Some(policy);
        }
        if job.job_type == JobType::Service {
            let mut migrate = model::MigrateStrategy::default();
            if let Some(m) = job_migrate {
                migrate = self.migrate("Migrate", migrate, m);
            }
            if let Some(m) = &g.migrate {
                migrate = self.migrate(&join(path, "Migrate"), migrate, m);
            }
            group.migrate = Some(migrate);
        }
        group.update = match (&job.update, &g.update) {
            (Some(base), Some(u)) => Some(self.update(&join(path, "Update"), base.clone(), u)),
            (Some(base), None) => Some(base.clone()),
            (None, Some(u)) => Some(self.update(&join(path, "Update"), model::UpdateStrategy::default(), u)),
            (None, None) => None,
        };
        if let Some(disk) = &g.ephemeral_disk {
            let disk_path = join(path, "EphemeralDisk");
            if disk.sticky == Some(true) {
                self.problem(&disk_path, "Sticky", "not supported by Caravan");
            }
            if disk.migrate == Some(true) {
                self.problem(&disk_path, "Migrate", "not supported by Caravan");
            }
            group.ephemeral_disk_mb =
                self.int(&disk_path, "SizeMB", disk.size_mb, (0, i64::from(u32::MAX)), DEFAULT_EPHEMERAL_DISK_MB);
        }
        let networks = g.networks.unwrap_or_default();
        if networks.len() > 1 {
            self.problem(path, "Networks", format!("at most one network per group, got {}", networks.len()));
        }
        for (i, n) in networks.into_iter().enumerate() {
            let ports = self.network(&format!("{path}.Networks[{i}]"), n);
            group.ports.extend(ports);
        }
        for (i, t) in g.tasks.unwrap_or_default().into_iter().enumerate() {
            let task = self.task(&format!("{path}.Tasks[{i}]"), t, &group.restart_policy);
            group.tasks.push(task);
        }
        group
    }

    fn network(&mut self, path: &str, n: NetworkResource) -> Vec<model::PortRequest> {
        match n.mode.as_deref() {
            None | Some("") | Some("host") => {}
            Some(other) => self.problem(path, "Mode", format!("network mode {other:?} is not supported by Caravan")),
        }
        self.unsupported(path, "DNS", &n.dns);
        self.unsupported(path, "Hostname", &n.hostname);
        let mut ports = Vec::new();
        for (field, is_static) in [("ReservedPorts", true), ("DynamicPorts", false)] {
            let list = if is_static { &n.reserved_ports } else { &n.dynamic_ports };
            for (i, port) in list.iter().flatten().enumerate() {
                let port_path = format!("{path}.{field}[{i}]");
                self.unsupported(&port_path, "HostNetwork", &port.host_network.clone().filter(|v| v != "default"));
                let static_port = if is_static {
                    Some(self.int(&port_path, "Value", Some(port.value.unwrap_or(0)), (1, 65535), 0u16))
                } else {
                    // A dynamic port's value is chosen by the scheduler; Nomad ignores it here.
                    None
                };
                let to = self.int(&port_path, "To", port.to, (0, 65535), 0u16);
                ports.push(model::PortRequest { label: arc(port.label.clone()), static_port, to });
            }
        }
        ports
    }

    fn task(&mut self, path: &str, t: Task, group_restart: &model::RestartPolicy) -> model::Task {
        self.unsupported(path, "Services", &t.services);
        self.unsupported(path, "Artifacts", &t.artifacts);
        self.unsupported(path, "Templates", &t.templates);
        self.unsupported(path, "Vault", &t.vault);
        self.unsupported(path, "VolumeMounts", &t.volume_mounts);
        self.unsupported(path, "KillSignal", &t.kill_signal);
        self.unsupported(path, "ShutdownDelay", &t.shutdown_delay);
        let mut task = model::Task::new(&t.name.unwrap_or_default(), &t.driver.unwrap_or_default());
        task.user = t.user.filter(|u| !u.is_empty()).map(Into::into);
        task.config = match t.config {
            None => ConfigValue::Null,
            Some(map) => self.config(&join(path, "Config"), Value::Object(map), 0),
        };
        task.env = arc_map(t.env);
        task.meta = arc_map(t.meta);
        task.constraints = self.constraints(path, "Constraints", t.constraints);
        task.affinities = self.affinities(path, "Affinities", t.affinities);
        task.kill_timeout_ns = self.duration(path, "KillTimeout", t.kill_timeout, DEFAULT_KILL_TIMEOUT_NS);
        task.leader = t.leader.unwrap_or(false);
        task.lifecycle = self.lifecycle(path, t.lifecycle.as_ref());
        task.dispatch_payload_file = self.dispatch_payload(path, t.dispatch_payload.as_ref());
        if let Some(r) = &t.restart_policy {
            let restart_path = join(path, "RestartPolicy");
            let merged = self.restart(&restart_path, group_restart.clone(), r);
            if merged != *group_restart {
                self.p.push(
                    &restart_path,
                    "a task restart policy differing from its group's is not supported by Caravan",
                );
            }
        }
        if let Some(r) = t.resources {
            task.resources = self.resources(&join(path, "Resources"), r);
        }
        task
    }

    /// `DispatchPayload`: `File`, a relative path the client writes the
    /// dispatched payload to, inside the task's `local/` directory (Nomad
    /// checks the same with `escapingfs.PathEscapesAllocDir`). An empty
    /// file means none, as in Nomad.
    fn dispatch_payload(&mut self, path: &str, v: Option<&Value>) -> Option<Arc<str>> {
        let v = v.filter(|v| !v.is_null())?;
        let path = join(path, "DispatchPayload");
        let Some(obj) = v.as_object() else {
            self.p.push(&path, "must be an object");
            return None;
        };
        let file = match obj.get("File") {
            None | Some(Value::Null) => return None,
            Some(Value::String(file)) if file.is_empty() => return None,
            Some(Value::String(file)) => file,
            Some(_) => {
                self.problem(&path, "File", "must be a string");
                return None;
            }
        };
        match model::dispatch_payload_file_problem(file) {
            None => Some(file.as_str().into()),
            Some(reason) => {
                self.problem(&path, "File", format!("{file:?} {reason}"));
                None
            }
        }
    }

    /// `Lifecycle`: `Hook` (prestart, poststart, poststop) and `Sidecar`. An
    /// empty hook means no lifecycle, as in `api.Task.Canonicalize`.
    fn lifecycle(&mut self, path: &str, v: Option<&Value>) -> Option<model::TaskLifecycle> {
        let v = v.filter(|v| !v.is_null())?;
        let path = join(path, "Lifecycle");
        let Some(obj) = v.as_object() else {
            self.p.push(&path, "must be an object");
            return None;
        };
        let sidecar = match obj.get("Sidecar") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.problem(&path, "Sidecar", "must be a boolean");
                false
            }
        };
        let hook = match obj.get("Hook") {
            None | Some(Value::Null) => return None,
            Some(Value::String(h)) if h.is_empty() => return None,
            Some(Value::String(h)) => model::LifecycleHook::parse(h)
                .ok_or_else(|| format!("invalid hook {h:?}: must be \"prestart\", \"poststart\" or \"poststop\"")),
            Some(_) => Err("must be a string".to_string()),
        };
        match hook {
            Ok(hook) => Some(model::TaskLifecycle { hook, sidecar }),
            Err(message) => {
                self.problem(&path, "Hook", message);
                None
            }
        }
    }

    fn resources(&mut self, path: &str, r: Resources) -> model::TaskResources {
        self.unsupported(path, "DiskMB", &r.disk_mb);
        self.unsupported(path, "Networks", &r.networks);
        self.unsupported(path, "NUMA", &r.numa);
        self.unsupported(path, "SecretsMB", &r.secrets_mb);
        let max = i64::from(u32::MAX);
        let cores = self.int(path, "Cores", r.cores, (0, max), 0u32);
        // api.Resources.Canonicalize: cpu defaults only when cores are unset.
        let cpu_default = if r.cores.is_none() { DEFAULT_TASK_CPU_MHZ } else { 0 };
        let mut res = model::TaskResources {
            cpu_mhz: self.int(path, "CPU", r.cpu, (0, max), cpu_default),
            cores,
            memory_mb: self.int(path, "MemoryMB", r.memory_mb, (0, max), DEFAULT_TASK_MEMORY_MB),
            memory_max_mb: self.int(path, "MemoryMaxMB", r.memory_max_mb, (0, max), 0u32),
            devices: Vec::new(),
        };
        for (i, d) in r.devices.unwrap_or_default().into_iter().enumerate() {
            let dpath = format!("{path}.Devices[{i}]");
            let name = d.name.unwrap_or_default();
            if name.is_empty() {
                self.problem(&dpath, "Name", "missing device name");
            } else if name.split('/').count() > 3 || name.split('/').any(str::is_empty) {
                self.problem(
                    &dpath,
                    "Name",
                    format!("invalid device name {name:?}: want type, vendor/type or vendor/type/model"),
                );
            }
            res.devices.push(model::DeviceRequest {
                name: name.into(),
                count: self.int(&dpath, "Count", d.count, (0, max), 1u32),
                constraints: self.constraints(&dpath, "Constraints", d.constraints),
                affinities: self.affinities(&dpath, "Affinities", d.affinities),
            });
        }
        res
    }

    fn config(&mut self, path: &str, v: Value, depth: usize) -> ConfigValue {
        if depth >= CONFIG_DEPTH_MAX {
            self.p.push(path, format!("nested deeper than {CONFIG_DEPTH_MAX} levels"));
            return ConfigValue::Null;
        }
        match v {
            Value::Null => ConfigValue::Null,
            Value::Bool(b) => ConfigValue::Bool(b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    ConfigValue::Int(i)
                } else if n.is_u64() {
                    self.p.push(path, format!("integer {n} is out of range"));
                    ConfigValue::Null
                } else {
                    ConfigValue::Float(n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(s) => ConfigValue::String(s.into()),
            Value::Array(items) => ConfigValue::List(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| self.config(&format!("{path}[{i}]"), v, depth + 1))
                    .collect(),
            ),
            Value::Object(map) => ConfigValue::Map(
                map.into_iter()
                    .map(|(k, v)| {
                        let value = self.config(&join(path, &k), v, depth + 1);
                        (Arc::from(k), value)
                    })
                    .collect(),
            ),
        }
    }

    fn operand(&mut self, path: &str, op: Option<&str>) -> ConstraintOp {
        match op {
            None | Some("") => ConstraintOp::Equal,
            Some(op) => op.parse().unwrap_or_else(|e| {
                self.problem(path, "Operand", e);
                ConstraintOp::Equal
            }),
        }
    }

    fn constraints(&mut self, path: &str, field: &str, list: Option<Vec<Constraint>>) -> Vec<model::Constraint> {
        let mut out = Vec::new();
        for (i, c) in list.unwrap_or_default().into_iter().enumerate() {
            let operand = self.operand(&format!("{}[{i}]", join(path, field)), c.operand.as_deref());
            out.push(model::Constraint { l_target: arc(c.l_target), r_target: arc(c.r_target), operand });
        }
        out
    }

    fn affinities(&mut self, path: &str, field: &str, list: Option<Vec<Affinity>>) -> Vec<model::Affinity> {
        let mut out = Vec::new();
        for (i, a) in list.unwrap_or_default().into_iter().enumerate() {
            let apath = format!("{}[{i}]", join(path, field));
            let operand = self.operand(&apath, a.operand.as_deref());
            let weight = self.int(&apath, "Weight", Some(a.weight.unwrap_or(DEFAULT_WEIGHT)), (-100, 100), 50i8);
            out.push(model::Affinity { l_target: arc(a.l_target), r_target: arc(a.r_target), operand, weight });
        }
        out
    }

    fn spreads(&mut self, path: &str, list: Option<Vec<Spread>>) -> Vec<model::Spread> {
        let mut out = Vec::new();
        for (i, s) in list.unwrap_or_default().into_iter().enumerate() {
            let spath = format!("{}[{i}]", join(path, "Spreads"));
            let weight = self.int(&spath, "Weight", Some(s.weight.unwrap_or(DEFAULT_WEIGHT)), (0, 100), 50u8);
            let mut targets = Vec::new();
            for (k, t) in s.spread_target.unwrap_or_default().into_iter().enumerate() {
                let tpath = format!("{spath}.SpreadTarget[{k}]");
                let percent = self.int(&tpath, "Percent", t.percent, (0, 100), 0u8);
                targets.push(model::SpreadTarget { value: arc(t.value), percent });
            }
            out.push(model::Spread { attribute: arc(s.attribute), weight, targets });
        }
        out
    }

    fn restart(&mut self, path: &str, base: model::RestartPolicy, r: &RestartPolicy) -> model::RestartPolicy {
        let mode = match r.mode.as_deref() {
            None | Some("") => base.mode,
            Some("fail") => RestartMode::Fail,
            Some("delay") => RestartMode::Delay,
            Some(other) => {
                self.problem(path, "Mode", format!("unknown restart mode {other:?} (fail, delay)"));
                base.mode
            }
        };
        model::RestartPolicy {
            attempts: self.int(path, "Attempts", r.attempts, (0, i64::from(u32::MAX)), base.attempts),
            interval_ns: self.duration(path, "Interval", r.interval, base.interval_ns),
            delay_ns: self.duration(path, "Delay", r.delay, base.delay_ns),
            mode,
        }
    }

    fn reschedule(
        &mut self,
        path: &str,
        base: model::ReschedulePolicy,
        r: &ReschedulePolicy,
    ) -> model::ReschedulePolicy {
        let delay_function = match r.delay_function.as_deref() {
            None | Some("") => base.delay_function,
            Some(f) => DelayFunction::parse(f).unwrap_or_else(|| {
                self.problem(
                    path,
                    "DelayFunction",
                    format!("unknown delay function {f:?} (constant, exponential, fibonacci)"),
                );
                base.delay_function
            }),
        };
        model::ReschedulePolicy {
            attempts: self.int(path, "Attempts", r.attempts, (0, i64::from(u32::MAX)), base.attempts),
            interval_ns: self.duration(path, "Interval", r.interval, base.interval_ns),
            delay_ns: self.duration(path, "Delay", r.delay, base.delay_ns),
            delay_function,
            max_delay_ns: self.duration(path, "MaxDelay", r.max_delay, base.max_delay_ns),
            unlimited: r.unlimited.unwrap_or(base.unlimited),
        }
    }

    fn update(&mut self, path: &str, base: model::UpdateStrategy, u: &UpdateStrategy) -> model::UpdateStrategy {
        let max = i64::from(u32::MAX);
        model::UpdateStrategy {
            stagger_ns: self.duration(path, "Stagger", u.stagger, base.stagger_ns),
            max_parallel: self.int(path, "MaxParallel", u.max_parallel, (0, max), base.max_parallel),
            health_check: u.health_check.clone().filter(|h| !h.is_empty()).map_or(base.health_check, Into::into),
            min_healthy_time_ns: self.duration(path, "MinHealthyTime", u.min_healthy_time, base.min_healthy_time_ns),
            healthy_deadline_ns: self.duration(path, "HealthyDeadline", u.healthy_deadline, base.healthy_deadline_ns),
            progress_deadline_ns: self.duration(
                path,
                "ProgressDeadline",
                u.progress_deadline,
                base.progress_deadline_ns,
            ),
            auto_revert: u.auto_revert.unwrap_or(base.auto_revert),
            auto_promote: u.auto_promote.unwrap_or(base.auto_promote),
            canary: self.int(path, "Canary", u.canary, (0, max), base.canary),
        }
    }

    fn migrate(&mut self, path: &str, base: model::MigrateStrategy, m: &MigrateStrategy) -> model::MigrateStrategy {
        model::MigrateStrategy {
            max_parallel: self.int(path, "MaxParallel", m.max_parallel, (0, i64::from(u32::MAX)), base.max_parallel),
            health_check: m.health_check.clone().filter(|h| !h.is_empty()).map_or(base.health_check, Into::into),
            min_healthy_time_ns: self.duration(path, "MinHealthyTime", m.min_healthy_time, base.min_healthy_time_ns),
            healthy_deadline_ns: self.duration(path, "HealthyDeadline", m.healthy_deadline, base.healthy_deadline_ns),
        }
    }
}
