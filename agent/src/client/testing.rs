//! Builders shared by the client's unit tests.

use std::sync::Arc;

use caravan_engine::ids::IdGen;
use caravan_engine::model::{
    AllocatedResources, Allocation, ClientStatus, DesiredStatus, DesiredTransition, Job, no_task_states,
};

/// A fresh allocation of the job's first group, index `name_index`.
pub(crate) fn alloc(ids: &mut IdGen, job: &Arc<Job>, name_index: u32) -> Allocation {
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
