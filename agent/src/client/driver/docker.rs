//! `docker`: the task as a container, through the Docker Engine API with
//! `bollard`.
//!
//! bollard is async and needs tokio; tokio stays here. The driver owns a
//! current-thread runtime on its own thread and every trait method hands a
//! future to it and blocks on the answer, so callers see a synchronous
//! driver like the others. The client version is negotiated down to the
//! engine's (Docker 20.10 speaks API 1.41).
//!
//! A container is named `<task>-<alloc id>`, labelled
//! `com.caravan.alloc_id` and `com.caravan.task_name` (so a restarted agent
//! can find it by label as well as by id), limited in memory and CPU shares,
//! given the alloc directories at `/alloc`, `/local` and `/secrets`, and its
//! output is copied into the task's rotating log files.
//!
//! The copy asks Docker for timestamped lines, strips the stamps, and keeps
//! the last one in a cursor file (`<alloc>/.executor/<task>/`, the agent's
//! alone), saved at most every [`LOG_CURSOR_SAVE_INTERVAL`]. An agent that
//! re-attaches to a running container asks for the lines since that stamp,
//! so what the container wrote while no agent ran reaches the files; lines
//! at or before the stamp are skipped, so nothing is copied twice unless
//! the agent died between two saves of the cursor.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use caravan_engine::model::ConfigValue;
use futures_util::StreamExt;

use super::logs::{LogStream, RotatingWriter};
use super::{ConfigReader, Driver, DriverError, DriverFingerprint, ExitResult, HandleState, TaskHandle, TaskSpec};

/// The driver's name in jobspecs.
pub const DOCKER_DRIVER: &str = "docker";
/// Label with the allocation id on every container the driver makes.
pub const LABEL_ALLOC_ID: &str = "com.caravan.alloc_id";
/// Label with the task name on every container the driver makes.
pub const LABEL_TASK_NAME: &str = "com.caravan.task_name";
/// The keys of a `docker` `config { }` block (Nomad's names).
const CONFIG_KEYS: &[&str] = &["image", "command", "args", "ports", "labels", "entrypoint", "work_dir", "force_pull"];
/// Bound on one API call that is not a wait or a pull: the engine answers
/// in milliseconds; a hung engine must not hang a task runner forever.
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on pulling an image: large images over slow links take minutes.
const PULL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// After a container exits, how long its log copy may take to drain.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Docker's stop timeout is in whole seconds; a shorter kill timeout
/// rounds up to one.
const STOP_TIMEOUT_MIN_S: i32 = 1;
/// Bytes per MB of `memory_mb`.
const BYTES_PER_MB: i64 = 1024 * 1024;
/// HTTP status of "no such container / image".
const STATUS_NOT_FOUND: u16 = 404;
/// HTTP status of "container already stopped".
const STATUS_NOT_MODIFIED: u16 = 304;
/// How often the log copy saves its cursor at most: a chatty container
/// costs one small file write a second, and an agent killed outright
/// copies at most this much output twice when it comes back.
const LOG_CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// The log cursor's file in the task's agent-only directory.
const LOG_CURSOR_FILE: &str = "docker-logs.cursor";

/// A validated `docker` config.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DockerConfig {
    image: String,
    command: Option<String>,
    args: Vec<String>,
    ports: Vec<String>,
    labels: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    work_dir: Option<String>,
    force_pull: bool,
}

fn parse_config(config: &ConfigValue) -> Result<DockerConfig, DriverError> {
    let reader = ConfigReader::new(config, CONFIG_KEYS)?;
    Ok(DockerConfig {
        image: reader.required_string("image")?,
        command: reader.string("command")?,
        args: reader.string_list("args")?,
        ports: reader.string_list("ports")?,
        labels: reader.string_map("labels")?,
        entrypoint: reader.string_list("entrypoint")?,
        work_dir: reader.string("work_dir")?,
        force_pull: reader.bool("force_pull")?,
    })
}

fn docker_error(err: bollard::errors::Error) -> DriverError {
    DriverError::Docker(err.to_string())
}

