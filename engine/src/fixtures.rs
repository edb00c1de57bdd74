//! Builders for nodes, jobs and evals, shared by tests, benches and the perf
//! simulator so they all describe clusters the same way.

use std::collections::BTreeMap;

use crate::ids::{IdGen, JobKey};
use crate::model::{DriverInfo, Evaluation, Job, JobType, Node, NodeResources, Task, TaskGroup, TimeNs, TriggeredBy};

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

/// A job of one group with one `raw_exec` task asking for `cpu_mhz`/`memory_mb`.
pub fn job(id: &str, job_type: JobType, count: u32, cpu_mhz: u32, memory_mb: u32) -> Job {
    let mut task = Task::new("t", "raw_exec");
    task.resources.cpu_mhz = cpu_mhz;
    task.resources.memory_mb = memory_mb;
    let mut group = TaskGroup::new("g", count, job_type, vec![task]);
    group.ephemeral_disk_mb = 10;
    Job::new(id, job_type, vec![group])
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
