//! [`decode_job_request`]: the body of `PUT/POST /v1/jobs` to an engine job.
//!
//! Nomad's HTTP endpoint wants `{"Job": {...}}` (its `JobRegisterRequest`;
//! without `Job` it answers "Job must be specified"), while `nomad job run
//! -json` accepts a file with or without that wrapper. Caravan accepts both
//! here: a body with a `Job` key is the wrapped form (its other keys, such as
//! `EnforceIndex`, are the caller's business), any other object is a bare job.

use serde::Deserialize;

use super::error::ApiError;
use super::job::Job;

/// Largest request body accepted: a job with hundreds of groups and large
/// driver configs is well under 1 MiB, and the body is held in memory three
/// times over while it is parsed, so 8 MiB bounds that at a few tens of MiB.
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Deepest nesting of arrays and objects accepted, checked on the raw bytes
/// before parsing. A job's own structure is about eight levels deep and driver
/// configs add a few; serde_json stops at 128 levels by itself (its recursion
/// limit), but converting the tree recurses again, so the bound is ours and
/// lower.
pub const JSON_DEPTH_MAX: usize = 64;

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Job")]
    job: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Wrapped {
    #[serde(rename = "Job")]
    job: Job,
}

/// Decode, canonicalize and validate a job submission.
pub fn decode_job_request(body: &[u8]) -> Result<caravan_engine::model::Job, ApiError> {
    super::job_from_api(decode_api_job(body)?)
}

/// Decode a job submission into Nomad's shape, without canonicalizing it.
pub fn decode_api_job(body: &[u8]) -> Result<Job, ApiError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(ApiError::one(
            "",
            format!("request body is {} bytes, more than the limit of {BODY_BYTES_MAX}", body.len()),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::one("", format!("request body is not UTF-8: invalid byte at offset {}", e.valid_up_to()))
    })?;
    check_depth(text)?;
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| json_error(text, &e, ""))?;
    if envelope.job.is_some() {
        let wrapped: Wrapped = serde_json::from_str(text).map_err(|e| json_error(text, &e, "Job."))?;
        Ok(wrapped.job)
    } else {
        serde_json::from_str(text).map_err(|e| json_error(text, &e, ""))
    }
}

/// Refuse nesting deeper than [`JSON_DEPTH_MAX`], scanning bytes outside strings.
fn check_depth(text: &str) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, b) in text.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > JSON_DEPTH_MAX {
                    // A bare job has no `Job` key, so stripping it is right for both forms.
                    let path = path_at(text, offset, "Job.");
                    return Err(ApiError::one(&path, format!("nested deeper than {JSON_DEPTH_MAX} levels")));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A serde_json error as a problem with its JSON path. serde_json reports a
/// line and column; the path is recovered by scanning the text up to there.
fn json_error(text: &str, e: &serde_json::Error, strip: &str) -> ApiError {
    let offset = offset_of(text, e.line(), e.column());
    let path = if e.is_syntax() || e.is_eof() { String::new() } else { path_at(text, offset, strip) };
    let message = e.to_string();
    // "invalid type: string \"x\", expected i64 at line 1 column 9" → keep the what, drop the where for paths.
    let what = match message.rfind(" at line ") {
        Some(i) if !path.is_empty() => message[..i].to_string(),
        _ => message.clone(),
    };
    let what = if e.is_syntax() || e.is_eof() { format!("malformed JSON: {what}") } else { what };
    ApiError::one(&path, what)
}

/// Byte offset of a 1-based line and column (serde_json counts columns in bytes).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return (offset + column).min(text.len());
        }
        offset += l.len();
    }
    text.len()
}

#[derive(Debug)]
enum Step {
    /// In an object; the last key read (if any) and whether we are after its colon.
    Key(Option<String>),
    Index(usize),
}

/// The JSON path (`TaskGroups[0].Tasks[1].Resources.CPU`) of the value being
/// read at byte `end`, with `strip` removed from its front.
fn path_at(text: &str, end: usize, strip: &str) -> String {
    let bytes = text.as_bytes();
    let end = end.min(bytes.len());
    let mut stack: Vec<Step> = Vec::new();
    let mut i = 0;
    let mut string_start: Option<usize> = None;
    let mut escaped = false;
    let mut last_string: Option<String> = None;
    while i < end {
        let b = bytes[i];
        if let Some(start) = string_start {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                string_start = None;
                // Keys are short in practice; decode escapes the simple way.
                let raw = &text[start..i];
                last_string =
                    Some(serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap_or_else(|_| raw.to_string()));
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => string_start = Some(i + 1),
            b'{' => stack.push(Step::Key(None)),
            b'[' => stack.push(Step::Index(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b':' => {
                if let Some(Step::Key(k)) = stack.last_mut() {
                    *k = last_string.take();
                }
            }
            b',' => match stack.last_mut() {
                Some(Step::Index(n)) => *n += 1,
                Some(Step::Key(k)) => *k = None,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for step in &stack {
        match step {
            Step::Key(Some(k)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Step::Key(None) => {}
            Step::Index(n) => path.push_str(&format!("[{n}]")),
        }
    }
    path.strip_prefix(strip).map(str::to_string).unwrap_or(path)
}
