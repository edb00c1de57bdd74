//! Nomad's job diff (`JobDiff`), as `/v1/job/<id>/plan` returns it with
//! `Diff: true`: what a submitted job changes against the stored one, field
//! by field. Both jobs are compared in their API JSON form, so every field
//! the API shows is diffed the same way:
//!
//! - scalars are `Fields` (`{Type, Name, Old, New, Annotations}`, values as
//!   text, as Nomad renders them);
//! - nested objects are `Objects` named by their key (`Update`, `Config`,
//!   `Resources`), diffed recursively;
//! - lists of scalars (`Datacenters`, `args`) are an object of set
//!   membership: each value added or deleted is a field named by the list;
//! - lists of objects (`Constraints`, `Networks`) are compared as sets:
//!   an element only in the old job is a deleted object, one only in the
//!   new job an added one;
//! - task groups and tasks are matched by `Name` (`TaskGroups`, `Tasks`).
//!
//! Only what differs is listed (Nomad's non-contextual diff), and a diff's
//! `Type` is `Added`, `Deleted`, `Edited` or `None`.

use serde_json::{Map, Value, json};

/// Job fields that are bookkeeping, not specification: never diffed.
const JOB_FIELDS_SKIPPED: [&str; 11] = [
    "ID",
    "TaskGroups",
    "Status",
    "StatusDescription",
    "Stable",
    "Version",
    "SubmitTime",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "Dispatched",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiffType {
    None,
    Added,
    Deleted,
    Edited,
}

impl DiffType {
    fn as_str(self) -> &'static str {
        match self {
            DiffType::None => "None",
            DiffType::Added => "Added",
            DiffType::Deleted => "Deleted",
            DiffType::Edited => "Edited",
        }
    }

    fn of(old: Option<&Value>, new: Option<&Value>, children_changed: bool) -> DiffType {
        match (old, new) {
            (None, Some(_)) => DiffType::Added,
            (Some(_), None) => DiffType::Deleted,
            _ if children_changed => DiffType::Edited,
            _ => DiffType::None,
        }
    }
}

