//! Host port assignment for one placement: static ports must be free and
//! not reserved; dynamic ports are drawn from the node's range.

use crate::model::{AssignedPort, Node, PortRequest};

use super::context::NodeView;

/// Random draws for a dynamic port before falling back to a linear scan: a
/// few tries find a free port on any node that is not nearly full, and the
/// scan bounds the worst case by the range size.
const DYNAMIC_PORT_RANDOM_TRIES: u32 = 20;

/// Assign every requested port, or say which one could not be had.
pub(super) fn assign_ports(
    node: &Node,
    view: &NodeView<'_>,
    asks: &[PortRequest],
    rng: &mut fastrand::Rng,
) -> Result<Vec<AssignedPort>, String> {
    let mut assigned: Vec<AssignedPort> = Vec::with_capacity(asks.len());
    let taken = |port: u16, assigned: &[AssignedPort]| {
        view.port_used(port) || node.reserved.ports.contains(&port) || assigned.iter().any(|p| p.value == port)
    };
    for ask in asks.iter().filter(|a| a.static_port.is_some()) {
        let port = ask.static_port.expect("filtered");
        if taken(port, &assigned) {
            return Err(format!("reserved port collision {}={port}", ask.label));
        }
        assigned.push(AssignedPort {
            label: ask.label.clone(),
            value: port,
            to: if ask.to == 0 { port } else { ask.to },
        });
    }
    let (lo, hi) = (node.resources.min_dynamic_port, node.resources.max_dynamic_port);
    for ask in asks.iter().filter(|a| a.static_port.is_none()) {
        let mut found = None;
        for _ in 0..DYNAMIC_PORT_RANDOM_TRIES {
            let port = rng.u16(lo..=hi);
            if !taken(port, &assigned) {
                found = Some(port);
                break;
            }
        }
        if found.is_none() {
            found = (lo..=hi).find(|&p| !taken(p, &assigned));
        }
        let Some(port) = found else {
            return Err("dynamic port selection failed".to_string());
        };
        assigned.push(AssignedPort {
            label: ask.label.clone(),
            value: port,
            to: if ask.to == 0 { port } else { ask.to },
        });
    }
    Ok(assigned)
}
