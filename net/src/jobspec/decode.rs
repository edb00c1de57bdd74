//! The walk over the file's blocks, driven by the tables in `schema`, producing API JSON.

use hcl::{Structure, Value};
use serde_json::{Map as JsonMap, Value as Json};

use super::JobspecError;
use super::duration::parse_duration_ns;
use super::eval::{Evaluator, value_type_name};
use super::schema::{Attr, BodyKind, JOB, Kind, Post, Schema};

/// Deepest block nesting accepted inside a driver `config`; real configs nest two or three
/// levels, and the bound keeps hostile input off the stack's limit.
const CONFIG_DEPTH_MAX: usize = 32;

/// Decodes a parsed jobspec: checks the top level, resolves variables, decodes the job.
pub(super) fn decode_file(
    body: &hcl::Body,
    cli_vars: &[(String, String)],
    var_files: &[hcl::Body],
) -> Result<Json, JobspecError> {
    let top = "top level".to_string();
    let mut job_block = None;
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                return Err(JobspecError::UnsupportedArgument { path: top, name: attr.key.as_str().to_string() });
            }
            Structure::Block(block) => match block.identifier.as_str() {
                "variable" | "variables" | "locals" => {}
                "job" => {
                    if job_block.is_some() {
                        return Err(JobspecError::DuplicateBlock { path: top, block: "job".into() });
                    }
                    job_block = Some(block);
                }
                other => return Err(JobspecError::UnsupportedBlock { path: top, name: other.to_string() }),
            },
        }
    }
    let job_block = job_block.ok_or(JobspecError::MissingJob)?;
    let [label] = job_block.labels.as_slice() else {
        return Err(JobspecError::BlockLabels {
            path: top,
            block: "job".into(),
            expected: 1,
            found: job_block.labels.len(),
        });
    };
    let evaluator = Evaluator::from_file(body, cli_vars, var_files)?;
    let id = label.as_str().to_string();
    let path = format!("job {id:?}");
    let mut job = decode_body(&job_block.body, &JOB, &path, &evaluator)?;
    job.entry("ID").or_insert_with(|| Json::String(id.clone()));
    if !job.contains_key("Name") {
        let name = job["ID"].clone();
        job.insert("Name".into(), name);
    }
    if let Some(Json::Object(periodic)) = job.get_mut("Periodic")
        && periodic.contains_key("Spec")
    {
        periodic.insert("SpecType".into(), Json::String("cron".into()));
    }
    let mut root = JsonMap::new();
    root.insert("Job".into(), Json::Object(job));
    Ok(Json::Object(root))
}

fn decode_body(
    body: &hcl::Body,
    schema: &Schema,
    path: &str,
    evaluator: &Evaluator,
) -> Result<JsonMap<String, Json>, JobspecError> {
    let mut out = JsonMap::new();
    let mut attrs_seen: Vec<&str> = Vec::new();
    let mut blocks_seen: Vec<&str> = Vec::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attribute) => {
                let name = attribute.key.as_str();
                let Some(spec) = schema.attrs.iter().find(|a| a.hcl == name) else {
                    return Err(JobspecError::UnsupportedArgument { path: path.into(), name: name.into() });
                };
                if attrs_seen.contains(&name) {
                    return Err(JobspecError::DuplicateArgument { path: path.into(), name: name.into() });
                }
                attrs_seen.push(name);
                let value = evaluator.eval(&attribute.expr).map_err(|message| JobspecError::Eval {
                    path: path.into(),
                    name: name.into(),
                    message,
                })?;
                if value.is_null() {
                    continue;
                }
                apply_attr(&mut out, spec, value, path)?;
            }
            Structure::Block(block) => {
                let name = block.identifier.as_str();
                let Some(spec) = schema.blocks.iter().find(|b| b.hcl == name) else {
                    return Err(JobspecError::UnsupportedBlock { path: path.into(), name: name.into() });
                };
                let expected = usize::from(spec.label.is_some());
                let labels_ok = block.labels.len() == expected
                    || (matches!(spec.body, BodyKind::FreeForm) && block.labels.is_empty());
                if !labels_ok {
                    return Err(JobspecError::BlockLabels {
                        path: path.into(),
                        block: name.into(),
                        expected,
                        found: block.labels.len(),
                    });
                }
                if !spec.many {
                    if blocks_seen.contains(&name) {
                        return Err(JobspecError::DuplicateBlock { path: path.into(), block: name.into() });
                    }
                    blocks_seen.push(name);
                }
                let label = block.labels.first().map(|l| l.as_str());
                let child_path = match label {
                    Some(label) => format!("{path} > {name} {label:?}"),
                    None => format!("{path} > {name}"),
                };
                let value = match &spec.body {
                    BodyKind::Fields(child) => {
                        let mut fields = decode_body(&block.body, child, &child_path, evaluator)?;
                        if let (Some(key), Some(label)) = (spec.label, label) {
                            fields.insert(key.into(), Json::String(label.into()));
                        }
                        apply_post(child.post, &mut fields);
                        Json::Object(fields)
                    }
                    BodyKind::FreeForm => Json::Object(decode_free_form(&block.body, &child_path, evaluator, 0)?),
                    BodyKind::StrMap => Json::Object(decode_str_map_block(&block.body, &child_path, evaluator)?),
                };
                if spec.many {
                    let entry = out.entry(spec.json).or_insert_with(|| Json::Array(Vec::new()));
                    if let Json::Array(items) = entry {
                        items.push(value);
                    }
                } else {
                    merge_insert(&mut out, spec.json, value);
                }
            }
        }
    }
    Ok(out)
}