/// What the plan of each task group would do, for its `Updates` and its
/// tasks' annotations: Nomad's `DesiredTGUpdates` names and counts.
pub type GroupUpdates<'a> = &'a dyn Fn(&str) -> Vec<(&'static str, u64)>;

/// The diff of `new` against `old` (`None`: the job is new), both in the
/// API's JSON form.
pub fn job_diff(old: Option<&Value>, new: &Value, updates: GroupUpdates<'_>) -> Value {
    let empty = Map::new();
    let old_map = old.and_then(Value::as_object);
    let new_map = new.as_object().unwrap_or(&empty);
    let (fields, objects) = members_diff(old_map.unwrap_or(&empty), new_map, &JOB_FIELDS_SKIPPED);
    let groups = named_diffs(old_map.and_then(|m| m.get("TaskGroups")), new_map.get("TaskGroups"), |name, o, n| {
        group_diff(name, o, n, updates)
    });
    let changed = !fields.is_empty() || !objects.is_empty() || groups.iter().any(|g| g["Type"] != "None");
    let kind = if old.is_none() { DiffType::Added } else { DiffType::of(old, Some(new), changed) };
    json!({
        "Type": kind.as_str(),
        "ID": new_map.get("ID").cloned().unwrap_or(Value::Null),
        "Fields": non_empty(fields),
        "Objects": non_empty(objects),
        "TaskGroups": non_empty(groups),
    })
}

fn group_diff(name: &str, old: Option<&Value>, new: Option<&Value>, updates: GroupUpdates<'_>) -> Value {
    let empty = Map::new();
    let old_map = old.and_then(Value::as_object).unwrap_or(&empty);
    let new_map = new.and_then(Value::as_object).unwrap_or(&empty);
    let (fields, objects) = members_diff(old_map, new_map, &["Name", "Tasks"]);
    let group_updates = updates(name);
    let destructive = group_updates.iter().any(|(kind, _)| *kind == "create/destroy update");
    let tasks =
        named_diffs(old_map.get("Tasks"), new_map.get("Tasks"), |task, o, n| task_diff(task, o, n, destructive));
    let changed = !fields.is_empty() || !objects.is_empty() || tasks.iter().any(|t| t["Type"] != "None");
    let updates: Map<String, Value> = group_updates.into_iter().map(|(k, n)| (k.to_string(), json!(n))).collect();
    json!({
        "Type": DiffType::of(old, new, changed).as_str(),
        "Name": name,
        "Fields": non_empty(fields),
        "Objects": non_empty(objects),
        "Tasks": non_empty(tasks),
        "Updates": if updates.is_empty() { Value::Null } else { Value::Object(updates) },
    })
}

fn task_diff(name: &str, old: Option<&Value>, new: Option<&Value>, destructive: bool) -> Value {
    let empty = Map::new();
    let old_map = old.and_then(Value::as_object).unwrap_or(&empty);
    let new_map = new.and_then(Value::as_object).unwrap_or(&empty);
    let (fields, objects) = members_diff(old_map, new_map, &["Name"]);
    let kind = DiffType::of(old, new, !fields.is_empty() || !objects.is_empty());
    let annotations = match kind {
        DiffType::Edited if destructive => json!(["forces create/destroy update"]),
        DiffType::Edited => json!(["forces in-place update"]),
        DiffType::Added => json!(["forces create"]),
        DiffType::Deleted => json!(["forces destroy"]),
        DiffType::None => Value::Null,
    };
    json!({
        "Type": kind.as_str(),
        "Name": name,
        "Fields": non_empty(fields),
        "Objects": non_empty(objects),
        "Annotations": annotations,
    })
}

/// Diffs of two lists of named objects, matched by `Name`, in the new
/// list's order and then the deleted ones'. Unchanged ones are kept (with
/// `Type: None`) as Nomad keeps them, so a reader sees every group.
fn named_diffs(
    old: Option<&Value>,
    new: Option<&Value>,
    diff: impl Fn(&str, Option<&Value>, Option<&Value>) -> Value,
) -> Vec<Value> {
    let name_of = |v: &Value| v.get("Name").and_then(Value::as_str).unwrap_or("").to_string();
    let old_items: Vec<&Value> = old.and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    let new_items: Vec<&Value> = new.and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    let mut out = Vec::new();
    for item in &new_items {
        let name = name_of(item);
        let before = old_items.iter().copied().find(|o| name_of(o) == name);
        out.push(diff(&name, before, Some(item)));
    }
    for item in &old_items {
        let name = name_of(item);
        if !new_items.iter().any(|n| name_of(n) == name) {
            out.push(diff(&name, Some(item), None));
        }
    }
    out
}

/// The changed scalar members of two objects as fields, and the changed
/// nested members as objects, by key order; `skipped` keys are left out.
fn members_diff(old: &Map<String, Value>, new: &Map<String, Value>, skipped: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).filter(|k| !skipped.contains(&k.as_str())).collect();
    keys.sort();
    keys.dedup();
    let mut fields = Vec::new();
    let mut objects = Vec::new();
    for key in keys {
        let (o, n) = (old.get(key).filter(|v| !v.is_null()), new.get(key).filter(|v| !v.is_null()));
        if o == n {
            continue;
        }
        match (o, n) {
            (Some(Value::Object(_)), _) | (_, Some(Value::Object(_))) => {
                objects.push(object_diff(key, o.filter(|v| v.is_object()), n.filter(|v| v.is_object())));
            }
            (Some(Value::Array(_)), _) | (_, Some(Value::Array(_))) => {
                objects.extend(list_diff(key, o.and_then(Value::as_array), n.and_then(Value::as_array)));
            }
            _ => fields.push(field_diff(key, o, n)),
        }
    }
    (fields, objects)
}

fn object_diff(name: &str, old: Option<&Value>, new: Option<&Value>) -> Value {
    let empty = Map::new();
    let (fields, objects) = members_diff(
        old.and_then(Value::as_object).unwrap_or(&empty),
        new.and_then(Value::as_object).unwrap_or(&empty),
        &[],
    );
    let kind = DiffType::of(old, new, !fields.is_empty() || !objects.is_empty());
    json!({"Type": kind.as_str(), "Name": name, "Fields": non_empty(fields), "Objects": non_empty(objects)})
}

/// A list member: scalars as one object of added and deleted values,
/// objects as a deleted object per element only in the old list and an
/// added one per element only in the new.
fn list_diff(name: &str, old: Option<&Vec<Value>>, new: Option<&Vec<Value>>) -> Vec<Value> {
    let none = Vec::new();
    let (old_items, new_items) = (old.unwrap_or(&none), new.unwrap_or(&none));
    let scalars = old_items.iter().chain(new_items).all(|v| !v.is_object() && !v.is_array());
    let only_old = old_items.iter().filter(|v| !new_items.contains(v));
    let only_new = new_items.iter().filter(|v| !old_items.contains(v));
    if scalars {
        let mut fields: Vec<Value> = only_old.map(|v| field_diff(name, Some(v), None)).collect();
        fields.extend(only_new.map(|v| field_diff(name, None, Some(v))));
        if fields.is_empty() {
            // Same values, another order: an ordered list changed.
            fields.push(field_diff(
                name,
                Some(&Value::Array(old_items.clone())),
                Some(&Value::Array(new_items.clone())),
            ));
        }
        let kind = DiffType::of(old.map(|_| &Value::Null), new.map(|_| &Value::Null), true);
        return vec![json!({"Type": kind.as_str(), "Name": name, "Fields": fields, "Objects": Value::Null})];
    }
    let mut objects: Vec<Value> = only_old.map(|v| object_diff(name, Some(v), None)).collect();
    objects.extend(only_new.map(|v| object_diff(name, None, Some(v))));
    objects
}

