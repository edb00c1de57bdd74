//! Feasibility checks: whether one node can host a job's task group at all,
//! before fit and scoring. Pure functions of (constraint, node), with
//! Nomad's semantics (`scheduler/feasible.go`, `scheduler/device.go`).
//!
//! - [`target`]: [`resolve_target`] turns `${attr.kernel.name}`,
//!   `${node.datacenter}`, ... into the node's value; [`escapes_class`] and
//!   [`constraint_escapes`] say which checks cannot be cached per computed
//!   node class.
//! - [`operator`]: [`check_operator`] for every [`ConstraintOp`] on strings,
//!   with a bounded [`RegexCache`]; `version` and `semver` matching.
//! - [`units`]: device attribute values with units (`40 GiB`, `1.2 GHz`) and
//!   their comparisons ([`compare_attribute`]).
//! - [`device`]: which device groups of a node serve a [`DeviceRequest`]
//!   ([`device_groups_for`], [`device_feasible`]) and how well
//!   ([`device_affinity_score`]).
//!
//! The scheduler caches results per computed class, so these favour being
//! right over being fast; [`check_operator`] still allocates nothing for the
//! common operators.
//!
//! ```
//! use caravan_engine::feasible::{RegexCache, check_constraint};
//! use caravan_engine::ids::NodeId;
//! use caravan_engine::model::{Constraint, ConstraintOp, Node, NodeResources};
//!
//! let mut node = Node::new(NodeId(1), "n1", "dc1", NodeResources { cpu_mhz: 4000, memory_mb: 8192, ..Default::default() });
//! node.attributes.insert("kernel.name".into(), "linux".into());
//! node.compute_class();
//! let c = Constraint::new("${attr.kernel.name}", ConstraintOp::Equal, "linux");
//! assert!(check_constraint(&c, &node, &mut RegexCache::new()));
//! ```
//!
//! [`DeviceRequest`]: crate::model::DeviceRequest

pub mod device;
pub mod operator;
pub mod target;
pub mod units;

pub use device::{device_affinity_score, device_feasible, device_groups_for, resolve_device_target};
pub use operator::{
    REGEX_CACHE_MAX, RegexCache, check_operator, compile_regex, parse_semver_constraint, parse_version_constraint,
};
pub use target::{constraint_escapes, escapes_class, resolve_target};
pub use units::{compare_attribute, parse_attribute};

use crate::model::{Affinity, Constraint, ConstraintOp, Node};

/// Whether `node` satisfies `c`: both targets resolved on the node, then
/// [`check_operator`]. A target that does not resolve is unset, which fails
/// every operator but `!=` (unset differs from a value) and `is_not_set`.
pub fn check_constraint(c: &Constraint, node: &Node, cache: &mut RegexCache) -> bool {
    check_targets(c.operand, &c.l_target, &c.r_target, node, cache)
}

/// Whether an affinity's condition holds on `node` (its weight is the
/// scorer's business).
pub fn check_affinity(a: &Affinity, node: &Node, cache: &mut RegexCache) -> bool {
    check_targets(a.operand, &a.l_target, &a.r_target, node, cache)
}

fn check_targets(op: ConstraintOp, l_target: &str, r_target: &str, node: &Node, cache: &mut RegexCache) -> bool {
    let l = resolve_target(l_target, node);
    let r = resolve_target(r_target, node);
    check_operator(op, l.as_deref(), r.as_deref(), cache)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::expect;

    use super::*;
    use crate::ids::NodeId;
    use crate::model::NodeResources;

    #[test]
    fn constraints_on_a_node() {
        let mut node = Node::new(
            NodeId(7),
            "n7",
            "dc1",
            NodeResources { cpu_mhz: 4000, memory_mb: 8192, disk_mb: 10000, ..Default::default() },
        );
        node.attributes.insert("kernel.name".into(), "linux".into());
        node.attributes.insert("cpu.numcores".into(), "16".into());
        node.attributes.insert("driver.docker.version".into(), "v24.0.7".into());
        node.attributes.insert("unique.network.ip-address".into(), "10.0.0.7".into());
        node.meta.insert("zones".into(), "a, b, c".into());
        node.compute_class();
        let cases = [
            ("${attr.kernel.name}", "=", "linux"),
            ("${attr.kernel.name}", "!=", "windows"),
            ("${attr.cpu.numcores}", ">=", "8"),
            ("${attr.cpu.numcores}", ">", "9"),
            ("${attr.driver.docker.version}", "version", ">= 20.10"),
            ("${attr.driver.docker.version}", "semver", "< 24.0.0"),
            ("${attr.unique.network.ip-address}", "regexp", "^10\\."),
            ("${meta.zones}", "set_contains_any", "c,d"),
            ("${meta.gpu}", "is_not_set", ""),
            ("${meta.gpu}", "=", "true"),
            ("${meta.gpu}", "!=", "true"),
            ("${node.datacenter}", "=", "dc1"),
            ("${node.unique.name}", "=", "n7"),
            ("${node.pool}", "=", "${node.pool}"),
            ("${node.nope}", "=", "${node.nope}"),
            ("", "distinct_hosts", "true"),
        ];
        let mut cache = RegexCache::new();
        let mut out = String::new();
        for (l, op, r) in cases {
            let c = Constraint::new(l, op.parse().unwrap(), r);
            let affinity = Affinity { l_target: l.into(), r_target: r.into(), operand: c.operand, weight: 50 };
            let holds = check_constraint(&c, &node, &mut cache);
            assert_eq!(holds, check_affinity(&affinity, &node, &mut cache));
            writeln!(out, "{c} => {holds}").unwrap();
        }
        expect![[r#"
            ${attr.kernel.name} = linux => true
            ${attr.kernel.name} != windows => true
            ${attr.cpu.numcores} >= 8 => true
            ${attr.cpu.numcores} > 9 => true
            ${attr.driver.docker.version} version >= 20.10 => true
            ${attr.driver.docker.version} semver < 24.0.0 => false
            ${attr.unique.network.ip-address} regexp ^10\. => true
            ${meta.zones} set_contains_any c,d => true
            ${meta.gpu} is_not_set  => true
            ${meta.gpu} = true => false
            ${meta.gpu} != true => true
            ${node.datacenter} = dc1 => true
            ${node.unique.name} = n7 => true
            ${node.pool} = ${node.pool} => true
            ${node.nope} = ${node.nope} => false
             distinct_hosts true => true
        "#]]
        .assert_eq(&out);
    }
}
