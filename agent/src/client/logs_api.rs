//! The client's side of `/v1/client/fs/logs`: [`AllocDirLogs`] finds a
//! task's rotated log files (`<alloc dir>/<alloc id>/alloc/logs/<task>.<type>.N`)
//! for the HTTP API of the same agent (`caravan_net::http::LocalLogs`), and
//! the allocation directory `/v1/client/fs/{ls,stat,cat,readat}` read under.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use caravan_net::http::{LocalLogs, LocalLogsError, LogFile, LogType};

use super::agent::TaskLiveness;
use super::driver::logs::{LogStream, log_files};

/// The log files under one client's allocation directory.
#[derive(Debug, Clone)]
pub struct AllocDirLogs {
    alloc_root: PathBuf,
    /// The client's task states, once it runs: the HTTP API starts before
    /// the client (whose node registers the API's address).
    liveness: Arc<OnceLock<TaskLiveness>>,
}

impl AllocDirLogs {
    /// `alloc_root`: the client's allocation directory (`client.alloc_dir`,
    /// by default `<data_dir>/alloc`).
    pub fn new(alloc_root: impl Into<PathBuf>) -> AllocDirLogs {
        AllocDirLogs { alloc_root: alloc_root.into(), liveness: Arc::new(OnceLock::new()) }
    }

    /// Where the started client's task states go: set once, by the agent.
    pub fn liveness_slot(&self) -> Arc<OnceLock<TaskLiveness>> {
        Arc::clone(&self.liveness)
    }
}

/// A name that is one path component of ours: no separators, no `.`/`..`,
/// not empty, so a request never reads outside the allocation directory.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl LocalLogs for AllocDirLogs {
    fn log_files(&self, alloc_id: &str, task: &str, log_type: LogType) -> Result<Vec<LogFile>, LocalLogsError> {
        let alloc = self.alloc_root.join(alloc_id);
        if !plain_name(alloc_id) || !alloc.is_dir() {
            return Err(LocalLogsError::UnknownAlloc(alloc_id.to_string()));
        }
        // `alloc` is the group's shared directory, not a task.
        if !plain_name(task) || task == "alloc" || !alloc.join(task).is_dir() {
            return Err(LocalLogsError::UnknownTask { alloc_id: alloc_id.to_string(), task: task.to_string() });
        }
        let stream = match log_type {
            LogType::Stdout => LogStream::Stdout,
            LogType::Stderr => LogStream::Stderr,
        };
        let dir = alloc.join("alloc").join("logs");
        if !Path::new(&dir).is_dir() {
            return Ok(Vec::new());
        }
        let files =
            log_files(&dir, task, stream).map_err(|err| LocalLogsError::Io(format!("{}: {err}", dir.display())))?;
        Ok(files.into_iter().map(|(index, path)| LogFile { index, path }).collect())
    }

    fn alloc_dir(&self, alloc_id: &str) -> Result<PathBuf, LocalLogsError> {
        let alloc = self.alloc_root.join(alloc_id);
        if !plain_name(alloc_id) || !alloc.is_dir() {
            return Err(LocalLogsError::UnknownAlloc(alloc_id.to_string()));
        }
        Ok(alloc)
    }

    fn task_dead(&self, alloc_id: &str, task: &str) -> Option<bool> {
        self.liveness.get()?.task_dead(alloc_id, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rotated_files_and_refuses_what_is_not_there() {
        let root = std::env::temp_dir().join(format!("caravan-logs-api-{}", std::process::id()));
        let logs_dir = root.join("a1/alloc/logs");
        std::fs::create_dir_all(&logs_dir).unwrap();
        std::fs::create_dir_all(root.join("a1/web")).unwrap();
        for name in ["web.stdout.1", "web.stdout.0", "web.stderr.0", "web.stdout.x"] {
            std::fs::write(logs_dir.join(name), "x").unwrap();
        }
        let logs = AllocDirLogs::new(&root);
        let files = logs.log_files("a1", "web", LogType::Stdout).unwrap();
        assert_eq!(files.iter().map(|f| f.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(files[1].path, logs_dir.join("web.stdout.1"));
        assert_eq!(logs.log_files("a1", "web", LogType::Stderr).unwrap().len(), 1);
        assert!(matches!(logs.log_files("a2", "web", LogType::Stdout), Err(LocalLogsError::UnknownAlloc(_))));
        assert!(matches!(logs.log_files("..", "web", LogType::Stdout), Err(LocalLogsError::UnknownAlloc(_))));
        assert!(matches!(logs.log_files("a1", "db", LogType::Stdout), Err(LocalLogsError::UnknownTask { .. })));
        assert!(matches!(logs.log_files("a1", "alloc", LogType::Stdout), Err(LocalLogsError::UnknownTask { .. })));
        assert_eq!(logs.alloc_dir("a1").unwrap(), root.join("a1"));
        assert!(matches!(logs.alloc_dir(".."), Err(LocalLogsError::UnknownAlloc(_))));
        assert!(matches!(logs.alloc_dir("a2"), Err(LocalLogsError::UnknownAlloc(_))));
        let _ = std::fs::remove_dir_all(&root);
    }
}
