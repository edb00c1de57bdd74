//! The jobspec's blocks and attributes: HCL names, the API JSON names they become (from
//! Nomad's `api/jobs.go`, `api/tasks.go`, `api/resources.go`, `api/constraint.go`, ...) and
//! how each value is read. Anything not in these tables is rejected, as Nomad rejects it.

/// How an attribute's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Int,
    Bool,
    /// A Go duration string ("30s"), or a whole number of nanoseconds.
    Duration,
    StrList,
    /// An object whose values become strings (`meta`, `env`).
    StrMap,
    /// Any value, converted to JSON as is.
    Any,
    /// Constraint/affinity shorthand (`regexp = "..."`): the value goes to `target` and the
    /// `Operand` becomes `operand`.
    Shorthand {
        operand: &'static str,
        target: &'static str,
    },
    /// `distinct_hosts = true`: sets `Operand` to "distinct_hosts".
    DistinctHosts,
}

#[derive(Debug)]
pub(super) struct Attr {
    pub(super) hcl: &'static str,
    pub(super) json: &'static str,
    pub(super) kind: Kind,
}

/// What a block's body holds.
#[derive(Debug)]
pub(super) enum BodyKind {
    Fields(&'static Schema),
    /// Driver `config`: any attributes and blocks, kept as JSON.
    FreeForm,
    /// `meta { k = "v" }`, `env { ... }`.
    StrMap,
}

#[derive(Debug)]
pub(super) struct BlockSpec {
    pub(super) hcl: &'static str,
    pub(super) json: &'static str,
    /// The JSON key the block's label goes to; `None` for blocks without a label.
    pub(super) label: Option<&'static str>,
    /// Repeated blocks become a JSON array; the others may appear once.
    pub(super) many: bool,
    pub(super) body: BodyKind,
}

/// Fix-ups Nomad applies after decoding a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Post {
    None,
    /// Ports with a `static` value move from `DynamicPorts` to `ReservedPorts`.
    Network,
    /// Nomad's template defaults (change mode, perms, splay, error on missing key).
    Template,
}

#[derive(Debug)]
pub(super) struct Schema {
    pub(super) attrs: &'static [Attr],
    pub(super) blocks: &'static [BlockSpec],
    pub(super) post: Post,
}

const fn attr(hcl: &'static str, json: &'static str, kind: Kind) -> Attr {
    Attr { hcl, json, kind }
}

const fn one(hcl: &'static str, json: &'static str, schema: &'static Schema) -> BlockSpec {
    BlockSpec { hcl, json, label: None, many: false, body: BodyKind::Fields(schema) }
}

const fn many(hcl: &'static str, json: &'static str, schema: &'static Schema) -> BlockSpec {
    BlockSpec { hcl, json, label: None, many: true, body: BodyKind::Fields(schema) }
}

const fn labeled(hcl: &'static str, json: &'static str, label: &'static str, schema: &'static Schema) -> BlockSpec {
    BlockSpec { hcl, json, label: Some(label), many: true, body: BodyKind::Fields(schema) }
}

const fn str_map(hcl: &'static str, json: &'static str) -> BlockSpec {
    BlockSpec { hcl, json, label: None, many: false, body: BodyKind::StrMap }
}

const CONSTRAINT_BLOCK: BlockSpec = many("constraint", "Constraints", &CONSTRAINT);
const AFFINITY_BLOCK: BlockSpec = many("affinity", "Affinities", &AFFINITY);
const SPREAD_BLOCK: BlockSpec = many("spread", "Spreads", &SPREAD);
const META_BLOCK: BlockSpec = str_map("meta", "Meta");
const META_ATTR: Attr = attr("meta", "Meta", Kind::StrMap);

