//! Device requests against a node's device groups, as Nomad's
//! `nodeDeviceMatches`, `resolveDeviceTarget` and the device affinity score
//! of `scheduler/device.go`.

use std::borrow::Cow;

use super::operator::RegexCache;
use super::target::interpolation;
use super::units::{check_attribute_operator, parse_attribute};
use crate::model::{Affinity, Constraint, DeviceAttribute, DeviceRequest, Node, NodeDeviceResource};

/// The value a device constraint target names on `group`: a literal parsed
/// with its unit, `${device.model}` (the group name), `${device.vendor}`,
/// `${device.type}`, `${device.ids}` (comma-joined instance ids) or
/// `${device.attr.<key>}`; `None` for an unset attribute or unknown variable.
pub fn resolve_device_target<'a>(target: &str, group: &'a NodeDeviceResource) -> Option<Cow<'a, DeviceAttribute>> {
    let Some(variable) = interpolation(target) else {
        return Some(Cow::Owned(parse_attribute(target)));
    };
    let text = |s: &std::sync::Arc<str>| Some(Cow::Owned(DeviceAttribute::String(s.clone())));
    match variable {
        "device.model" => text(&group.name),
        "device.vendor" => text(&group.vendor),
        "device.type" => text(&group.kind),
        "device.ids" => {
            let ids: Vec<&str> = group.instances.iter().map(|i| &*i.id).collect();
            Some(Cow::Owned(DeviceAttribute::String(ids.join(",").into())))
        }
        _ => variable.strip_prefix("device.attr.").and_then(|key| group.attributes.get(key)).map(Cow::Borrowed),
    }
}

/// Whether `group` satisfies one device constraint.
pub fn device_constraint_holds(c: &Constraint, group: &NodeDeviceResource, cache: &mut RegexCache) -> bool {
    let l = resolve_device_target(&c.l_target, group);
    let r = resolve_device_target(&c.r_target, group);
    check_attribute_operator(c.operand, l.as_deref(), r.as_deref(), cache)
}

fn device_affinity_holds(a: &Affinity, group: &NodeDeviceResource, cache: &mut RegexCache) -> bool {
    let l = resolve_device_target(&a.l_target, group);
    let r = resolve_device_target(&a.r_target, group);
    check_attribute_operator(a.operand, l.as_deref(), r.as_deref(), cache)
}

/// Whether `group` is named by the request and passes all its constraints;
/// instance counts are not considered.
pub fn group_matches(group: &NodeDeviceResource, req: &DeviceRequest, cache: &mut RegexCache) -> bool {
    group.matches_name(&req.name) && req.constraints.iter().all(|c| device_constraint_holds(c, group, cache))
}

/// The node's device groups (index into `node.resources.devices`, group) that
/// the request names (`gpu`, `nvidia/gpu`, `nvidia/gpu/NVIDIA H200`) and whose
/// attributes pass every device constraint.
pub fn device_groups_for<'a>(
    node: &'a Node,
    req: &DeviceRequest,
) -> impl Iterator<Item = (usize, &'a NodeDeviceResource)> {
    let mut cache = RegexCache::new();
    node.resources.devices.iter().enumerate().filter(move |(_, group)| group_matches(group, req, &mut cache))
}

/// Whether some matching group has at least `req.count` healthy instances.
/// (A count of 0 is invalid; validation rejects it before scheduling.)
pub fn device_feasible(node: &Node, req: &DeviceRequest) -> bool {
    device_groups_for(node, req).any(|(_, group)| group.healthy_count() >= req.count as usize)
}