fn field_diff(name: &str, old: Option<&Value>, new: Option<&Value>) -> Value {
    json!({
        "Type": DiffType::of(old, new, true).as_str(),
        "Name": name,
        "Old": old.map(text).unwrap_or_default(),
        "New": new.map(text).unwrap_or_default(),
        "Annotations": Value::Null,
    })
}

/// A value as Nomad's diff shows it: strings bare, others as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn non_empty(items: Vec<Value>) -> Value {
    if items.is_empty() { Value::Null } else { Value::Array(items) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(priority: u64, args: &[&str], datacenters: &[&str]) -> Value {
        json!({
            "ID": "web", "Priority": priority, "Datacenters": datacenters, "Version": 3,
            "TaskGroups": [{"Name": "g", "Count": 2, "Tasks": [
                {"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/sleep", "args": args},
                 "Resources": {"CPU": 100, "MemoryMB": 64}}]}]
        })
    }

    fn no_updates(_: &str) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    #[test]
    fn a_new_job_is_added() {
        let diff = job_diff(None, &job(50, &["1"], &["dc1"]), &no_updates);
        assert_eq!(diff["Type"], "Added");
        assert_eq!(diff["TaskGroups"][0]["Type"], "Added");
        assert_eq!(diff["TaskGroups"][0]["Tasks"][0]["Annotations"], json!(["forces create"]));
    }

    #[test]
    fn the_same_job_has_no_diff() {
        let mut resubmitted = job(50, &["1"], &["dc1"]);
        resubmitted["Version"] = json!(4);
        let diff = job_diff(Some(&job(50, &["1"], &["dc1"])), &resubmitted, &no_updates);
        assert_eq!(diff["Type"], "None");
        assert_eq!(diff["Fields"], Value::Null);
        assert_eq!(diff["TaskGroups"][0]["Type"], "None");
    }

    #[test]
    fn changes_are_listed_field_by_field() {
        let old = job(50, &["1"], &["dc1"]);
        let new = job(60, &["2"], &["dc1", "dc2"]);
        let updates = |group: &str| if group == "g" { vec![("create/destroy update", 2)] } else { Vec::new() };
        let diff = job_diff(Some(&old), &new, &updates);
        assert_eq!(diff["Type"], "Edited");
        assert_eq!(
            diff["Fields"],
            json!([{"Type": "Edited", "Name": "Priority", "Old": "50", "New": "60", "Annotations": null}])
        );
        assert_eq!(
            diff["Objects"],
            json!([{"Type": "Edited", "Name": "Datacenters", "Objects": null,
                    "Fields": [{"Type": "Added", "Name": "Datacenters", "Old": "", "New": "dc2", "Annotations": null}]}])
        );
        let group = &diff["TaskGroups"][0];
        assert_eq!(group["Type"], "Edited");
        assert_eq!(group["Updates"], json!({"create/destroy update": 2}));
        let task = &group["Tasks"][0];
        assert_eq!(task["Annotations"], json!(["forces create/destroy update"]));
        let config = &task["Objects"][0];
        assert_eq!(config["Name"], "Config");
        assert_eq!(
            config["Objects"][0]["Fields"],
            json!([
                {"Type": "Deleted", "Name": "args", "Old": "1", "New": "", "Annotations": null},
                {"Type": "Added", "Name": "args", "Old": "", "New": "2", "Annotations": null}
            ])
        );
    }

    #[test]
    fn groups_are_matched_by_name() {
        let old = job(50, &["1"], &["dc1"]);
        let mut new = old.clone();
        new["TaskGroups"][0]["Name"] = json!("h");
        let diff = job_diff(Some(&old), &new, &no_updates);
        let kinds: Vec<(&str, &str)> = diff["TaskGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["Name"].as_str().unwrap(), g["Type"].as_str().unwrap()))
            .collect();
        assert_eq!(kinds, [("h", "Added"), ("g", "Deleted")]);
    }

    #[test]
    fn lists_of_objects_are_compared_as_sets() {
        let mut old = job(50, &["1"], &["dc1"]);
        old["Constraints"] = json!([{"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="}]);
        let mut new = old.clone();
        new["Constraints"] = json!([{"LTarget": "${attr.kernel.name}", "RTarget": "darwin", "Operand": "="}]);
        let diff = job_diff(Some(&old), &new, &no_updates);
        let objects = diff["Objects"].as_array().unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!((objects[0]["Type"].as_str(), objects[0]["Name"].as_str()), (Some("Deleted"), Some("Constraints")));
        assert_eq!((objects[1]["Type"].as_str(), objects[1]["Name"].as_str()), (Some("Added"), Some("Constraints")));
    }
}
