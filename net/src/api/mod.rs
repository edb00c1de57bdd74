//! Nomad's `/v1` JSON dialect: the shapes Nomad API clients send and read,
//! and their conversion to and from the engine's model.
//!
//! - [`job`]: the submitted job (`api.Job` and its parts), all fields optional.
//! - [`read`]: what read endpoints return (`Node`, `Allocation`, `Evaluation`, stubs).
//! - [`job_from_api`]: Nomad's canonicalization (defaults by job type), then
//!   conversion and the engine's validation; [`ApiError`] lists every problem
//!   with its JSON path (`TaskGroups[0].Tasks[1].Resources.CPU: ...`).
//! - [`decode_job_request`]: a `PUT /v1/jobs` body, size and depth bounded.
//! - [`job_to_api`], [`node_to_api`], [`alloc_to_api`], [`eval_to_api`], ...:
//!   the engine's records in Nomad's shapes.
//!
//! ```
//! let body = br#"{"Job":{"ID":"x","TaskGroups":[{"Name":"g","Tasks":[{"Name":"t","Driver":"raw_exec"}]}]}}"#;
//! let job = caravan_net::api::decode_job_request(body).unwrap();
//! assert_eq!(job.priority, 50);
//! assert_eq!(job.task_groups[0].tasks[0].resources.memory_mb, 300);
//! ```

pub mod base64;
mod canonical;
mod decode;
pub mod diff;
mod error;
pub mod job;
pub mod read;
mod render;

pub use canonical::{
    CONFIG_DEPTH_MAX, DEFAULT_EPHEMERAL_DISK_MB, DEFAULT_KILL_TIMEOUT_NS, DEFAULT_PRIORITY, DEFAULT_TASK_CPU_MHZ,
    DEFAULT_TASK_MEMORY_MB, DEFAULT_WEIGHT, job_from_api,
};
pub use decode::{BODY_BYTES_MAX, JSON_DEPTH_MAX, decode_api_job, decode_job_request};
pub use error::{API_PROBLEMS_MAX, ApiError};
pub use job::Job;
pub use render::{
    alloc_stub, alloc_to_api, children_summary, deployment_to_api, eval_to_api, job_stub, job_summary, job_to_api,
    metric, node_stub, node_to_api, rfc3339,
};
