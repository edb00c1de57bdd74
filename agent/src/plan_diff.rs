//! `job plan`'s diff, printed as Nomad prints it: one line per changed
//! field (`+/- Priority: "50" => "60"`), nested objects as indented blocks,
//! task groups with their update counts and tasks with why they change.

use std::fmt::Write;

use serde_json::Value;

/// The lines for a plan's `Diff`.
pub(crate) fn render(diff: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} Job: {:?}", marker(&diff["Type"]), diff["ID"].as_str().unwrap_or(""));
    fields_and_objects(&mut out, diff, 0);
    for group in items(&diff["TaskGroups"]) {
        let updates: Vec<String> = group["Updates"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(kind, n)| format!("{} {kind}", n.as_u64().unwrap_or(0)))
            .collect();
        let counts = if updates.is_empty() { String::new() } else { format!(" ({})", updates.join(", ")) };
        let name = group["Name"].as_str().unwrap_or("");
        let _ = writeln!(out, "{} Task Group: {name:?}{counts}", marker(&group["Type"]));
        fields_and_objects(&mut out, group, 1);
        for task in items(&group["Tasks"]).filter(|t| t["Type"] != "None") {
            let why: Vec<&str> = items(&task["Annotations"]).filter_map(Value::as_str).collect();
            let why = if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) };
            let name = task["Name"].as_str().unwrap_or("");
            let _ = writeln!(out, "  {} Task: {name:?}{why}", marker(&task["Type"]));
            fields_and_objects(&mut out, task, 2);
        }
    }
    out
}

fn fields_and_objects(out: &mut String, diff: &Value, depth: usize) {
    let indent = "  ".repeat(depth);
    for field in items(&diff["Fields"]) {
        let name = field["Name"].as_str().unwrap_or("");
        let (old, new) = (field["Old"].as_str().unwrap_or(""), field["New"].as_str().unwrap_or(""));
        let value = match field["Type"].as_str() {
            Some("Added") => format!("{new:?}"),
            Some("Deleted") => format!("{old:?}"),
            Some("Edited") => format!("{old:?} => {new:?}"),
            _ => format!("{new:?}"),
        };
        let _ = writeln!(out, "{indent}{} {name}: {value}", marker(&field["Type"]));
    }
    for object in items(&diff["Objects"]) {
        let name = object["Name"].as_str().unwrap_or("");
        let _ = writeln!(out, "{indent}{} {name} {{", marker(&object["Type"]));
        fields_and_objects(out, object, depth + 1);
        let _ = writeln!(out, "{indent}  }}");
    }
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list.as_array().into_iter().flatten()
}

fn marker(kind: &Value) -> &'static str {
    match kind.as_str() {
        Some("Added") => "+",
        Some("Deleted") => "-",
        Some("Edited") => "+/-",
        _ => " ",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_prints_as_nomad_prints_it() {
        let diff = json!({
            "Type": "Edited", "ID": "web",
            "Fields": [{"Type": "Edited", "Name": "Priority", "Old": "50", "New": "60"}],
            "Objects": null,
            "TaskGroups": [{
                "Type": "Edited", "Name": "g", "Updates": {"create/destroy update": 2},
                "Fields": null, "Objects": null,
                "Tasks": [{"Type": "Edited", "Name": "t", "Annotations": ["forces create/destroy update"],
                    "Fields": null,
                    "Objects": [{"Type": "Edited", "Name": "Config", "Objects": null, "Fields": [
                        {"Type": "Edited", "Name": "command", "Old": "/bin/sleep", "New": "/bin/true"}]}]}]
            }]
        });
        assert_eq!(
            render(&diff),
            concat!(
                "+/- Job: \"web\"\n",
                "+/- Priority: \"50\" => \"60\"\n",
                "+/- Task Group: \"g\" (2 create/destroy update)\n",
                "  +/- Task: \"t\" (forces create/destroy update)\n",
                "    +/- Config {\n",
                "      +/- command: \"/bin/sleep\" => \"/bin/true\"\n",
                "      }\n",
            )
        );
    }
}