fn status_of(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The tokio runtime thread and the engine client.
#[derive(Debug)]
struct Runtime {
    handle: tokio::runtime::Handle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The `docker` driver.
#[derive(Debug)]
pub struct DockerDriver {
    runtime: Result<Runtime, String>,
    /// Connected lazily: an engine that starts after the agent is found on
    /// the next call.
    client: Mutex<Option<Docker>>,
    /// Log copies by container id, so `wait` can let them drain.
    log_tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Default for DockerDriver {
    fn default() -> DockerDriver {
        DockerDriver::new()
    }
}

impl DockerDriver {
    pub fn new() -> DockerDriver {
        DockerDriver { runtime: start_runtime(), client: Mutex::new(None), log_tasks: Mutex::new(HashMap::new()) }
    }

    /// Runs `future` on the driver's runtime and blocks for its output.
    fn block_on<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Result<T, DriverError> {
        let runtime = self.runtime.as_ref().map_err(|err| DriverError::Unavailable(err.clone()))?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.handle.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().map_err(|_| DriverError::Unavailable("docker driver runtime stopped".into()))
    }

    /// Like [`DockerDriver::block_on`], failing after `timeout`.
    fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        future: impl Future<Output = Result<T, bollard::errors::Error>> + Send + 'static,
    ) -> Result<Result<T, bollard::errors::Error>, DriverError> {
        self.block_on(async move { tokio::time::timeout(timeout, future).await })?
            .map_err(|_| DriverError::Docker(format!("no answer from the Docker engine within {timeout:?}")))
    }

    fn client(&self) -> Result<Docker, DriverError> {
        let mut client = self.client.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(docker) = client.as_ref() {
            return Ok(docker.clone());
        }
        let docker = self
            .block_on(async {
                let docker = Docker::connect_with_local_defaults()?;
                tokio::time::timeout(API_TIMEOUT, docker.negotiate_version())
                    .await
                    .map_err(|_| bollard::errors::Error::RequestTimeoutError)?
            })?
            .map_err(|err| DriverError::Unavailable(format!("cannot reach the Docker engine: {err}")))?;
        *client = Some(docker.clone());
        Ok(docker)
    }

    fn container_id(handle: &TaskHandle) -> Result<String, DriverError> {
        match &handle.state {
            HandleState::Container { id, .. } => Ok(id.clone()),
            HandleState::Process { .. } => {
                Err(DriverError::InvalidHandle("a process handle given to the docker driver".into()))
            }
        }
    }

    /// Makes sure `image` is present: pulled only when missing (or
    /// `force_pull`), since a local image (like the test image) has no registry.
    fn ensure_image(&self, docker: &Docker, config: &DockerConfig) -> Result<(), DriverError> {
        if !config.force_pull {
            let (d, image) = (docker.clone(), config.image.clone());
            match self.call(API_TIMEOUT, async move { d.inspect_image(&image).await })? {
                Ok(_) => return Ok(()),
                Err(err) if status_of(&err) == Some(STATUS_NOT_FOUND) => {}
                Err(err) => return Err(docker_error(err)),
            }
        }
        let (repo, tag) = split_image(&config.image);
        let d = docker.clone();
        let pulled = self.call(PULL_TIMEOUT, async move {
            let options = CreateImageOptionsBuilder::new().from_image(&repo).tag(&tag).build();
            let mut stream = d.create_image(Some(options), None, None);
            while let Some(progress) = stream.next().await {
                progress?;
            }
            Ok(())
        })?;
        pulled.map_err(|err| {
            DriverError::Start(format!("image {:?} is not present and pulling it failed: {err}", config.image))
        })
    }

    /// Copies the container's output into the task's log files: every line
    /// after `after_ns` (a Docker timestamp in ns since the epoch; `None`
    /// for everything), keeping the cursor in `handle`'s cursor file.
    fn start_log_copy(
        &self,
        docker: &Docker,
        handle: &TaskHandle,
        id: &str,
        after_ns: Option<i128>,
    ) -> Result<(), DriverError> {
        let open = |stream| {
            RotatingWriter::open(&handle.log_dir, &handle.task_name, stream, handle.logs)
                .map_err(|e| DriverError::io(format!("open logs of {}", handle.task_name), e))
        };
        let (mut stdout, mut stderr) = (open(LogStream::Stdout)?, open(LogStream::Stderr)?);
        let runtime = self.runtime.as_ref().map_err(|err| DriverError::Unavailable(err.clone()))?;
        let (d, container) = (docker.clone(), id.to_string());
        let cursor_file = match &handle.state {
            HandleState::Container { log_cursor, .. } => log_cursor.clone(),
            HandleState::Process { .. } => None,
        };
        // Docker's `since` is whole seconds: ask from the cursor's second
        // and skip what was copied already.
        let since = after_ns.map_or(0, |ns| i32::try_from(ns.div_euclid(NS_PER_S)).unwrap_or(i32::MAX));
        let task = runtime.handle.spawn(async move {
            use std::io::Write;
            let options =
                LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).timestamps(true).since(since).build();
            let mut logs = d.logs(&container, Some(options));
            let mut cursor = LogCursor::new(cursor_file, after_ns);
            loop {
                // A quiet container still gets its cursor saved.
                let output = match tokio::time::timeout(LOG_CURSOR_SAVE_INTERVAL, logs.next()).await {
                    Ok(Some(Ok(output))) => output,
                    Ok(_) => break,
                    Err(_) => {
                        cursor.save_flushed(&mut stdout, &mut stderr);
                        continue;
                    }
                };
                let (message, to_stderr) = match &output {
                    bollard::container::LogOutput::StdErr { message } => (message, true),
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => (message, false),
                    bollard::container::LogOutput::StdIn { .. } => continue,
                };
                let Some((stamp, line)) = cursor.take(message) else { continue };
                // Small blocking writes to local files: cheaper than a
                // hand-off to a blocking pool for every line.
                let written = if to_stderr { stderr.write_all(line) } else { stdout.write_all(line) };
                if let Err(err) = written {
                    tracing::warn!(%err, "task log write failed");
                    break;
                }
                cursor.advance(stamp);
                cursor.save_if_due(&mut stdout, &mut stderr);
            }
            let _ = stdout.flush();
            let _ = stderr.flush();
        });
        if let Some(old) = self.log_tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), task) {
            old.abort();
        }
        Ok(())
    }

    /// Containers this driver made for `alloc_id`, by label: how a restarted
    /// agent that lost a handle finds its containers. Returns (id, task name).
    pub fn find_containers(&self, alloc_id: &str) -> Result<Vec<(String, String)>, DriverError> {
        let docker = self.client()?;
        let filter = format!("{LABEL_ALLOC_ID}={alloc_id}");
        let listed = self.call(API_TIMEOUT, async move {
            let filters: HashMap<String, Vec<String>> = [("label".to_string(), vec![filter])].into_iter().collect();
            let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
            docker.list_containers(Some(options)).await
        })?;
        let containers = listed.map_err(docker_error)?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let task = c.labels.as_ref()?.get(LABEL_TASK_NAME)?.clone();
                Some((c.id?, task))
            })
            .collect())
    }

    /// Creates the task's container (pulling the image if missing, removing
    /// a leftover of an earlier attempt) without starting it; returns its id.
    /// `destroy` with a handle of that id removes it.
    pub fn create_container(&self, spec: &TaskSpec) -> Result<String, DriverError> {
        self.create(spec).map(|(_, id)| id)
    }

    fn create(&self, spec: &TaskSpec) -> Result<(Docker, String), DriverError> {
        let config = parse_config(&spec.config)?;
        let body = DockerDriver::create_body(spec, &config)?;
        spec.dirs.create()?;
        let docker = self.client()?;
        self.ensure_image(&docker, &config)?;
        let name = format!("{}-{}", spec.task_name, spec.alloc_id);
        // A container of the same name is a leftover of an earlier attempt.
        let (d, n) = (docker.clone(), name.clone());
        let removed = self.call(API_TIMEOUT, async move {
            d.remove_container(&n, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await
        })?;
        match removed {
            Ok(()) => {}
            Err(err) if status_of(&err) == Some(STATUS_NOT_FOUND) => {}
            Err(err) => return Err(docker_error(err)),
        }
        let d = docker.clone();
        let created = self.call(API_TIMEOUT, async move {
            d.create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body).await
        })?;
        let id = created.map_err(|err| DriverError::Start(format!("create container: {err}")))?.id;
        Ok((docker, id))
    }

    /// The container create request for `spec`: image, command, env,
    /// labels, limits, ports, the alloc dir mounts, and the assigned GPUs as
    /// a `DeviceRequest` (driver `nvidia`, their UUIDs, capability `gpu`).
    /// Pure: what `start` sends, for tests and debugging.
    pub fn container_config(spec: &TaskSpec) -> Result<ContainerCreateBody, DriverError> {
        DockerDriver::create_body(spec, &parse_config(&spec.config)?)
    }

    fn create_body(spec: &TaskSpec, config: &DockerConfig) -> Result<ContainerCreateBody, DriverError> {
        let mut labels: HashMap<String, String> = config.labels.clone().into_iter().collect();
        labels.insert(LABEL_ALLOC_ID.into(), spec.alloc_id.clone());
        labels.insert(LABEL_TASK_NAME.into(), spec.task_name.clone());
        let mut port_bindings = HashMap::new();
        let mut exposed_ports = Vec::new();
        for label in &config.ports {
            let mapping = spec.ports.iter().find(|p| &p.label == label).ok_or_else(|| {
                DriverError::InvalidConfig(format!("port {label:?} is not a port of the task's group"))
            })?;
            for protocol in ["tcp", "udp"] {
                let key = format!("{}/{protocol}", mapping.container_port);
                exposed_ports.push(key.clone());
                port_bindings.insert(
                    key,
                    Some(vec![PortBinding { host_ip: None, host_port: Some(mapping.host_port.to_string()) }]),
                );
            }
        }
        let mut cmd = Vec::new();
        cmd.extend(config.command.clone());
        cmd.extend(config.args.iter().cloned());
        let binds =
            [(&spec.dirs.alloc_dir, "/alloc"), (&spec.dirs.local_dir, "/local"), (&spec.dirs.secrets_dir, "/secrets")]
                .iter()
                .map(|(host, container)| format!("{}:{container}", host.display()))
                .collect();
        let device_requests = caravan_gpu::reserve::docker_device_request(&spec.devices).map(|request| {
            vec![DeviceRequest {
                driver: Some(request.driver),
                count: None,
                device_ids: Some(request.device_ids),
                capabilities: Some(request.capabilities),
                options: None,
            }]
        });
        Ok(ContainerCreateBody {
            image: Some(config.image.clone()),
            cmd: (!cmd.is_empty()).then_some(cmd),
            entrypoint: (!config.entrypoint.is_empty()).then(|| config.entrypoint.clone()),
            env: Some(spec.full_env().into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            working_dir: config.work_dir.clone(),
            user: spec.user.clone(),
            exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
            host_config: Some(HostConfig {
                memory: Some(i64::from(spec.resources.memory_mb.max(1)) * BYTES_PER_MB),
                cpu_shares: Some(i64::from(spec.resources.cpu_mhz.max(2))),
                binds: Some(binds),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                device_requests,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

impl Drop for DockerDriver {
    fn drop(&mut self) {
        if let Ok(runtime) = self.runtime.as_mut() {
            if let Some(shutdown) = runtime.shutdown.take() {
                let _ = shutdown.send(());
            }
            if let Some(thread) = runtime.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

const NS_PER_S: i128 = 1_000_000_000;

/// Where the log copy stands: the Docker timestamp (ns) of the last line
/// copied, lines at or before `skip_through_ns` skipped, saved now and then.
#[derive(Debug)]
struct LogCursor {
    file: Option<std::path::PathBuf>,
    skip_through_ns: Option<i128>,
    last_ns: Option<i128>,
    saved_ns: Option<i128>,
    saved_at: std::time::Instant,
}

impl LogCursor {
    fn new(file: Option<std::path::PathBuf>, skip_through_ns: Option<i128>) -> LogCursor {
        LogCursor {
            file,
            skip_through_ns,
            last_ns: skip_through_ns,
            saved_ns: skip_through_ns,
            saved_at: std::time::Instant::now(),
        }
    }

    /// The saved timestamp; `None` when there is none (nothing copied yet,
    /// or a file that is not ours).
    fn load(path: &std::path::Path) -> Option<i128> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// The message without its timestamp, and the timestamp; `None` when
    /// it was copied before. A message without one is passed on whole.
    fn take<'a>(&self, message: &'a [u8]) -> Option<(Option<i128>, &'a [u8])> {
        let Some((stamp, rest)) = split_timestamp(message) else { return Some((None, message)) };
        if self.skip_through_ns.is_some_and(|skip| stamp <= skip) {
            return None;
        }
        Some((Some(stamp), rest))
    }

    /// The line stamped `stamp` is in the files.
    fn advance(&mut self, stamp: Option<i128>) {
        if let Some(stamp) = stamp {
            self.last_ns = Some(self.last_ns.map_or(stamp, |last| last.max(stamp)));
        }
    }

    /// Saves the cursor if [`LOG_CURSOR_SAVE_INTERVAL`] has passed.
    fn save_if_due(&mut self, stdout: &mut RotatingWriter, stderr: &mut RotatingWriter) {
        if self.saved_at.elapsed() >= LOG_CURSOR_SAVE_INTERVAL {
            self.save_flushed(stdout, stderr);
        }
    }

    /// Saves the cursor after flushing the files: it never runs ahead of
    /// the bytes on disk.
    fn save_flushed(&mut self, stdout: &mut RotatingWriter, stderr: &mut RotatingWriter) {
        if self.last_ns == self.saved_ns {
            return;
        }
        use std::io::Write;
        let _ = stdout.flush();
        let _ = stderr.flush();
        self.save();
    }

    /// Writes the cursor through a temporary file and a rename.
    fn save(&mut self) {
        self.saved_at = std::time::Instant::now();
        let (Some(file), Some(last)) = (&self.file, self.last_ns) else { return };
        if self.saved_ns == Some(last) {
            return;
        }
        let tmp = file.with_extension("tmp");
        let written = std::fs::write(&tmp, last.to_string()).and_then(|()| std::fs::rename(&tmp, file));
        match written {
            Ok(()) => self.saved_ns = Some(last),
            Err(err) => tracing::warn!(%err, file = %file.display(), "cannot save the docker log cursor"),
        }
    }
}

/// A copy that ends (the container is gone, or the driver shut down and
/// dropped it) leaves its cursor saved. The files are unbuffered: what was
/// written is on its way to disk already.
impl Drop for LogCursor {
    fn drop(&mut self) {
        self.save();
    }
}

/// Splits Docker's `timestamps=true` prefix (RFC 3339 with nanoseconds,
/// then a space) off a log message: its time in ns since the epoch and
/// the rest.
fn split_timestamp(message: &[u8]) -> Option<(i128, &[u8])> {
    let space = message.iter().take(TIMESTAMP_BYTES_MAX).position(|b| *b == b' ')?;
    let stamp = std::str::from_utf8(&message[..space]).ok()?;
    Some((parse_rfc3339_ns(stamp)?, &message[space + 1..]))
}

/// Longest timestamp Docker writes (`2006-01-02T15:04:05.999999999+07:00`).
const TIMESTAMP_BYTES_MAX: usize = 40;

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as ns since the epoch.
fn parse_rfc3339_ns(text: &str) -> Option<i128> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos: i128 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = fraction[..digits].parse::<i128>().ok()? * 10i128.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = (rest[1..3].parse::<i64>().ok()?, rest[4..6].parse::<i64>().ok()?);
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(i128::from(seconds) * NS_PER_S + nanos)
}

fn start_runtime() -> Result<Runtime, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the docker driver's runtime: {err}"))?;
    let handle = runtime.handle().clone();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("docker-driver".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(|err| format!("cannot start the docker driver's thread: {err}"))?;
    Ok(Runtime { handle, shutdown: Some(shutdown), thread: Some(thread) })
}

/// `repo:tag` (default tag `latest`); a `:` before the last `/` is a
/// registry port, not a tag.
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

fn signal_name(signal: i32) -> String {
    signal.to_string()
}

impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        DOCKER_DRIVER
    }

    fn fingerprint(&self) -> DriverFingerprint {
        let version = self
            .client()
            .and_then(|docker| self.call(API_TIMEOUT, async move { docker.version().await })?.map_err(docker_error));
        match version {
            Ok(version) => {
                let version = version.version.unwrap_or_default();
                DriverFingerprint {
                    detected: true,
                    healthy: true,
                    health_description: String::new(),
                    attributes: [
                        ("driver.docker".to_string(), "1".to_string()),
                        ("driver.docker.version".to_string(), version.clone()),
                    ]
                    .into_iter()
                    .collect(),
                    version: Some(version),
                }
            }
            Err(err) => DriverFingerprint { health_description: err.to_string(), ..Default::default() },
        }
    }

    fn validate_config(&self, config: &ConfigValue) -> Result<(), DriverError> {
        parse_config(config).map(|_| ())
    }

    fn start(&self, spec: &TaskSpec) -> Result<TaskHandle, DriverError> {
        let cursor_dir = super::executor::executor_dir(&spec.dirs);
        super::executor::prepare_dir(&cursor_dir)?;
        let log_cursor = cursor_dir.join(LOG_CURSOR_FILE);
        match std::fs::remove_file(&log_cursor) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(DriverError::io(format!("remove {}", log_cursor.display()), err)),
        }
        let (docker, id) = self.create(spec)?;
        let handle = TaskHandle {
            driver: DOCKER_DRIVER.into(),
            alloc_id: spec.alloc_id.clone(),
            task_name: spec.task_name.clone(),
            log_dir: spec.dirs.log_dir.clone(),
            logs: spec.logs,
            state: HandleState::Container { id: id.clone(), log_cursor: Some(log_cursor) },
        };
        let (d, i) = (docker.clone(), id.clone());
        let started = self.call(API_TIMEOUT, async move { d.start_container(&i, None).await })?;
        if let Err(err) = started {
            let _ = self.destroy(&handle);
            return Err(DriverError::Start(format!("start container: {err}")));
        }
        self.start_log_copy(&docker, &handle, &id, None)?;
        Ok(handle)
    }

    fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        let id = DockerDriver::container_id(handle)?;
        let docker = self.client()?;
        let (d, i) = (docker.clone(), id.clone());
        let waited = self.block_on(async move { d.wait_container(&i, None).next().await })?;
        let exit_code = match waited {
            Some(Ok(response)) => response.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(err)) if status_of(&err) == Some(STATUS_NOT_FOUND) => {
                return Err(DriverError::TaskGone(format!("container {id} no longer exists")));
            }
            Some(Err(err)) => return Err(docker_error(err)),
            None => return Err(DriverError::Docker("container wait ended without a status".into())),
        };
        let (d, i) = (docker.clone(), id.clone());
        let inspected = self.call(API_TIMEOUT, async move { d.inspect_container(&i, None).await })?;
        let oom_killed = inspected.ok().and_then(|c| c.state).and_then(|s| s.oom_killed).unwrap_or(false);
        let log_task = self.log_tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(task) = log_task {
            let _ = self.block_on(async move { tokio::time::timeout(LOG_DRAIN_TIMEOUT, task).await });
        }
        Ok(ExitResult { exit_code: i32::try_from(exit_code).unwrap_or(-1), signal: None, oom_killed, error: None })
    }

    fn signal(&self, handle: &TaskHandle, signal: i32) -> Result<(), DriverError> {
        let id = DockerDriver::container_id(handle)?;
        let docker = self.client()?;
        let signal = signal_name(signal);
        let killed = self.call(API_TIMEOUT, async move {
            docker.kill_container(&id, Some(KillContainerOptionsBuilder::new().signal(&signal).build())).await
        })?;
        killed.map_err(|err| match status_of(&err) {
            Some(STATUS_NOT_FOUND) => DriverError::TaskGone(err.to_string()),
            _ => docker_error(err),
        })
    }

    fn stop(&self, handle: &TaskHandle, kill_timeout: Duration) -> Result<(), DriverError> {
        let id = DockerDriver::container_id(handle)?;
        let docker = self.client()?;
        let seconds =
            i32::try_from(kill_timeout.as_secs_f64().ceil() as i64).unwrap_or(i32::MAX).max(STOP_TIMEOUT_MIN_S);
        let timeout = kill_timeout + API_TIMEOUT;
        let stopped = self.call(timeout, async move {
            docker.stop_container(&id, Some(StopContainerOptionsBuilder::new().t(seconds).build())).await
        })?;
        match stopped {
            Ok(()) => Ok(()),
            Err(err) if matches!(status_of(&err), Some(STATUS_NOT_FOUND | STATUS_NOT_MODIFIED)) => Ok(()),
            Err(err) => Err(docker_error(err)),
        }
    }

    fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        let id = DockerDriver::container_id(handle)?;
        let docker = self.client()?;
        let (d, i) = (docker.clone(), id.clone());
        let inspected = self.call(API_TIMEOUT, async move { d.inspect_container(&i, None).await })?;
        let container = match inspected {
            Ok(container) => container,
            Err(err) if status_of(&err) == Some(STATUS_NOT_FOUND) => {
                return Err(DriverError::TaskGone(format!("container {id} no longer exists")));
            }
            Err(err) => return Err(docker_error(err)),
        };
        let running = container.state.and_then(|s| s.running).unwrap_or(false);
        if !running {
            return Err(DriverError::TaskGone(format!("container {id} is not running")));
        }
        // Everything after the last line copied, what the container wrote
        // while no agent ran included. A handle of an older agent has no
        // cursor: output from now on.
        let after_ns = match &handle.state {
            HandleState::Container { log_cursor: Some(path), .. } => Some(LogCursor::load(path).unwrap_or(0)),
            _ => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(Some(0), |d| Some(i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))),
        };
        self.start_log_copy(&docker, handle, &id, after_ns)
    }

    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        let id = DockerDriver::container_id(handle)?;
        if let Some(task) = self.log_tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            task.abort();
        }
        let docker = self.client()?;
        let removed = self.call(API_TIMEOUT, async move {
            docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::new().force(true).v(true).build())).await
        })?;
        match removed {
            Ok(()) => Ok(()),
            Err(err) if status_of(&err) == Some(STATUS_NOT_FOUND) => Ok(()),
            Err(err) => Err(docker_error(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_parse_to_nanoseconds() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(parse_rfc3339_ns("2024-02-29T12:34:56.123456789Z"), Some(1_709_210_096_123_456_789));
        assert_eq!(parse_rfc3339_ns("2024-02-29T13:34:56.123456789+01:00"), Some(1_709_210_096_123_456_789));
        for bad in ["", "2024-02-29", "2024-13-01T00:00:00Z", "2024-02-29T12:34:56", "2024-02-29T12:34:56.Z", "x"] {
            assert_eq!(parse_rfc3339_ns(bad), None, "{bad:?}");
        }
        let (stamp, rest) = split_timestamp(b"1970-01-01T00:00:02.000000001Z hello world\n").unwrap();
        assert_eq!((stamp, rest), (2_000_000_001, &b"hello world\n"[..]));
        assert_eq!(split_timestamp(b"no stamp here\n"), None);
    }

    #[test]
    fn the_cursor_skips_what_was_copied_and_passes_unstamped_output() {
        let mut cursor = LogCursor::new(None, Some(2_000_000_000));
        assert_eq!(cursor.take(b"1970-01-01T00:00:01.9Z old\n"), None);
        assert_eq!(cursor.take(b"1970-01-01T00:00:02Z same\n"), None);
        assert_eq!(cursor.take(b"1970-01-01T00:00:02.1Z new\n"), Some((Some(2_100_000_000), &b"new\n"[..])));
        assert_eq!(cursor.take(b"plain\n"), Some((None, &b"plain\n"[..])));
        assert_eq!(cursor.last_ns, Some(2_000_000_000), "nothing written yet");
        cursor.advance(Some(2_100_000_000));
        cursor.advance(None);
        assert_eq!(cursor.last_ns, Some(2_100_000_000));
    }

    #[test]
    fn image_names_split_into_repo_and_tag() {
        assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_image("caravan-test/busybox:1"), ("caravan-test/busybox".into(), "1".into()));
        assert_eq!(split_image("registry:5000/app"), ("registry:5000/app".into(), "latest".into()));
    }
}
