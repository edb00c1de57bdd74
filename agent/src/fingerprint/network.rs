//! Network: the node's IPv4 address and link speed. The address is the one
//! on the configured interface, else on the interface of the default route,
//! as Nomad picks it. Read from `/proc/net/route` (routes per interface) and
//! `/proc/net/fib_trie` (the machine's local addresses), so no socket or
//! unsafe `getifaddrs` call is needed.

use std::net::Ipv4Addr;
use std::path::Path;

/// Lines read from a routing file; more is a misconfigured machine.
const ROUTE_LINES_MAX: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    pub interface: String,
    pub ip: Ipv4Addr,
    /// Link speed in Mbit/s, `None` where the kernel does not know (virtual
    /// interfaces report -1).
    pub speed_mbits: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub interface: String,
    pub destination: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub metric: u32,
}

impl Route {
    fn is_default(&self) -> bool {
        self.destination.is_unspecified() && self.mask.is_unspecified()
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask) == u32::from(self.destination)
    }
}

/// `/proc/net/route`: addresses are the kernel's big-endian words printed as
/// host-order hex, so their native-endian bytes are the address bytes.
pub fn parse_routes(text: &str) -> Vec<Route> {
    let hex_ip = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| Ipv4Addr::from(v.to_ne_bytes()));
    text.lines()
        .skip(1)
        .take(ROUTE_LINES_MAX)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Route {
                interface: (*fields.first()?).to_owned(),
                destination: hex_ip(fields.get(1)?)?,
                metric: fields.get(6)?.parse().ok()?,
                mask: hex_ip(fields.get(7)?)?,
            })
        })
        .collect()
}

/// The machine's local IPv4 addresses: in `/proc/net/fib_trie`, each
/// `|-- a.b.c.d` leaf followed by a `/32 host LOCAL` line. Sorted, deduplicated.
pub fn parse_local_addresses(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut last_leaf = None;
    let mut out = Vec::new();
    for line in fib_trie.lines().take(ROUTE_LINES_MAX) {
        let line = line.trim();
        if let Some(ip) = line.strip_prefix("|-- ") {
            last_leaf = ip.trim().parse::<Ipv4Addr>().ok();
        } else if line.starts_with("/32 host LOCAL") {
            out.extend(last_leaf);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The interface holding the default route with the lowest metric.
pub fn default_interface(routes: &[Route]) -> Option<&str> {
    routes.iter().filter(|r| r.is_default()).min_by_key(|r| r.metric).map(|r| r.interface.as_str())
}

/// The local address of `interface`: one that falls in a subnet routed
/// through it. Loopback has no entry in the main table, so `lo` is 127.0.0.1.
pub fn interface_address(interface: &str, routes: &[Route], local: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    if interface == "lo" {
        return Some(Ipv4Addr::LOCALHOST);
    }
    routes
        .iter()
        .filter(|r| r.interface == interface && !r.is_default())
        .find_map(|r| local.iter().copied().find(|ip| !ip.is_loopback() && r.contains(*ip)))
}

/// `/sys/class/net/<if>/speed`: Mbit/s, `None` for unknown (-1 or unreadable).
pub fn parse_speed(text: &str) -> Option<u64> {
    text.trim().parse::<i64>().ok().filter(|s| *s > 0).and_then(|s| u64::try_from(s).ok())
}

/// Read the node's address: on `interface` when given, else on the
/// default-route interface; `None` when neither has an IPv4 address.
pub fn read(root: &Path, interface: Option<&str>) -> Option<NetworkInfo> {
    let routes = parse_routes(&std::fs::read_to_string(root.join("proc/net/route")).unwrap_or_default());
    let local = parse_local_addresses(&std::fs::read_to_string(root.join("proc/net/fib_trie")).unwrap_or_default());
    let interface = match interface {
        Some(name) => name.to_owned(),
        None => default_interface(&routes)?.to_owned(),
    };
    let ip = interface_address(&interface, &routes, &local)?;
    let speed_mbits = std::fs::read_to_string(root.join("sys/class/net").join(&interface).join("speed"))
        .ok()
        .and_then(|t| parse_speed(&t));
    Some(NetworkInfo { interface, ip, speed_mbits })
}
