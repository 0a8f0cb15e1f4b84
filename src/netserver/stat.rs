//! `msock stat`: every endpoint and every counter, as text for people or JSON for scripts.
//!
//! Per-socket data-path counters come from each client's stats page (read-only, bounds-checked);
//! the request counter is the netserver's own count of control requests naming the endpoint, the
//! proof that a cached socket's sends and receives make no netserver call.

use std::fmt::Write;

use super::daemon::Server;
use super::endpoints::{Endpoint, EndpointState};
use crate::control::{Family, SockKind};
use crate::stack::stats::DropReason;

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn proto(ep: &Endpoint) -> &'static str {
    match (ep.kind, ep.family) {
        (SockKind::Datagram, Family::Inet) => "udp",
        (SockKind::Datagram, Family::Inet6 { .. }) => "udp6",
        (SockKind::Stream, Family::Inet) => "tcp",
        (SockKind::Stream, Family::Inet6 { .. }) => "tcp6",
    }
}

fn state(server: &Server, ep: &Endpoint) -> (&'static str, String) {
    // A connected endpoint's address is ours whatever it was bound to (as `ss` shows it).
    if let (Some(_), Some(local)) = (ep.remote, ep.local())
        && local.ip().is_unspecified()
        && !matches!(ep.state, EndpointState::Unbound)
    {
        let ours = std::net::SocketAddrV4::new(server.config.addr, local.port());
        let (st, _) = state_name(ep);
        return (st, ours.to_string());
    }
    state_name(ep)
}

fn state_name(ep: &Endpoint) -> (&'static str, String) {
    if ep.lost
        && let Some(local) = ep.local()
    {
        return ("RESET", local.to_string());
    }
    match ep.state {
        EndpointState::Unbound => ("UNBOUND", "-".into()),
        EndpointState::Cached { local } => ("CACHED", local.to_string()),
        EndpointState::Listening { local } => ("LISTEN", local.to_string()),
        EndpointState::Flushed { local } => ("FLUSHED", local.to_string()),
    }
}

/// Per-socket client counters, if the owner published a stats page.
struct SocketRow {
    datagrams_in: u64,
    datagrams_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    drops: u64,
}

/// The pid of the process acting for the endpoint (the one it is cached in, else its first
/// holder), 0 if unknown.
fn owner_pid(server: &Server, ep: &Endpoint) -> u32 {
    server.clients.get(&ep.owner()).map_or(0, |c| c.cred.pid)
}

/// The pids of the endpoint's holders, in order, comma-separated (`relay` for the
/// netserver's relay of a connection on standard descriptors).
fn holder_pids(server: &Server, ep: &Endpoint) -> String {
    let pids: Vec<String> = ep
        .holders
        .iter()
        .map(|h| {
            if *h >= super::relay::RELAY_HOLDER_BASE {
                "relay".to_string()
            } else {
                server.clients.get(h).map_or(0, |c| c.cred.pid).to_string()
            }
        })
        .collect();
    pids.join(",")
}

fn socket_row(server: &Server, ep: &Endpoint) -> Option<SocketRow> {
    let view = server.clients.get(&ep.owner())?.stats.as_ref()?;
    let s = view.sockets().into_iter().find(|s| s.endpoint == ep.id)?;
    Some(SocketRow {
        datagrams_in: s.datagrams_in,
        datagrams_out: s.datagrams_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        drops: s.drops.iter().sum(),
    })
}

pub(crate) fn render(server: &Server, json: bool) -> String {
    if json {
        render_json(server)
    } else {
        render_text(server)
    }
}