pub(super) static JOB: Schema = Schema {
    attrs: &[
        attr("id", "ID", Kind::Str),
        attr("name", "Name", Kind::Str),
        attr("region", "Region", Kind::Str),
        attr("namespace", "Namespace", Kind::Str),
        attr("type", "Type", Kind::Str),
        attr("priority", "Priority", Kind::Int),
        attr("all_at_once", "AllAtOnce", Kind::Bool),
        attr("datacenters", "Datacenters", Kind::StrList),
        attr("node_pool", "NodePool", Kind::Str),
        attr("consul_token", "ConsulToken", Kind::Str),
        attr("vault_token", "VaultToken", Kind::Str),
        META_ATTR,
    ],
    blocks: &[
        labeled("group", "TaskGroups", "Name", &GROUP),
        CONSTRAINT_BLOCK,
        AFFINITY_BLOCK,
        SPREAD_BLOCK,
        one("update", "Update", &UPDATE),
        one("migrate", "Migrate", &MIGRATE),
        one("reschedule", "Reschedule", &RESCHEDULE),
        one("periodic", "Periodic", &PERIODIC),
        one("parameterized", "ParameterizedJob", &PARAMETERIZED),
        META_BLOCK,
    ],
    post: Post::None,
};

static GROUP: Schema = Schema {
    attrs: &[
        attr("count", "Count", Kind::Int),
        attr("shutdown_delay", "ShutdownDelay", Kind::Duration),
        attr("stop_after_client_disconnect", "StopAfterClientDisconnect", Kind::Duration),
        attr("max_client_disconnect", "MaxClientDisconnect", Kind::Duration),
        attr("prevent_reschedule_on_lost", "PreventRescheduleOnLost", Kind::Bool),
        // Caravan's own: gang scheduling (all allocations placed together or none).
        attr("gang", "Gang", Kind::Bool),
        attr("gang_topology", "GangTopology", Kind::Str),
        META_ATTR,
    ],
    blocks: &[
        labeled("task", "Tasks", "Name", &TASK),
        CONSTRAINT_BLOCK,
        AFFINITY_BLOCK,
        SPREAD_BLOCK,
        one("restart", "RestartPolicy", &RESTART),
        one("reschedule", "ReschedulePolicy", &RESCHEDULE),
        one("update", "Update", &UPDATE),
        one("migrate", "Migrate", &MIGRATE),
        one("ephemeral_disk", "EphemeralDisk", &EPHEMERAL_DISK),
        many("network", "Networks", &NETWORK),
        META_BLOCK,
    ],
    post: Post::None,
};

static TASK: Schema = Schema {
    attrs: &[
        attr("driver", "Driver", Kind::Str),
        attr("user", "User", Kind::Str),
        attr("kill_timeout", "KillTimeout", Kind::Duration),
        attr("kill_signal", "KillSignal", Kind::Str),
        attr("leader", "Leader", Kind::Bool),
        attr("shutdown_delay", "ShutdownDelay", Kind::Duration),
        attr("kind", "Kind", Kind::Str),
        attr("config", "Config", Kind::Any),
        attr("env", "Env", Kind::StrMap),
        META_ATTR,
    ],
    blocks: &[
        BlockSpec { hcl: "config", json: "Config", label: None, many: false, body: BodyKind::FreeForm },
        str_map("env", "Env"),
        META_BLOCK,
        one("resources", "Resources", &RESOURCES),
        CONSTRAINT_BLOCK,
        AFFINITY_BLOCK,
        one("restart", "RestartPolicy", &RESTART),
        one("lifecycle", "Lifecycle", &LIFECYCLE),
        one("dispatch_payload", "DispatchPayload", &DISPATCH_PAYLOAD),
        one("logs", "LogConfig", &LOGS),
        many("artifact", "Artifacts", &ARTIFACT),
        many("template", "Templates", &TEMPLATE),
    ],
    post: Post::None,
};

static RESOURCES: Schema = Schema {
    attrs: &[
        attr("cpu", "CPU", Kind::Int),
        attr("cores", "Cores", Kind::Int),
        attr("memory", "MemoryMB", Kind::Int),
        attr("memory_max", "MemoryMaxMB", Kind::Int),
        attr("disk", "DiskMB", Kind::Int),
        attr("secrets", "SecretsMB", Kind::Int),
    ],
    blocks: &[labeled("device", "Devices", "Name", &DEVICE), many("network", "Networks", &NETWORK)],
    post: Post::None,
};

static DEVICE: Schema = Schema {
    attrs: &[attr("count", "Count", Kind::Int)],
    blocks: &[CONSTRAINT_BLOCK, AFFINITY_BLOCK],
    post: Post::None,
};

