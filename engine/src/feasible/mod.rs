//! TEMPORARY stand-in with the agreed signatures; replaced by the real module on merge.
#![allow(missing_docs, unreachable_pub, dead_code)]
use std::borrow::Cow;
use crate::model::{Constraint, ConstraintOp, DeviceRequest, Node, NodeDeviceResource};

#[derive(Debug, Default)]
pub struct RegexCache;
impl RegexCache { pub fn new() -> RegexCache { RegexCache } }

pub fn resolve_target<'a>(target: &'a str, node: &'a Node) -> Option<Cow<'a, str>> {
    if let Some(k) = target.strip_prefix("${attr.").and_then(|t| t.strip_suffix('}')) { return node.attributes.get(k).map(|v| Cow::Borrowed(&**v)); }
    if let Some(k) = target.strip_prefix("${meta.").and_then(|t| t.strip_suffix('}')) { return node.meta.get(k).map(|v| Cow::Borrowed(&**v)); }
    Some(Cow::Borrowed(target))
}
pub fn escapes_class(target: &str) -> bool { target.contains("unique.") }
pub fn constraint_escapes(c: &Constraint) -> bool { escapes_class(&c.l_target) || escapes_class(&c.r_target) || matches!(c.operand, ConstraintOp::DistinctHosts | ConstraintOp::DistinctProperty) }
pub fn check_operator(op: ConstraintOp, l: Option<&str>, r: Option<&str>, _c: &mut RegexCache) -> bool {
    match op { ConstraintOp::Equal => l.is_some() && l == r, ConstraintOp::NotEqual => l != r, _ => true }
}
pub fn check_constraint(c: &Constraint, node: &Node, cache: &mut RegexCache) -> bool {
    let l = resolve_target(&c.l_target, node); let r = resolve_target(&c.r_target, node);
    check_operator(c.operand, l.as_deref(), r.as_deref(), cache)
}
pub fn device_groups_for<'a>(node: &'a Node, req: &'a DeviceRequest) -> impl Iterator<Item = (usize, &'a NodeDeviceResource)> + 'a {
    node.resources.devices.iter().enumerate().filter(move |(_, g)| g.matches_name(&req.name))
}
pub fn device_feasible(node: &Node, req: &DeviceRequest) -> bool { device_groups_for(node, req).any(|(_, g)| g.healthy_count() >= req.count as usize) }
pub fn device_affinity_score(_g: &NodeDeviceResource, _req: &DeviceRequest) -> f64 { 0.0 }
