//! HCL2 jobspecs, parsed the way Nomad's `jobspec2` parses them.
//!
//! [`parse_jobspec`] takes the text of a jobspec, the `-var name=value` overrides and the
//! contents of var files, and returns the job in Nomad's API JSON shape, the same document
//! `nomad job run -output job.nomad.hcl` prints: `{"Job": {"ID": ..., "TaskGroups": [...]}}`.
//! Keys are PascalCase, durations are integer nanoseconds, and fields the user did not set are
//! left out: defaults belong to the server's canonicalization, not to the parser.
//!
//! ```
//! let src = r#"
//! job "hello" {
//!   type = "batch"
//!   group "g" {
//!     task "t" {
//!       driver = "raw_exec"
//!       config { command = "/bin/echo" }
//!     }
//!   }
//! }"#;
//! let job = caravan_net::jobspec::parse_jobspec(src, &[], &[]).unwrap();
//! assert_eq!(job["Job"]["ID"], "hello");
//! assert_eq!(job["Job"]["TaskGroups"][0]["Tasks"][0]["Driver"], "raw_exec");
//! ```
//!
//! Evaluation: `var.*` and `local.*` references and a small set of functions are evaluated;
//! every other reference (`${attr.kernel.name}`, `${node.datacenter}`, `${meta.rack}`,
//! `${NOMAD_ALLOC_ID}`, ...) is a run-time reference and stays literal text, as Nomad's
//! `UnknownVariable` hook does.
//!
//! Code map: `eval` (variables, locals, functions, run-time references), `decode` (the walk
//! over blocks, driven by the tables in `schema`), `duration` (Go duration strings).

mod decode;
mod duration;
mod eval;
mod schema;

pub use duration::parse_duration_ns;

/// Why a jobspec was rejected. Every variant names where the problem is: the line and
/// column for syntax errors, the block path (`job "web" > group "cache" > task "redis"`)
/// for the rest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobspecError {
    /// The text is not valid HCL; the message carries line and column.
    #[error("syntax error: {message}")]
    Syntax { message: String },
    /// A var file is not valid HCL.
    #[error("var file {index}: syntax error: {message}")]
    VarFileSyntax { index: usize, message: String },
    /// No `job` block.
    #[error("missing job block: a job block is required")]
    MissingJob,
    /// A block that may appear once appears again (`job`, `resources`, `update`, ...).
    #[error("{path}: duplicate {block} block: only one {block:?} block is allowed")]
    DuplicateBlock { path: String, block: String },
    /// An attribute Nomad does not know at this place.
    #[error("{path}: unsupported argument: an argument named {name:?} is not expected here")]
    UnsupportedArgument { path: String, name: String },
    /// A block Nomad does not know at this place.
    #[error("{path}: unsupported block type: blocks of type {name:?} are not expected here")]
    UnsupportedBlock { path: String, name: String },
    /// A block has the wrong number of labels (`group {}` without a name).
    #[error("{path}: {block} block expects {expected} label(s), found {found}")]
    BlockLabels { path: String, block: String, expected: usize, found: usize },
    /// An attribute was set twice in the same block.
    #[error("{path}: duplicate argument {name:?}")]
    DuplicateArgument { path: String, name: String },
    /// A value of the wrong type (`count = "three"`).
    #[error("{path}: {name}: wrong type: {message}")]
    WrongType { path: String, name: String, message: String },
    /// A duration Go's `time.ParseDuration` would reject (`"5 minutes"`).
    #[error("{path}: {name}: invalid duration {value:?}: expected a number and unit, like \"30s\", \"5m\", \"1h30m\"")]
    BadDuration { path: String, name: String, value: String },
    /// An expression failed to evaluate (unknown function, missing `var.x`, ...).
    #[error("{path}: {name}: {message}")]
    Eval { path: String, name: String, message: String },
    /// A declared variable got no value: no default, no `-var`, nothing in a var file.
    #[error("variable {name:?} is required: it has no default and no value was given (-var {name}=... or a var file)")]
    MissingVariable { name: String },
    /// A `-var` or var file sets a variable that no `variable` block declares.
    #[error("undefined variable {name:?} set by {source_kind}: declare it with a variable \"{name}\" block")]
    UndefinedVariable { name: String, source_kind: String },
    /// A `-var` string or var file value that cannot be converted to the declared type.
    #[error("variable {name:?}: {message}")]
    BadVariable { name: String, message: String },
}

/// Parses an HCL2 jobspec into Nomad's API JSON (`{"Job": {...}}`).
///
/// `vars` are the `-var name=value` pairs, applied last; `var_files` are the contents (not
/// paths) of var files (`name = value` lines), applied in order before `vars`.
pub fn parse_jobspec(
    source: &str,
    vars: &[(String, String)],
    var_files: &[&str],
) -> Result<serde_json::Value, JobspecError> {
    let body: hcl::Body = hcl::parse(source).map_err(|err| JobspecError::Syntax { message: err.to_string() })?;
    let mut var_file_bodies = Vec::with_capacity(var_files.len());
    for (index, text) in var_files.iter().enumerate() {
        let parsed: hcl::Body =
            hcl::parse(text).map_err(|err| JobspecError::VarFileSyntax { index, message: err.to_string() })?;
        var_file_bodies.push(parsed);
    }
    decode::decode_file(&body, vars, &var_file_bodies)
}