static NETWORK: Schema = Schema {
    attrs: &[
        attr("mode", "Mode", Kind::Str),
        attr("hostname", "Hostname", Kind::Str),
        attr("mbits", "MBits", Kind::Int),
        attr("device", "Device", Kind::Str),
        attr("cidr", "CIDR", Kind::Str),
        attr("ip", "IP", Kind::Str),
    ],
    blocks: &[labeled("port", "DynamicPorts", "Label", &PORT), one("dns", "DNS", &DNS)],
    post: Post::Network,
};

static PORT: Schema = Schema {
    attrs: &[
        attr("static", "Value", Kind::Int),
        attr("to", "To", Kind::Int),
        attr("host_network", "HostNetwork", Kind::Str),
    ],
    blocks: &[],
    post: Post::None,
};

static DNS: Schema = Schema {
    attrs: &[
        attr("servers", "Servers", Kind::StrList),
        attr("searches", "Searches", Kind::StrList),
        attr("options", "Options", Kind::StrList),
    ],
    blocks: &[],
    post: Post::None,
};

static CONSTRAINT: Schema = Schema {
    attrs: &[
        attr("attribute", "LTarget", Kind::Str),
        attr("value", "RTarget", Kind::Str),
        attr("operator", "Operand", Kind::Str),
        attr("distinct_hosts", "Operand", Kind::DistinctHosts),
        attr("distinct_property", "LTarget", Kind::Shorthand { operand: "distinct_property", target: "LTarget" }),
        attr("regexp", "RTarget", Kind::Shorthand { operand: "regexp", target: "RTarget" }),
        attr("set_contains", "RTarget", Kind::Shorthand { operand: "set_contains", target: "RTarget" }),
        attr("version", "RTarget", Kind::Shorthand { operand: "version", target: "RTarget" }),
        attr("semver", "RTarget", Kind::Shorthand { operand: "semver", target: "RTarget" }),
    ],
    blocks: &[],
    post: Post::None,
};

static AFFINITY: Schema = Schema {
    attrs: &[
        attr("attribute", "LTarget", Kind::Str),
        attr("value", "RTarget", Kind::Str),
        attr("operator", "Operand", Kind::Str),
        attr("weight", "Weight", Kind::Int),
        attr("regexp", "RTarget", Kind::Shorthand { operand: "regexp", target: "RTarget" }),
        attr("set_contains_all", "RTarget", Kind::Shorthand { operand: "set_contains_all", target: "RTarget" }),
        attr("set_contains_any", "RTarget", Kind::Shorthand { operand: "set_contains_any", target: "RTarget" }),
        attr("version", "RTarget", Kind::Shorthand { operand: "version", target: "RTarget" }),
        attr("semver", "RTarget", Kind::Shorthand { operand: "semver", target: "RTarget" }),
    ],
    blocks: &[],
    post: Post::None,
};

static SPREAD: Schema = Schema {
    attrs: &[attr("attribute", "Attribute", Kind::Str), attr("weight", "Weight", Kind::Int)],
    blocks: &[labeled("target", "SpreadTarget", "Value", &SPREAD_TARGET)],
    post: Post::None,
};

static SPREAD_TARGET: Schema = Schema {
    attrs: &[attr("value", "Value", Kind::Str), attr("percent", "Percent", Kind::Int)],
    blocks: &[],
    post: Post::None,
};

static RESTART: Schema = Schema {
    attrs: &[
        attr("attempts", "Attempts", Kind::Int),
        attr("interval", "Interval", Kind::Duration),
        attr("delay", "Delay", Kind::Duration),
        attr("mode", "Mode", Kind::Str),
        attr("render_templates", "RenderTemplates", Kind::Bool),
    ],
    blocks: &[],
    post: Post::None,
};

static RESCHEDULE: Schema = Schema {
    attrs: &[
        attr("attempts", "Attempts", Kind::Int),
        attr("interval", "Interval", Kind::Duration),
        attr("delay", "Delay", Kind::Duration),
        attr("delay_function", "DelayFunction", Kind::Str),
        attr("max_delay", "MaxDelay", Kind::Duration),
        attr("unlimited", "Unlimited", Kind::Bool),
    ],
    blocks: &[],
    post: Post::None,
};

