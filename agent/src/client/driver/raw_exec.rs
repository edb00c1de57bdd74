//! `raw_exec`: the task as a plain process of the agent's user, without
//! isolation. Opt-in in the agent config (on in `-dev`), as in Nomad.

use std::time::Duration;

use caravan_engine::model::ConfigValue;

use super::executor::{Executor, Launch};
use super::{ConfigReader, Driver, DriverError, DriverFingerprint, ExitResult, TaskHandle, TaskSpec, process};

/// The driver's name in jobspecs.
pub const RAW_EXEC_DRIVER: &str = "raw_exec";
/// The keys of a `raw_exec` `config { }` block.
const CONFIG_KEYS: &[&str] = &["command", "args"];

/// A validated `raw_exec` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandConfig {
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
}

/// Parses `command` and `args`, shared with `exec`.
pub(crate) fn parse_command_config(config: &ConfigValue) -> Result<CommandConfig, DriverError> {
    let reader = ConfigReader::new(config, CONFIG_KEYS)?;
    Ok(CommandConfig { command: reader.required_string("command")?, args: reader.string_list("args")? })
}

/// The `raw_exec` driver; every task lives in its handle.
#[derive(Debug, Default)]
pub struct RawExecDriver {
    executor: Option<Executor>,
}

impl RawExecDriver {
    /// Tasks as children of the agent: a task re-attached after an agent
    /// restart has an unknown exit status.
    pub fn new() -> RawExecDriver {
        RawExecDriver { executor: None }
    }

    /// Tasks under an executor that records their exit status.
    pub fn with_executor(executor: Executor) -> RawExecDriver {
        RawExecDriver { executor: Some(executor) }
    }
}

impl Driver for RawExecDriver {
    fn name(&self) -> &'static str {
        RAW_EXEC_DRIVER
    }

    fn fingerprint(&self) -> DriverFingerprint {
        DriverFingerprint {
            detected: true,
            healthy: true,
            health_description: String::new(),
            version: None,
            attributes: [("driver.raw_exec".to_string(), "1".to_string())].into_iter().collect(),
        }
    }

    fn validate_config(&self, config: &ConfigValue) -> Result<(), DriverError> {
        parse_command_config(config).map(|_| ())
    }

    fn start(&self, spec: &TaskSpec) -> Result<TaskHandle, DriverError> {
        let config = parse_command_config(&spec.config)?;
        let program = process::resolve_command(&config.command, &spec.env)?;
        let mut launch =
            Launch { program: program.into(), args: config.args.iter().map(Into::into).collect(), user: None };
        // Without isolation a `user` is still honoured when the agent can
        // switch to it (it runs as root); otherwise the agent's user it is.
        if let Some(user) = &spec.user {
            let user = super::lookup_user(user)?;
            if rustix::process::geteuid().as_raw() != user.uid {
                launch.user = Some((user.uid, user.gid));
            }
        }
        process::spawn(RAW_EXEC_DRIVER, spec, launch, self.executor.as_ref(), Vec::new())
    }

    fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        process::wait(handle)
    }

    fn signal(&self, handle: &TaskHandle, signal: i32) -> Result<(), DriverError> {
        process::signal(handle, signal)
    }

    fn stop(&self, handle: &TaskHandle, kill_timeout: Duration) -> Result<(), DriverError> {
        process::stop(handle, kill_timeout)
    }

    fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        process::recover(handle)
    }

    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        process::destroy(handle)
    }
}