/// Inserts a value; when both `meta = {...}` and `meta {}` are given, their keys merge.
fn merge_insert(out: &mut JsonMap<String, Json>, key: &str, value: Json) {
    match (out.get_mut(key), value) {
        (Some(Json::Object(existing)), Json::Object(more)) => existing.extend(more),
        (_, value) => {
            out.insert(key.into(), value);
        }
    }
}

fn apply_post(post: Post, fields: &mut JsonMap<String, Json>) {
    match post {
        Post::None => {}
        Post::Network => {
            let Some(Json::Array(ports)) = fields.remove("DynamicPorts") else { return };
            let (reserved, dynamic): (Vec<Json>, Vec<Json>) =
                ports.into_iter().partition(|port| port.get("Value").and_then(Json::as_i64).unwrap_or(0) > 0);
            if !reserved.is_empty() {
                fields.insert("ReservedPorts".into(), Json::Array(reserved));
            }
            if !dynamic.is_empty() {
                fields.insert("DynamicPorts".into(), Json::Array(dynamic));
            }
        }
        Post::Template => {
            // Nomad's jobspec2 normalizeTemplates sets these, so `-output` shows them.
            fields.entry("ChangeMode").or_insert_with(|| Json::String("restart".into()));
            fields.entry("Perms").or_insert_with(|| Json::String("0644".into()));
            fields.entry("Splay").or_insert_with(|| Json::from(5_000_000_000_i64));
            fields.entry("ErrMissingKey").or_insert(Json::Bool(false));
        }
    }
}

fn apply_attr(out: &mut JsonMap<String, Json>, spec: &Attr, value: Value, path: &str) -> Result<(), JobspecError> {
    let wrong_type = |expected: &str, value: &Value| JobspecError::WrongType {
        path: path.into(),
        name: spec.hcl.into(),
        message: format!("expected {expected}, found {}", describe(value)),
    };
    let json = match spec.kind {
        Kind::Str => Json::String(to_text(&value).ok_or_else(|| wrong_type("a string", &value))?),
        Kind::Int => Json::from(to_int(&value).ok_or_else(|| wrong_type("a whole number", &value))?),
        Kind::Bool => Json::Bool(to_bool(&value).ok_or_else(|| wrong_type("a bool", &value))?),
        Kind::Duration => match &value {
            Value::String(text) => match parse_duration_ns(text) {
                Some(ns) => Json::from(ns),
                None => {
                    return Err(JobspecError::BadDuration {
                        path: path.into(),
                        name: spec.hcl.into(),
                        value: text.clone(),
                    });
                }
            },
            Value::Number(_) => Json::from(to_int(&value).ok_or_else(|| wrong_type("a duration", &value))?),
            other => return Err(wrong_type("a duration string like \"30s\"", other)),
        },
        Kind::StrList => {
            let Value::Array(items) = &value else { return Err(wrong_type("a list of strings", &value)) };
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                texts.push(Json::String(to_text(item).ok_or_else(|| wrong_type("a list of strings", &value))?));
            }
            Json::Array(texts)
        }
        Kind::StrMap => {
            let Value::Object(entries) = &value else { return Err(wrong_type("a map of strings", &value)) };
            let mut map = JsonMap::new();
            for (key, item) in entries {
                let text = to_text(item).ok_or_else(|| wrong_type("a map of strings", &value))?;
                map.insert(key.clone(), Json::String(text));
            }
            Json::Object(map)
        }
        Kind::Any => to_json(&value),
        Kind::Shorthand { operand, target } => {
            let text = to_text(&value).ok_or_else(|| wrong_type("a string", &value))?;
            out.insert(target.into(), Json::String(text));
            out.insert("Operand".into(), Json::String(operand.into()));
            return Ok(());
        }
        Kind::DistinctHosts => {
            if to_bool(&value).ok_or_else(|| wrong_type("a bool", &value))? {
                out.insert("Operand".into(), Json::String("distinct_hosts".into()));
            }
            return Ok(());
        }
    };
    merge_insert(out, spec.json, json);
    Ok(())
}

