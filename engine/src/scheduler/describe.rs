//! Plain-text rendering of a plan, for `job plan`, logs and test fixtures.

use std::fmt::Write;

use crate::model::Plan;
use crate::state::State;

/// One line per change, nodes by name, sorted so the text is stable.
pub fn describe_plan(state: &State, plan: &Plan) -> String {
    let node_name = |id| state.node(id).map_or_else(|| format!("{id:?}"), |n| n.name.to_string());
    let mut lines: Vec<String> = Vec::new();
    for (node, stops) in &plan.node_update {
        for s in stops {
            let name = state.alloc(s.alloc_id).map_or_else(|| format!("{:?}", s.alloc_id), |a| a.name());
            let status = s.client_status.map(|c| format!(" ({})", c.as_str())).unwrap_or_default();
            lines.push(format!("stop    {name} on {}{status}: {}", node_name(*node), s.description));
        }
    }
    for (node, allocs) in &plan.node_allocation {
        for a in allocs {
            let verb = match state.alloc(a.id) {
                Some(_) if a.followup_eval_id.is_some() => "annotate",
                Some(_) => "update",
                None if a.previous_alloc.is_some() => "replace",
                None => "place",
            };
            let mut line = format!("{verb:<7} {} on {}", a.name(), node_name(*node));
            for p in &a.resources.ports {
                let _ = write!(line, " {}={}", p.label, p.value);
            }
            for d in &a.resources.devices {
                let _ = write!(line, " {}={}", d.name, d.instance_ids.join(","));
            }
            lines.push(line);
        }
    }
    for (node, preemptions) in &plan.node_preemptions {
        for p in preemptions {
            let name = state.alloc(p.alloc_id).map_or_else(|| format!("{:?}", p.alloc_id), |a| a.name());
            lines.push(format!("preempt {name} on {}", node_name(*node)));
        }
    }
    lines.sort();
    lines.join("\n")
}