/// How well `group` suits the request's affinities, in [-1, 1]:
/// `sum(weight of each affinity that holds) / sum(|weight| of all)`,
/// 0 when the request has no affinities.
pub fn device_affinity_score(group: &NodeDeviceResource, req: &DeviceRequest) -> f64 {
    let mut cache = RegexCache::new();
    let mut weight_total = 0.0;
    let mut weight_matched = 0.0;
    for a in &req.affinities {
        weight_total += f64::from(a.weight).abs();
        if device_affinity_holds(a, group, &mut cache) {
            weight_matched += f64::from(a.weight);
        }
    }
    if weight_total == 0.0 {
        return 0.0;
    }
    let score = weight_matched / weight_total;
    assert!((-1.0..=1.0).contains(&score));
    score
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    use std::sync::Arc;

    use expect_test::expect;

    use super::*;
    use crate::ids::NodeId;
    use crate::model::{ConstraintOp, DeviceInstance, NodeResources};

    fn instances(prefix: &str, count: usize, healthy: usize) -> Vec<DeviceInstance> {
        (0..count)
            .map(|i| DeviceInstance {
                id: format!("{prefix}-{i}").into(),
                healthy: i < healthy,
                health_description: "".into(),
                pci_bus_id: None,
                numa_node: None,
                link_island: None,
            })
            .collect()
    }

    fn group(
        vendor: &str,
        kind: &str,
        name: &str,
        memory_mib: i64,
        instances: Vec<DeviceInstance>,
    ) -> NodeDeviceResource {
        let mut attributes = BTreeMap::new();
        attributes.insert(Arc::from("memory"), DeviceAttribute::Int { value: memory_mib, unit: Some("MiB".into()) });
        attributes.insert(Arc::from("cuda_cores"), DeviceAttribute::Int { value: 16896, unit: None });
        NodeDeviceResource { vendor: vendor.into(), kind: kind.into(), name: name.into(), attributes, instances }
    }

    fn node() -> Node {
        let mut node = Node::new(
            NodeId(1),
            "n1",
            "dc1",
            NodeResources { cpu_mhz: 4000, memory_mb: 8192, disk_mb: 10000, ..Default::default() },
        );
        node.resources.devices = vec![
            group("nvidia", "gpu", "NVIDIA H200", 143_771, instances("h200", 8, 8)),
            group("nvidia", "gpu", "NVIDIA A100", 40_960, instances("a100", 4, 2)),
            group("xilinx", "fpga", "U250", 65_536, instances("u250", 1, 1)),
        ];
        node.compute_class();
        node
    }

    fn request(name: &str, count: u32, constraints: &[(&str, &str, &str)]) -> DeviceRequest {
        DeviceRequest {
            name: name.into(),
            count,
            constraints: constraints.iter().map(|(l, op, r)| Constraint::new(l, op.parse().unwrap(), r)).collect(),
            affinities: vec![],
        }
    }

    #[test]
    fn matches_groups() {
        let node = node();
        let cases = [
            request("gpu", 1, &[]),
            request("nvidia/gpu", 4, &[]),
            request("nvidia/gpu/NVIDIA H200", 8, &[]),
            request("nvidia/gpu/NVIDIA H200", 9, &[]),
            request("amd/gpu", 1, &[]),
            request("fpga", 1, &[]),
            request("gpu", 3, &[("${device.attr.memory}", "<", "80 GiB")]),
            request("gpu", 2, &[("${device.attr.memory}", "<", "80 GiB")]),
            request("gpu", 1, &[("${device.attr.memory}", ">=", "140 GiB")]),
            request("gpu", 1, &[("${device.model}", "regexp", "A100$")]),
            request("gpu", 1, &[("${device.vendor}", "=", "nvidia"), ("${device.type}", "=", "gpu")]),
            request("gpu", 1, &[("${device.ids}", "set_contains", "a100-3")]),
            request("gpu", 1, &[("${device.attr.cuda_cores}", ">", "10000")]),
            request("gpu", 1, &[("${device.attr.missing}", "is_not_set", "")]),
            request("gpu", 1, &[("${device.attr.missing}", "=", "1")]),
            request("gpu", 1, &[("${device.attr.memory}", ">", "300 W")]),
            request("gpu", 1, &[("${device.bogus}", "!=", "x")]),
        ];
        let mut out = String::new();
        for req in &cases {
            let groups: Vec<usize> = device_groups_for(&node, req).map(|(i, _)| i).collect();
            let constraints: Vec<String> = req.constraints.iter().map(|c| c.to_string()).collect();
            writeln!(
                out,
                "{} x{} [{}] => groups {groups:?} feasible {}",
                req.name,
                req.count,
                constraints.join("; "),
                device_feasible(&node, req)
            )
            .unwrap();
        }
        expect![[r#"
            gpu x1 [] => groups [0, 1] feasible true
            nvidia/gpu x4 [] => groups [0, 1] feasible true
            nvidia/gpu/NVIDIA H200 x8 [] => groups [0] feasible true
            nvidia/gpu/NVIDIA H200 x9 [] => groups [0] feasible false
            amd/gpu x1 [] => groups [] feasible false
            fpga x1 [] => groups [2] feasible true
            gpu x3 [${device.attr.memory} < 80 GiB] => groups [1] feasible false
            gpu x2 [${device.attr.memory} < 80 GiB] => groups [1] feasible true
            gpu x1 [${device.attr.memory} >= 140 GiB] => groups [0] feasible true
            gpu x1 [${device.model} regexp A100$] => groups [1] feasible true
            gpu x1 [${device.vendor} = nvidia; ${device.type} = gpu] => groups [0, 1] feasible true
            gpu x1 [${device.ids} set_contains a100-3] => groups [1] feasible true
            gpu x1 [${device.attr.cuda_cores} > 10000] => groups [0, 1] feasible true
            gpu x1 [${device.attr.missing} is_not_set ] => groups [0, 1] feasible true
            gpu x1 [${device.attr.missing} = 1] => groups [] feasible false
            gpu x1 [${device.attr.memory} > 300 W] => groups [] feasible false
            gpu x1 [${device.bogus} != x] => groups [0, 1] feasible true
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn affinity_score() {
        let node = node();
        let affinity = |l: &str, op: ConstraintOp, r: &str, weight: i8| Affinity {
            l_target: l.into(),
            r_target: r.into(),
            operand: op,
            weight,
        };
        let mut req = request("gpu", 1, &[]);
        let mut out = String::new();
        let mut score_all = |req: &DeviceRequest, label: &str| {
            let scores: Vec<String> = node
                .resources
                .devices
                .iter()
                .map(|g| format!("{}={:.3}", g.name, device_affinity_score(g, req)))
                .collect();
            writeln!(out, "{label}: {}", scores.join(" ")).unwrap();
        };
        score_all(&req, "none");
        req.affinities.push(affinity("${device.model}", ConstraintOp::Equal, "NVIDIA H200", 100));
        score_all(&req, "prefer H200");
        req.affinities.push(affinity("${device.attr.memory}", ConstraintOp::Less, "64 GiB", -50));
        score_all(&req, "and avoid small memory");
        req.affinities.push(affinity("${device.vendor}", ConstraintOp::Equal, "nvidia", 50));
        score_all(&req, "and prefer nvidia");
        expect![[r#"
            none: NVIDIA H200=0.000 NVIDIA A100=0.000 U250=0.000
            prefer H200: NVIDIA H200=1.000 NVIDIA A100=0.000 U250=0.000
            and avoid small memory: NVIDIA H200=0.667 NVIDIA A100=-0.333 U250=0.000
            and prefer nvidia: NVIDIA H200=0.750 NVIDIA A100=0.000 U250=0.000
        "#]]
        .assert_eq(&out);
    }
}
