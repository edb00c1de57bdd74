//! `caravan alloc logs [-stderr] [-f] [-tail] [-n N] [-c BYTES] <alloc> [<task>]`:
//! a task's stdout or stderr through `/v1/client/fs/logs`, as Nomad's CLI.
//!
//! The allocation may be given by a unique id prefix; the task may be left
//! out when the allocation runs one. `-tail` starts `-n` lines (default 10)
//! or `-c` bytes from the end; with `-f` it then follows.
//!
//! `caravan alloc fs [-stat] <alloc> [<path>]`: lists a directory of the
//! allocation (Nomad's table: mode, size, modified time, name) or prints a
//! file, through `/v1/client/fs/{stat,ls,cat}`.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::api_client::ApiClient;

/// Lines `-tail` shows when `-n` is not given, as Nomad.
const TAIL_LINES_DEFAULT: u64 = 10;
/// Bytes requested per line wanted by `-tail -n`: Nomad's estimate of a
/// line's length; the CLI then keeps the last `n` lines of what came.
const BYTES_PER_LINE_ESTIMATE: u64 = 120;
/// Copy buffer from the response to stdout.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
pub(crate) struct LogsArgs {
    /// Show stderr instead of stdout.
    #[arg(long)]
    stderr: bool,
    /// Follow the log as it grows.
    #[arg(short = 'f')]
    follow: bool,
    /// Start from the end of the log (see -n and -c).
    #[arg(long)]
    tail: bool,
    /// Lines to show with -tail.
    #[arg(short = 'n')]
    lines: Option<u64>,
    /// Bytes to show with -tail.
    #[arg(short = 'c')]
    bytes: Option<u64>,
    /// The allocation id or a unique prefix of it.
    alloc: String,
    /// The task; optional when the allocation runs one task.
    task: Option<String>,
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_default()
}

/// The full id of the allocation `prefix` names.
fn resolve_alloc(client: &ApiClient, prefix: &str) -> anyhow::Result<Value> {
    let allocs = client.get(&format!("/v1/allocations?prefix={prefix}"))?;
    let matches: Vec<&Value> = allocs.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    match matches.as_slice() {
        [] => bail!("no allocation with prefix {prefix:?}"),
        [one] => client.get(&format!("/v1/allocation/{}", text(&one["ID"]))),
        many => {
            let ids: Vec<String> = many.iter().map(|a| text(&a["ID"])).collect();
            bail!("prefix {prefix:?} matches several allocations; give more of the id: {}", ids.join(", "))
        }
    }
}

/// The task names of an allocation: its task states, else its group's tasks.
fn task_names(alloc: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        alloc["TaskStates"].as_object().map(|states| states.keys().cloned().collect()).unwrap_or_default();
    if names.is_empty() {
        let group = text(&alloc["TaskGroup"]);
        if let Some(groups) = alloc["Job"]["TaskGroups"].as_array() {
            for g in groups.iter().filter(|g| text(&g["Name"]) == group) {
                names.extend(g["Tasks"].as_array().into_iter().flatten().map(|t| text(&t["Name"])));
            }
        }
    }
    names.sort();
    names
}

/// The last `lines` lines of `data`.
fn last_lines(data: &[u8], lines: u64) -> &[u8] {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0u64;
    for (i, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return &data[i + 1..];
            }
        }
    }
    data
}

pub(crate) fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env();
    let alloc = resolve_alloc(&client, &args.alloc)?;
    let alloc_id = text(&alloc["ID"]);
    let task = match args.task {
        Some(task) => task,
        None => match task_names(&alloc).as_slice() {
            [one] => one.clone(),
            names => bail!(
                "allocation {alloc_id} runs several tasks ({}); name one: caravan alloc logs {} <task>",
                names.join(", "),
                args.alloc
            ),
        },
    };
    let log_type = if args.stderr { "stderr" } else { "stdout" };
    let lines = args.tail.then(|| args.lines.unwrap_or(TAIL_LINES_DEFAULT)).filter(|_| args.bytes.is_none());
    let (origin, offset) = match (args.tail, args.bytes, lines) {
        (false, _, _) => ("start", 0),
        (true, Some(bytes), _) => ("end", bytes),
        (true, None, lines) => ("end", lines.unwrap_or(TAIL_LINES_DEFAULT).saturating_mul(BYTES_PER_LINE_ESTIMATE)),
    };
    let path = format!(
        "/v1/client/fs/logs/{alloc_id}?task={task}&type={log_type}&origin={origin}&offset={offset}&plain=true&follow={}",
        args.follow
    );
    let mut reader = client.get_stream(&path)?;
    let mut stdout = std::io::stdout().lock();
    if let (Some(lines), false) = (lines, args.follow) {
        let mut data = Vec::new();
        reader.read_to_end(&mut data).context("reading the log")?;
        stdout.write_all(last_lines(&data, lines))?;
        stdout.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let n = reader.read(&mut buffer).context("reading the log")?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buffer[..n])?;
        // Following: show each chunk as it comes.
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub(crate) struct FsArgs {
    /// Show the file's or directory's information instead of its contents.
    #[arg(long)]
    stat: bool,
    /// The allocation id or a unique prefix of it.
    alloc: String,
    /// A path relative to the allocation directory; its root when left out.
    path: Option<String>,
}

/// `path` for a query string: every byte but unreserved ones and `/`
/// percent-encoded.
fn query_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One row of Nomad's `alloc fs` table for an `AllocFileInfo`.
fn file_row(file: &Value) -> Vec<String> {
    let mut name = text(&file["Name"]);
    if file["IsDir"] == true {
        name.push('/');
    }
    vec![text(&file["FileMode"]), file["Size"].as_u64().unwrap_or(0).to_string(), text(&file["ModTime"]), name]
}

pub(crate) fn run_fs(args: FsArgs) -> anyhow::Result<ExitCode> {
    const HEADER: [&str; 4] = ["Mode", "Size", "Modified Time", "Name"];
    let client = ApiClient::from_env();
    let alloc = resolve_alloc(&client, &args.alloc)?;
    let alloc_id = text(&alloc["ID"]);
    let path = query_escape(args.path.as_deref().unwrap_or("/"));
    let stat = client.get(&format!("/v1/client/fs/stat/{alloc_id}?path={path}"))?;
    if args.stat {
        crate::reads::table(&HEADER, &[file_row(&stat)]);
        return Ok(ExitCode::SUCCESS);
    }
    if stat["IsDir"] == true {
        let listing = client.get(&format!("/v1/client/fs/ls/{alloc_id}?path={path}"))?;
        let rows: Vec<Vec<String>> = listing.as_array().into_iter().flatten().map(file_row).collect();
        crate::reads::table(&HEADER, &rows);
        return Ok(ExitCode::SUCCESS);
    }
    let mut reader = client.get_stream(&format!("/v1/client/fs/cat/{alloc_id}?path={path}"))?;
    let mut stdout = std::io::stdout().lock();
    std::io::copy(&mut reader, &mut stdout).context("reading the file")?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"", 3), b"");
    }

    #[test]
    fn query_paths_are_escaped() {
        assert_eq!(query_escape("/alloc/logs"), "/alloc/logs");
        assert_eq!(query_escape("a b&c=d%"), "a%20b%26c%3Dd%25");
    }
}
