//! A task's environment, with Nomad's `NOMAD_*` names, so programs written
//! for Nomad find their allocation, directories, limits and ports.
//!
//! [`task_env`] is pure: everything comes from the allocation, the node
//! facts in [`NodeEnv`] and the task's directories. The task's own `env { }`
//! goes last and wins, as in Nomad. Device variables (`CUDA_VISIBLE_DEVICES`,
//! ...) are separate ([`device_env`]): the driver merges them over all else.

use std::collections::BTreeMap;

use caravan_engine::model::{Allocation, AssignedDevice, Task};

use super::driver::TaskDirs;

/// What the environment needs from the node and the agent config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnv {
    pub region: String,
    pub datacenter: String,
    pub node_id: String,
    pub node_name: String,
    /// The address tasks' ports are reached at (`NOMAD_IP_<label>`).
    pub ip: String,
}

/// Nomad's port variables turn a label into part of a name: anything
/// outside `[A-Za-z0-9_]` becomes `_`.
fn env_label(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The environment of `task`, one of the allocation's group's tasks.
pub fn task_env(alloc: &Allocation, task: &Task, dirs: &TaskDirs, node: &NodeEnv) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        env.insert(key.to_string(), value);
    };
    set("NOMAD_ALLOC_ID", alloc.id.to_string());
    set("NOMAD_ALLOC_NAME", alloc.name());
    set("NOMAD_ALLOC_INDEX", alloc.name_index.to_string());
    set("NOMAD_SHORT_ALLOC_ID", alloc.id.to_string().chars().take(8).collect());
    set("NOMAD_JOB_ID", alloc.job.id.to_string());
    set("NOMAD_JOB_NAME", alloc.job.name.to_string());
    set("NOMAD_NAMESPACE", alloc.job.namespace.to_string());
    set("NOMAD_GROUP_NAME", alloc.group_name().to_string());
    set("NOMAD_TASK_NAME", task.name.to_string());
    set("NOMAD_CPU_LIMIT", task.resources.cpu_mhz.to_string());
    if task.resources.cores > 0 {
        set("NOMAD_CPU_CORES", task.resources.cores.to_string());
    }
    set("NOMAD_MEMORY_LIMIT", task.resources.memory_mb.to_string());
    if task.resources.memory_max_mb > 0 {
        set("NOMAD_MEMORY_MAX_LIMIT", task.resources.memory_max_mb.to_string());
    }
    set("NOMAD_ALLOC_DIR", dirs.alloc_dir.display().to_string());
    set("NOMAD_TASK_DIR", dirs.local_dir.display().to_string());
    set("NOMAD_SECRETS_DIR", dirs.secrets_dir.display().to_string());
    set("NOMAD_DC", node.datacenter.clone());
    set("NOMAD_REGION", node.region.clone());
    set("NOMAD_NODE_ID", node.node_id.clone());
    set("NOMAD_NODE_NAME", node.node_name.clone());
    for port in &alloc.resources.ports {
        let label = env_label(&port.label);
        let container_port = if port.to == 0 { port.value } else { port.to };
        set(&format!("NOMAD_IP_{label}"), node.ip.clone());
        set(&format!("NOMAD_PORT_{label}"), container_port.to_string());
        set(&format!("NOMAD_HOST_PORT_{label}"), port.value.to_string());
        set(&format!("NOMAD_ADDR_{label}"), format!("{}:{}", node.ip, port.value));
    }
    for (key, value) in &task.env {
        env.insert(key.to_string(), value.to_string());
    }
    env
}

/// The devices the scheduler assigned task `task_index`.
pub fn task_devices(alloc: &Allocation, task_index: usize) -> Vec<AssignedDevice> {
    alloc.resources.devices.iter().filter(|d| usize::from(d.task_index) == task_index).cloned().collect()
}

/// The visible-device variables of task `task_index`, from the devices the
/// scheduler assigned it.
pub fn device_env(alloc: &Allocation, task_index: usize) -> BTreeMap<String, String> {
    caravan_gpu::reserve::visible_devices_env(&task_devices(alloc, task_index)).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_engine::fixtures;
    use caravan_engine::ids::IdGen;
    use caravan_engine::model::{AllocatedResources, AssignedDevice, AssignedPort, JobType};
    use std::path::Path;
    use std::sync::Arc;

    #[test]
    fn nomad_variables_ports_devices_and_task_env() {
        let mut ids = IdGen::with_seed(1);
        let mut job = fixtures::job("web", JobType::Service, 1, 250, 128);
        job.task_groups[0].tasks[0].env.insert("GREETING".into(), "hello".into());
        job.task_groups[0].tasks[0].env.insert("NOMAD_DC".into(), "overridden".into());
        let job = Arc::new(job);
        let mut alloc = caravan_engine::fixtures::allocation(&mut ids, &job, 3);
        alloc.resources = Arc::new(AllocatedResources {
            ports: vec![AssignedPort { label: "http-api".into(), value: 23456, to: 8080 }],
            devices: vec![AssignedDevice {
                task_index: 0,
                vendor: "nvidia".into(),
                kind: "gpu".into(),
                name: "H200".into(),
                instance_ids: vec!["GPU-a".into(), "GPU-b".into()],
            }],
            ..Default::default()
        });
        let dirs = TaskDirs::new(Path::new("/data/alloc/x"), "t");
        let node = NodeEnv {
            region: "global".into(),
            datacenter: "dc1".into(),
            node_id: "n".into(),
            node_name: "node-1".into(),
            ip: "10.0.0.5".into(),
        };
        let env = task_env(&alloc, &alloc.group().tasks[0], &dirs, &node);
        assert_eq!(env["NOMAD_ALLOC_ID"], alloc.id.to_string());
        assert_eq!(env["NOMAD_ALLOC_NAME"], "web.g[3]");
        assert_eq!(env["NOMAD_ALLOC_INDEX"], "3");
        assert_eq!(env["NOMAD_JOB_NAME"], "web");
        assert_eq!(env["NOMAD_GROUP_NAME"], "g");
        assert_eq!(env["NOMAD_TASK_NAME"], "t");
        assert_eq!(env["NOMAD_CPU_LIMIT"], "250");
        assert_eq!(env["NOMAD_MEMORY_LIMIT"], "128");
        assert_eq!(env["NOMAD_ALLOC_DIR"], "/data/alloc/x/alloc");
        assert_eq!(env["NOMAD_TASK_DIR"], "/data/alloc/x/t/local");
        assert_eq!(env["NOMAD_SECRETS_DIR"], "/data/alloc/x/t/secrets");
        assert_eq!(env["NOMAD_REGION"], "global");
        assert_eq!(env["NOMAD_DC"], "overridden", "the task's env wins");
        assert_eq!(env["NOMAD_PORT_http_api"], "8080");
        assert_eq!(env["NOMAD_HOST_PORT_http_api"], "23456");
        assert_eq!(env["NOMAD_IP_http_api"], "10.0.0.5");
        assert_eq!(env["NOMAD_ADDR_http_api"], "10.0.0.5:23456");
        assert_eq!(env["GREETING"], "hello");
        let devices = device_env(&alloc, 0);
        assert_eq!(devices["CUDA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert!(device_env(&alloc, 1).is_empty());
    }
}