/// `meta { k = "v" }`: attributes only, values as strings.
fn decode_str_map_block(
    body: &hcl::Body,
    path: &str,
    evaluator: &Evaluator,
) -> Result<JsonMap<String, Json>, JobspecError> {
    let mut map = JsonMap::new();
    for structure in body.iter() {
        let Structure::Attribute(attribute) = structure else {
            let Structure::Block(block) = structure else { continue };
            return Err(JobspecError::UnsupportedBlock { path: path.into(), name: block.identifier.to_string() });
        };
        let name = attribute.key.as_str();
        if map.contains_key(name) {
            return Err(JobspecError::DuplicateArgument { path: path.into(), name: name.into() });
        }
        let value = evaluator.eval(&attribute.expr).map_err(|message| JobspecError::Eval {
            path: path.into(),
            name: name.into(),
            message,
        })?;
        let text = to_text(&value).ok_or_else(|| JobspecError::WrongType {
            path: path.into(),
            name: name.into(),
            message: format!("expected a string, found {}", describe(&value)),
        })?;
        map.insert(name.into(), Json::String(text));
    }
    Ok(map)
}

/// Driver `config`: attributes as JSON values; blocks as arrays of objects under their name
/// (one block gives a one-element array, as Nomad's block-to-attribute conversion does);
/// a labeled block nests its body under its labels.
fn decode_free_form(
    body: &hcl::Body,
    path: &str,
    evaluator: &Evaluator,
    depth: usize,
) -> Result<JsonMap<String, Json>, JobspecError> {
    if depth > CONFIG_DEPTH_MAX {
        return Err(JobspecError::WrongType {
            path: path.into(),
            name: "config".into(),
            message: format!("blocks nested deeper than {CONFIG_DEPTH_MAX}"),
        });
    }
    let mut map = JsonMap::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attribute) => {
                let name = attribute.key.as_str();
                if map.contains_key(name) {
                    return Err(JobspecError::DuplicateArgument { path: path.into(), name: name.into() });
                }
                let value = evaluator.eval(&attribute.expr).map_err(|message| JobspecError::Eval {
                    path: path.into(),
                    name: name.into(),
                    message,
                })?;
                map.insert(name.into(), to_json(&value));
            }
            Structure::Block(block) => {
                let name = block.identifier.as_str();
                let child_path = format!("{path} > {name}");
                let mut value = Json::Object(decode_free_form(&block.body, &child_path, evaluator, depth + 1)?);
                for label in block.labels.iter().rev() {
                    let mut wrapper = JsonMap::new();
                    wrapper.insert(label.as_str().into(), value);
                    value = Json::Object(wrapper);
                }
                match map.entry(name).or_insert_with(|| Json::Array(Vec::new())) {
                    Json::Array(items) => items.push(value),
                    _ => {
                        return Err(JobspecError::DuplicateArgument { path: path.into(), name: name.into() });
                    }
                }
            }
        }
    }
    Ok(map)
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                Json::from(int)
            } else if let Some(uint) = number.as_u64() {
                Json::from(uint)
            } else {
                number.as_f64().and_then(serde_json::Number::from_f64).map_or(Json::Null, Json::Number)
            }
        }
        Value::String(text) => Json::String(text.clone()),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Object(entries) => Json::Object(entries.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// A primitive as a string, as cty converts number and bool to string.
fn to_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A whole number; strings holding one convert, as cty converts them.
fn to_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().or_else(|| {
            let float = number.as_f64()?;
            let whole = float.fract() == 0.0 && float.abs() < 9.0e15;
            #[allow(clippy::cast_possible_truncation)] // checked whole and in range just above
            whole.then_some(float as i64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn to_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(text) => match text.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("string {text:?}"),
        Value::Number(number) => format!("number {number}"),
        Value::Bool(b) => format!("bool {b}"),
        other => value_type_name(other).to_string(),
    }
}
