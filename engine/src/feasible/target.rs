//! Resolving constraint targets (`${attr.kernel.name}`, `${node.datacenter}`,
//! literals) against a node, as Nomad's `resolveTarget`.

use std::borrow::Cow;

use crate::model::{Constraint, ConstraintOp, Node};

/// The value `target` names on `node`: a literal (anything not `${...}`) is
/// itself; an interpolation that names nothing on the node, or no known
/// variable, is `None`.
///
/// Known: `${node.unique.id}`, `${node.unique.name}`, `${node.datacenter}`,
/// `${node.class}`, `${node.pool}`, `${attr.<key>}`, `${meta.<key>}`.
pub fn resolve_target<'a>(target: &'a str, node: &'a Node) -> Option<Cow<'a, str>> {
    let Some(variable) = interpolation(target) else {
        return Some(Cow::Borrowed(target));
    };
    match variable {
        "node.unique.id" => Some(Cow::Owned(node.id.to_string())),
        "node.unique.name" => Some(Cow::Borrowed(&node.name)),
        "node.datacenter" => Some(Cow::Owned(node.datacenter.text().to_string())),
        "node.class" => Some(Cow::Owned(node.node_class.text().to_string())),
        "node.pool" => Some(Cow::Owned(node.node_pool.text().to_string())),
        _ => {
            if let Some(key) = variable.strip_prefix("attr.") {
                node.attributes.get(key).map(|v| Cow::Borrowed(&**v))
            } else if let Some(key) = variable.strip_prefix("meta.") {
                node.meta.get(key).map(|v| Cow::Borrowed(&**v))
            } else {
                None
            }
        }
    }
}

/// The variable inside `${...}`, or `None` for a literal.
pub(crate) fn interpolation(target: &str) -> Option<&str> {
    target.strip_prefix("${").and_then(|rest| rest.strip_suffix('}'))
}

/// Whether a target names a value that differs per node (`${node.unique.*}`,
/// `${attr.unique.*}`, `${meta.unique.*}`): such values are left out of the
/// computed class, so a check that reads them cannot be cached per class.
pub fn escapes_class(target: &str) -> bool {
    ["${node.unique.", "${attr.unique.", "${meta.unique."].iter().any(|prefix| target.starts_with(prefix))
}

/// Whether a constraint's result may differ between nodes of one computed
/// class: a side reads a unique value, or the operator is a per-placement
/// check (`distinct_hosts`, `distinct_property`).
pub fn constraint_escapes(c: &Constraint) -> bool {
    matches!(c.operand, ConstraintOp::DistinctHosts | ConstraintOp::DistinctProperty)
        || escapes_class(&c.l_target)
        || escapes_class(&c.r_target)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::expect;

    use super::*;
    use crate::ids::NodeId;
    use crate::intern::Sym;
    use crate::model::NodeResources;

    fn node() -> Node {
        let mut node = Node::new(
            NodeId(1),
            "n1",
            "dc1",
            NodeResources { cpu_mhz: 4000, memory_mb: 8192, disk_mb: 10000, ..Default::default() },
        );
        node.node_class = Sym::new("gpu-large");
        node.attributes.insert("kernel.name".into(), "linux".into());
        node.attributes.insert("unique.hostname".into(), "host-1".into());
        node.meta.insert("rack".into(), "r12".into());
        node.compute_class();
        node
    }

    #[test]
    fn resolves_targets() {
        let node = node();
        let targets = [
            "linux",
            "",
            "${node.unique.id}",
            "${node.unique.name}",
            "${node.datacenter}",
            "${node.class}",
            "${node.pool}",
            "${attr.kernel.name}",
            "${attr.unique.hostname}",
            "${attr.missing}",
            "${meta.rack}",
            "${meta.missing}",
            "${node.bogus}",
            "${attr.kernel.name",
            "x${attr.kernel.name}",
        ];
        let mut out = String::new();
        for target in targets {
            writeln!(out, "{target:?} => {:?}", resolve_target(target, &node)).unwrap();
        }
        expect![[r#"
            "linux" => Some("linux")
            "" => Some("")
            "${node.unique.id}" => Some("00000000-0000-0000-0000-000000000001")
            "${node.unique.name}" => Some("n1")
            "${node.datacenter}" => Some("dc1")
            "${node.class}" => Some("gpu-large")
            "${node.pool}" => Some("default")
            "${attr.kernel.name}" => Some("linux")
            "${attr.unique.hostname}" => Some("host-1")
            "${attr.missing}" => None
            "${meta.rack}" => Some("r12")
            "${meta.missing}" => None
            "${node.bogus}" => None
            "${attr.kernel.name" => Some("${attr.kernel.name")
            "x${attr.kernel.name}" => Some("x${attr.kernel.name}")
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn escaping() {
        let mut out = String::new();
        for target in [
            "${node.unique.id}",
            "${attr.unique.hostname}",
            "${meta.unique.x}",
            "${attr.kernel.name}",
            "${node.datacenter}",
            "unique",
        ] {
            writeln!(out, "{target} => {}", escapes_class(target)).unwrap();
        }
        let constraints = [
            Constraint::new("${attr.kernel.name}", ConstraintOp::Equal, "linux"),
            Constraint::new("linux", ConstraintOp::Equal, "${attr.unique.os}"),
            Constraint::new("${meta.rack}", ConstraintOp::DistinctProperty, ""),
            Constraint::new("", ConstraintOp::DistinctHosts, "true"),
        ];
        for c in &constraints {
            writeln!(out, "constraint {c} => {}", constraint_escapes(c)).unwrap();
        }
        expect![[r#"
            ${node.unique.id} => true
            ${attr.unique.hostname} => true
            ${meta.unique.x} => true
            ${attr.kernel.name} => false
            ${node.datacenter} => false
            unique => false
            constraint ${attr.kernel.name} = linux => false
            constraint linux = ${attr.unique.os} => true
            constraint ${meta.rack} distinct_property  => true
            constraint  distinct_hosts true => true
        "#]]
        .assert_eq(&out);
    }
}