fn drops(server: &Server) -> Vec<(&'static str, u64)> {
    let all = server.host.all_drops();
    DropReason::ALL
        .iter()
        .map(|&r| (r.as_str(), all.get(r)))
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// Each listener the netserver holds, by port, with its counters (names as in JSON).
fn listener_counters(server: &Server) -> Vec<(u16, [(&'static str, u64); 10])> {
    let tcp = &server.host.tcp;
    let mut ports: Vec<u16> = tcp.listening_ports().collect();
    ports.sort_unstable();
    ports
        .into_iter()
        .filter_map(|port| {
            let b = tcp.listener_stats(port)?;
            Some((
                port,
                [
                    ("syns", b.syns_accepted),
                    ("cookies_sent", b.cookies_sent),
                    ("cookies_accepted", b.cookies_accepted),
                    ("cookies_rejected", b.cookies_rejected),
                    ("accept_queue_full", b.accept_queue_full),
                    ("completions_deferred", b.completions_deferred),
                    ("handshakes_failed", b.handshakes_failed),
                    ("completed", b.completed),
                    ("half_open", tcp.half_open(port) as u64),
                    ("waiting", tcp.pending(port) as u64),
                ],
            ))
        })
        .collect()
}

fn render_text(server: &Server) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "netserver {}/{} on {} ({}) up {}s, {} client(s), {} endpoint(s)",
        server.config.addr,
        server.config.prefix_len,
        server.iface.name,
        server.iface.mac,
        server.uptime().as_secs(),
        server.clients.len(),
        server.endpoints.len()
    );
    let _ = writeln!(
        out,
        "\n{:<5} {:>5} {:<21} {:<21} {:<8} {:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>6} {:>6} {:>7} holders",
        "proto",
        "id",
        "local",
        "remote",
        "state",
        "pid",
        "requests",
        "dgr-in",
        "dgr-out",
        "bytes-in",
        "bytes-out",
        "drops",
        "caches",
        "flushes"
    );
    for ep in server.endpoints.iter() {
        let (st, local) = state(server, ep);
        let remote = ep.remote.map_or("*".to_string(), |r| r.to_string());
        let row = socket_row(server, ep);
        let num =
            |f: fn(&SocketRow) -> u64| row.as_ref().map_or("-".to_string(), |r| f(r).to_string());
        let _ = writeln!(
            out,
            "{:<5} {:>5} {:<21} {:<21} {:<8} {:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>6} {:>6} {:>7} {}",
            proto(ep),
            ep.id,
            local,
            remote,
            st,
            owner_pid(server, ep),
            ep.requests,
            num(|r| r.datagrams_in),
            num(|r| r.datagrams_out),
            num(|r| r.bytes_in),
            num(|r| r.bytes_out),
            num(|r| r.drops),
            ep.caches,
            ep.flushes,
            holder_pids(server, ep)
        );
    }
    // Connections the netserver runs itself: handed over by processes that closed them
    // (`netsrv`), or flushed by a process that still holds the socket (`flushed`).
    for held in server.host.tcp.connections() {
        let _ = writeln!(
            out,
            "{:<5} {:>5} {:<21} {:<21} {:<8} {:>7}",
            "tcp",
            "-",
            held.local.to_string(),
            held.remote.to_string(),
            held.state.to_string(),
            if held.flushed { "flushed" } else { "netsrv" }
        );
    }
    let h = &server.host.counters;
    let c = &server.control;
    let ch = server.channel_stats();
    let t = server.host.tcp.stats();
    let _ = writeln!(
        out,
        "\ntcp-held: adopted {} finished {} resets {} dropped {} segments-out {} orphans-reset {} orphans-lost {}",
        t.adopted,
        t.finished,
        t.resets,
        t.dropped,
        h.tcp_segments_out,
        t.orphans_reset,
        t.orphans_lost
    );
    for (port, counters) in listener_counters(server) {
        let list: Vec<String> = counters
            .iter()
            .map(|(name, n)| format!("{} {n}", name.replace('_', "-")))
            .collect();
        let _ = writeln!(out, "tcp-listener {port}: {}", list.join(" "));
    }
    let _ = writeln!(
        out,
        "host: frames-in {} arp-requests {} arp-replies {} echo-replies {} port-unreachables {} \
         icmp-rate-limited {} reassembled {} delivered-upcall {} icmp-errors-forwarded {} \
         icmp-errors-applied {} redirects-accepted {} redirects-ignored {}",
        h.frames_in,
        h.arp_requests,
        h.arp_replies,
        h.echo_replies,
        h.port_unreachables,
        h.icmp_rate_limited,
        h.reassembled,
        h.delivered,
        h.icmp_errors_forwarded,
        h.icmp_errors_applied,
        h.redirects_accepted,
        h.redirects_ignored
    );
    let _ = writeln!(
        out,
        "channel: frames-in {} frames-out {} bytes-in {} bytes-out {} kernel-drops {}",
        ch.frames_in, ch.frames_out, ch.bytes_in, ch.bytes_out, ch.kernel_drops
    );
    let _ = writeln!(
        out,
        "control: clients {} requests {} bad-messages {} errors {} upcalls {} upcalls-dropped {} filter-updates {} \
         route-changes {} route-denied {} redirects-unstored {} recalls {}",
        c.clients_accepted,
        c.requests,
        c.bad_messages,
        c.errors_returned,
        c.upcalls_sent,
        c.upcalls_dropped,
        c.filter_updates,
        c.route_changes,
        c.route_denied,
        c.redirects_unstored,
        c.recalls
    );
    let _ = writeln!(
        out,
        "sharing: caches {} flushes {} recalls {} forks {} deferred-accepts {} sole-holder-upcalls {} relays {} relays-active {}",
        c.caches,
        c.flushes,
        c.recalls,
        c.forks,
        c.deferred_accepts,
        c.sole_holder_upcalls,
        c.relays,
        server.relays_active()
    );
    let pool = server.channel_pool.stats();
    let _ = writeln!(
        out,
        "channel-pool: ready-hits {} made-on-demand {} failures {} target {} makers {}",
        pool.hits, pool.misses, pool.failures, pool.target, pool.makers
    );
    let closer = crate::channel::closer::stats();
    let _ = writeln!(
        out,
        "channel-closer: queued {} inline {} pending {} threads {}",
        closer.queued, closer.inline, closer.pending, closer.closers
    );
    let mut clients: Vec<_> = server.clients.values().collect();
    clients.sort_by_key(|c| c.cred.pid);
    let list: Vec<String> = clients
        .iter()
        .map(|c| {
            format!(
                "pid {} uid {} requests {}",
                c.cred.pid, c.cred.uid, c.requests
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "clients: {}",
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    );
    let drops = drops(server);
    if drops.is_empty() {
        let _ = writeln!(out, "drops: none");
    } else {
        let list: Vec<String> = drops.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(out, "drops: {}", list.join(" "));
    }
    let neighbors = server.neighbors();
    let list: Vec<String> = neighbors
        .iter()
        .map(|(ip, mac)| format!("{ip} {mac}"))
        .collect();
    let _ = writeln!(
        out,
        "neighbors: {}",
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    );
    out
}

fn render_json(server: &Server) -> String {
    let mut eps = Vec::new();
    for ep in server.endpoints.iter() {
        let (st, local) = state(server, ep);
        // Holder pids as a string: the endpoint objects stay flat (no nested array).
        let mut o = format!(
            "{{\"id\":{},\"proto\":{},\"local\":{},\"remote\":{},\"state\":{},\"pid\":{},\"requests\":{},\
             \"caches\":{},\"flushes\":{},\"holders\":{},\"holder_pids\":{}",
            ep.id,
            json_str(proto(ep)),
            json_str(&local),
            ep.remote
                .map_or("null".to_string(), |r| json_str(&r.to_string())),
            json_str(st),
            owner_pid(server, ep),
            ep.requests,
            ep.caches,
            ep.flushes,
            ep.holders.len(),
            json_str(&holder_pids(server, ep))
        );
        if let Some(r) = socket_row(server, ep) {
            let _ = write!(
                o,
                ",\"datagrams_in\":{},\"datagrams_out\":{},\"bytes_in\":{},\"bytes_out\":{},\"drops\":{}",
                r.datagrams_in, r.datagrams_out, r.bytes_in, r.bytes_out, r.drops
            );
        }
        o.push('}');
        eps.push(o);
    }
    let held: Vec<String> = server
        .host
        .tcp
        .connections()
        .map(|c| {
            format!(
                "{{\"local\":{},\"remote\":{},\"state\":{},\"flushed\":{}}}",
                json_str(&c.local.to_string()),
                json_str(&c.remote.to_string()),
                json_str(&c.state.to_string()),
                c.flushed
            )
        })
        .collect();
    let listeners: Vec<String> = listener_counters(server)
        .into_iter()
        .map(|(port, counters)| {
            let fields: Vec<String> = counters
                .iter()
                .map(|(name, n)| format!("{}:{n}", json_str(name)))
                .collect();
            format!("{{\"port\":{port},{}}}", fields.join(","))
        })
        .collect();
    let t = server.host.tcp.stats();
    let h = &server.host.counters;
    let c = &server.control;
    let ch = server.channel_stats();
    let drops: Vec<String> = drops(server)
        .iter()
        .map(|(r, n)| format!("{}:{n}", json_str(r)))
        .collect();
    let neighbors: Vec<String> = server
        .neighbors()
        .iter()
        .map(|(ip, mac)| {
            format!(
                "{{\"ip\":{},\"mac\":{}}}",
                json_str(&ip.to_string()),
                json_str(&mac.to_string())
            )
        })
        .collect();
    let mut clients: Vec<_> = server.clients.values().collect();
    clients.sort_by_key(|c| c.cred.pid);
    let client_requests: Vec<String> = clients
        .iter()
        .map(|c| {
            format!(
                "{{\"pid\":{},\"uid\":{},\"requests\":{}}}",
                c.cred.pid, c.cred.uid, c.requests
            )
        })
        .collect();
    format!(
        "{{\"addr\":{},\"prefix_len\":{},\"iface\":{},\"mac\":{},\"uptime_s\":{},\"clients\":{},\"client_requests\":[{}],\
         \"endpoints\":[{}],\"tcp_held\":[{}],\"tcp_listeners\":[{}],\
         \"tcp_held_counters\":{{\"adopted\":{},\"finished\":{},\"resets\":{},\"dropped\":{},\"segments_out\":{},\"orphans_reset\":{},\"orphans_lost\":{}}},\
         \"host\":{{\"frames_in\":{},\"arp_requests\":{},\"arp_replies\":{},\"echo_replies\":{},\"port_unreachables\":{},\"icmp_rate_limited\":{},\"reassembled\":{},\"delivered\":{},\"icmp_errors_forwarded\":{},\"icmp_errors_applied\":{},\"redirects_accepted\":{},\"redirects_ignored\":{}}},\
         \"channel\":{{\"frames_in\":{},\"frames_out\":{},\"bytes_in\":{},\"bytes_out\":{},\"kernel_drops\":{}}},\
         \"control\":{{\"clients_accepted\":{},\"requests\":{},\"bad_messages\":{},\"errors\":{},\"upcalls\":{},\"upcalls_dropped\":{},\"filter_updates\":{},\"route_changes\":{},\"route_denied\":{},\"redirects_unstored\":{},\"recalls\":{}}},\
         \"sharing\":{{\"caches\":{},\"flushes\":{},\"recalls\":{},\"forks\":{},\"deferred_accepts\":{},\"sole_holder_upcalls\":{},\"relays\":{},\"relays_active\":{}}},\
         \"drops\":{{{}}},\"neighbors\":[{}]}}",
        json_str(&server.config.addr.to_string()),
        server.config.prefix_len,
        json_str(&server.iface.name),
        json_str(&server.iface.mac.to_string()),
        server.uptime().as_secs(),
        server.clients.len(),
        client_requests.join(","),
        eps.join(","),
        held.join(","),
        listeners.join(","),
        t.adopted,
        t.finished,
        t.resets,
        t.dropped,
        h.tcp_segments_out,
        t.orphans_reset,
        t.orphans_lost,
        h.frames_in,
        h.arp_requests,
        h.arp_replies,
        h.echo_replies,
        h.port_unreachables,
        h.icmp_rate_limited,
        h.reassembled,
        h.delivered,
        h.icmp_errors_forwarded,
        h.icmp_errors_applied,
        h.redirects_accepted,
        h.redirects_ignored,
        ch.frames_in,
        ch.frames_out,
        ch.bytes_in,
        ch.bytes_out,
        ch.kernel_drops,
        c.clients_accepted,
        c.requests,
        c.bad_messages,
        c.errors_returned,
        c.upcalls_sent,
        c.upcalls_dropped,
        c.filter_updates,
        c.route_changes,
        c.route_denied,
        c.redirects_unstored,
        c.recalls,
        c.caches,
        c.flushes,
        c.recalls,
        c.forks,
        c.deferred_accepts,
        c.sole_holder_upcalls,
        c.relays,
        server.relays_active(),
        drops.join(","),
        neighbors.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::json_str;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
