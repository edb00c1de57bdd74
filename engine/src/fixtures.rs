//! Builders for nodes, jobs, evals and allocations, shared by tests,
//! benches and the perf simulator so they all describe clusters the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{IdGen, JobKey};
use crate::model::{
    AllocatedResources, Allocation, ClientStatus, DesiredStatus, DesiredTransition, DeviceAttribute, DeviceInstance,
    DeviceRequest, DriverInfo, Evaluation, Job, JobType, Node, NodeDeviceResource, NodeResources, Task, TaskGroup,
    TimeNs, TriggeredBy, no_task_states,
};

/// A ready node with `raw_exec`, `exec` and `docker` drivers and Nomad-style
/// attributes.
pub fn node(ids: &mut IdGen, name: &str, datacenter: &str, cpu_mhz: u64, memory_mb: u64) -> Node {
    let resources = NodeResources {
        cpu_mhz,
        cores: (cpu_mhz / 1000).max(1) as u32,
        memory_mb,
        disk_mb: 100_000,
        ..Default::default()
    };
    let mut n = Node::new(ids.node(), name, datacenter, resources);
    for driver in ["raw_exec", "exec", "docker"] {
        n.drivers.insert(
            driver.into(),
            DriverInfo {
                detected: true,
                healthy: true,
                health_description: "Healthy".into(),
                attributes: BTreeMap::new(),
            },
        );
    }
    n.attributes.insert("kernel.name".into(), "linux".into());
    n.attributes.insert("os.name".into(), "debian".into());
    n.attributes.insert("cpu.arch".into(), "amd64".into());
    n.attributes.insert("unique.hostname".into(), name.into());
    n.compute_class();
    n
}

/// A node with `gpus` H200-class GPUs in NVLink islands of `island_size`
/// (also its NUMA nodes), as the simulated GPU backend describes them.
pub fn gpu_node(ids: &mut IdGen, name: &str, datacenter: &str, gpus: u16, island_size: u16) -> Node {
    let mut n = node(ids, name, datacenter, 128_000, 2 * 1024 * 1024);
    let instances = (0..gpus)
        .map(|i| DeviceInstance {
            id: format!("GPU-{name}-{i}").into(),
            healthy: true,
            health_description: "".into(),
            pci_bus_id: None,
            numa_node: Some(i / island_size.max(1)),
            link_island: Some(i / island_size.max(1)),
        })
        .collect();
    let mut attributes = BTreeMap::new();
    attributes.insert("memory".into(), DeviceAttribute::Int { value: 143_771, unit: Some("MiB".into()) });
    attributes.insert("power".into(), DeviceAttribute::Int { value: 700, unit: Some("W".into()) });
    n.resources.devices.push(NodeDeviceResource {
        vendor: "nvidia".into(),
        kind: "gpu".into(),
        name: "NVIDIA H200".into(),
        attributes,
        instances,
    });
    n.compute_class();
    n
}

/// A batch job of one group whose task asks for `gpus` GPUs.
pub fn gpu_job(id: &str, count: u32, gpus: u32) -> Job {
    let mut j = job(id, JobType::Batch, count, 1000, 4096);
    j.task_groups[0].tasks[0].resources.devices.push(DeviceRequest {
        name: "nvidia/gpu".into(),
        count: gpus,
        constraints: Vec::new(),
        affinities: Vec::new(),
    });
    j
}

/// A job of one group with one `raw_exec` task asking for `cpu_mhz`/`memory_mb`.
pub fn job(id: &str, job_type: JobType, count: u32, cpu_mhz: u32, memory_mb: u32) -> Job {
    let mut task = Task::new("t", "raw_exec");
    task.resources.cpu_mhz = cpu_mhz;
    task.resources.memory_mb = memory_mb;
    let mut group = TaskGroup::new("g", count, job_type, vec![task]);
    group.ephemeral_disk_mb = 10;
    Job::new(id, job_type, vec![group])
}

/// A committed allocation of the job's first group, `job.g[name_index]`,
/// on a fresh node: desired run, client pending, no deployment, created and
/// modified at index 1. Tests set what they need on top.
pub fn allocation(ids: &mut IdGen, job: &Arc<Job>, name_index: u32) -> Allocation {
    Allocation {
        id: ids.alloc_for(&job.key()),
        eval_id: ids.eval(),
        node_id: ids.node(),
        job: Arc::clone(job),
        group_index: 0,
        name_index,
        resources: Arc::new(AllocatedResources::default()),
        desired_status: DesiredStatus::Run,
        desired_description: "".into(),
        desired_transition: DesiredTransition::default(),
        client_status: ClientStatus::Pending,
        client_description: "".into(),
        previous_alloc: None,
        next_alloc: None,
        reschedule_tracker: None,
        followup_eval_id: None,
        deployment_id: None,
        deployment_status: None,
        preempted_by: None,
        create_index: 1,
        modify_index: 1,
        alloc_modify_index: 1,
        create_time_ns: 0,
        modify_time_ns: 0,
        task_states: no_task_states(),
    }
}

/// The eval a job registration creates.
pub fn register_eval(ids: &mut IdGen, job: &Job, now_ns: TimeNs) -> Evaluation {
    let mut eval = Evaluation::new(
        ids.eval(),
        &JobKey::new(&job.namespace, &job.id),
        job.job_type,
        job.priority,
        TriggeredBy::JobRegister,
    );
    eval.create_time_ns = now_ns;
    eval.modify_time_ns = now_ns;
    eval
}