static UPDATE: Schema = Schema {
    attrs: &[
        attr("stagger", "Stagger", Kind::Duration),
        attr("max_parallel", "MaxParallel", Kind::Int),
        attr("health_check", "HealthCheck", Kind::Str),
        attr("min_healthy_time", "MinHealthyTime", Kind::Duration),
        attr("healthy_deadline", "HealthyDeadline", Kind::Duration),
        attr("progress_deadline", "ProgressDeadline", Kind::Duration),
        attr("canary", "Canary", Kind::Int),
        attr("auto_revert", "AutoRevert", Kind::Bool),
        attr("auto_promote", "AutoPromote", Kind::Bool),
    ],
    blocks: &[],
    post: Post::None,
};

static MIGRATE: Schema = Schema {
    attrs: &[
        attr("max_parallel", "MaxParallel", Kind::Int),
        attr("health_check", "HealthCheck", Kind::Str),
        attr("min_healthy_time", "MinHealthyTime", Kind::Duration),
        attr("healthy_deadline", "HealthyDeadline", Kind::Duration),
    ],
    blocks: &[],
    post: Post::None,
};

static EPHEMERAL_DISK: Schema = Schema {
    attrs: &[
        attr("sticky", "Sticky", Kind::Bool),
        attr("migrate", "Migrate", Kind::Bool),
        attr("size", "SizeMB", Kind::Int),
    ],
    blocks: &[],
    post: Post::None,
};

static LIFECYCLE: Schema = Schema {
    attrs: &[attr("hook", "Hook", Kind::Str), attr("sidecar", "Sidecar", Kind::Bool)],
    blocks: &[],
    post: Post::None,
};

static DISPATCH_PAYLOAD: Schema = Schema { attrs: &[attr("file", "File", Kind::Str)], blocks: &[], post: Post::None };

static LOGS: Schema = Schema {
    attrs: &[
        attr("max_files", "MaxFiles", Kind::Int),
        attr("max_file_size", "MaxFileSizeMB", Kind::Int),
        attr("disabled", "Disabled", Kind::Bool),
    ],
    blocks: &[],
    post: Post::None,
};

static ARTIFACT: Schema = Schema {
    attrs: &[
        attr("source", "GetterSource", Kind::Str),
        attr("destination", "RelativeDest", Kind::Str),
        attr("mode", "GetterMode", Kind::Str),
        attr("options", "GetterOptions", Kind::StrMap),
        attr("headers", "GetterHeaders", Kind::StrMap),
    ],
    blocks: &[str_map("options", "GetterOptions"), str_map("headers", "GetterHeaders")],
    post: Post::None,
};

static TEMPLATE: Schema = Schema {
    attrs: &[
        attr("source", "SourcePath", Kind::Str),
        attr("destination", "DestPath", Kind::Str),
        attr("data", "EmbeddedTmpl", Kind::Str),
        attr("change_mode", "ChangeMode", Kind::Str),
        attr("change_signal", "ChangeSignal", Kind::Str),
        attr("splay", "Splay", Kind::Duration),
        attr("perms", "Perms", Kind::Str),
        attr("uid", "Uid", Kind::Int),
        attr("gid", "Gid", Kind::Int),
        attr("left_delimiter", "LeftDelim", Kind::Str),
        attr("right_delimiter", "RightDelim", Kind::Str),
        attr("env", "Envvars", Kind::Bool),
        attr("error_on_missing_key", "ErrMissingKey", Kind::Bool),
    ],
    blocks: &[],
    post: Post::Template,
};

static PERIODIC: Schema = Schema {
    attrs: &[
        attr("enabled", "Enabled", Kind::Bool),
        attr("cron", "Spec", Kind::Str),
        attr("crons", "Specs", Kind::StrList),
        attr("prohibit_overlap", "ProhibitOverlap", Kind::Bool),
        attr("time_zone", "TimeZone", Kind::Str),
    ],
    blocks: &[],
    post: Post::None,
};

static PARAMETERIZED: Schema = Schema {
    attrs: &[
        attr("payload", "Payload", Kind::Str),
        attr("meta_required", "MetaRequired", Kind::StrList),
        attr("meta_optional", "MetaOptional", Kind::StrList),
    ],
    blocks: &[],
    post: Post::None,
};
