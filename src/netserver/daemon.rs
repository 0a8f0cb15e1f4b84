//! The netserver's event loop: the I/O shell around [`Host`] and the endpoint and port tables.
//!
//! One thread, one epoll set: the interface channel, the control listener, every client's
//! control connection, and a signalfd for SIGINT/SIGTERM. Timers (ARP retries and expiry,
//! reassembly timeouts) run from the epoll timeout. Every client message is untrusted: a bad one
//! gets an error reply (or the connection is dropped), never a crash of the netserver.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::Config;
use super::endpoints::{ClientId, EndpointState, EndpointTable};
use super::host::{Event, Host, HostConfig, PortLookup};
use super::relay::{Pumped, RELAY_HOLDER_BASE, Relay};
use crate::channel::{Channel, PacketChannel, RingConfig, RingVersion, bpf};
use crate::client::stats::{StatsPage, StatsView};
use crate::control::codec;
use crate::control::transport::{Connection, ControlAddress, ControlListener, PeerCred};
use crate::control::{EndpointId, Family, Reply, Request, SockKind, Upcall, VERSION};
use crate::routing::region::RegionWriter;
use crate::routing::table::{InterfaceConfig, Route, TableError};
use crate::stack::ports::{BindRequest, PortTable};
use crate::stack::reassembly::ReassemblyLimits;
use crate::stack::stats::DropReason;
use crate::stack::tcp_ports::{PortUse, TcpPortConfig, TcpPortTable, TcpSocket};
use crate::wire::EthernetAddress;

const TOKEN_CHANNEL: u64 = 1;
const TOKEN_LISTENER: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
const TOKEN_CLIENT_BASE: u64 = 1 << 32;

/// Interface facts read from sysfs.
#[derive(Debug, Clone)]
pub(crate) struct InterfaceInfo {
    pub name: String,
    pub ifindex: u32,
    pub mac: EthernetAddress,
    pub mtu: u16,
}

impl InterfaceInfo {
    fn read(name: &str) -> io::Result<InterfaceInfo> {
        let base = format!("/sys/class/net/{name}");
        let read = |file: &str| -> io::Result<String> {
            std::fs::read_to_string(format!("{base}/{file}"))
                .map(|s| s.trim().to_string())
                .map_err(|e| io::Error::new(e.kind(), format!("interface {name}: {file}: {e}")))
        };
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("interface {name}: bad {what}"),
            )
        };
        let ifindex = read("ifindex")?.parse().map_err(|_| bad("ifindex"))?;
        let mac = read("address")?.parse().map_err(|_| bad("address"))?;
        let mtu: u32 = read("mtu")?.parse().map_err(|_| bad("mtu"))?;
        Ok(InterfaceInfo {
            name: name.to_string(),
            ifindex,
            mac,
            mtu: mtu.min(u32::from(u16::MAX)) as u16,
        })
    }
}

/// One connected client process.
pub(crate) struct Client {
    pub conn: Connection,
    pub upcall: Option<Connection>,
    pub cred: PeerCred,
    pub registered: bool,
    pub stats: Option<StatsView>,
    pub upcalls_dropped: u64,
    /// Control requests this client made (the proof that cached sockets make none).
    pub requests: u64,
    /// A session made by `Request::Fork` of the client of this pid: its `Hello` may name that
    /// pid's child (or that pid itself); `cred` is the forking client's until then.
    pub forked_from: Option<u32>,
}

/// Control-plane counters for `msock stat`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ControlCounters {
    pub clients_accepted: u64,
    pub requests: u64,
    pub bad_messages: u64,
    pub errors_returned: u64,
    pub upcalls_sent: u64,
    pub upcalls_dropped: u64,
    pub filter_updates: u64,
    /// Route and neighbour changes made with `msock route` (accepted), and refused for want
    /// of privilege.
    pub route_changes: u64,
    pub route_denied: u64,
    /// Host routes from redirects the region could not take (full).
    pub redirects_unstored: u64,
    /// Cached connections whose holders were asked to flush them (`msock recall`, or another
    /// holder's access: recall-on-access, paper §4.2).
    pub recalls: u64,
    /// TCP connections cached in a process (accepted into it, or `Cache`) and flushed back
    /// (`Flush`, or a shared connection handed over by one of its holders), paper §3.1.
    pub caches: u64,
    pub flushes: u64,
    /// Child sessions made by `Fork`; connections accepted through a `SO_CONCURRENT_SERVER`
    /// listener (delayed caching, §4.2); `SoleHolder` upcalls sent.
    pub forks: u64,
    pub deferred_accepts: u64,
    pub sole_holder_upcalls: u64,
    /// Connections handed to a relay (`Request::Relay`: stdio descriptors).
    pub relays: u64,
}

struct Ports<'a> {
    table: &'a PortTable,
    tcp: &'a TcpPortTable,
    endpoints: &'a EndpointTable,
    tcp_connections: &'a HashMap<(u16, SocketAddrV4), EndpointId>,
    region: &'a RegionWriter,
}

impl PortLookup for Ports<'_> {
    fn udp_owner(&self, local: SocketAddrV4) -> Option<EndpointId> {
        self.table.lookup(local.port(), *local.ip(), 0)
    }

    fn tcp_owner(&self, port: u16) -> Option<EndpointId> {
        // Only a port cached whole in a process is its (not one reserved for a connection the
        // netserver runs, a listener held here, or a connection accepted from one).
        self.tcp
            .on_port(port)
            .filter(|(id, usage)| *usage == PortUse::Bound && *id < NETSERVER_HELD_BASE)
            .map(|(id, _)| id)
            .filter(|id| {
                self.endpoints.get(*id).is_some_and(|ep| {
                    matches!(ep.state, EndpointState::Cached { .. }) && ep.remote.is_none()
                })
            })
            .last()
    }

    fn tcp_connection_owner(&self, local_port: u16, remote: SocketAddrV4) -> Option<EndpointId> {
        self.tcp_connections.get(&(local_port, remote)).copied()
    }

    fn first_hop_gateway(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        self.region
            .lookup(dst)
            .map(|hop| hop.ip)
            .filter(|&hop| hop != dst)
    }
}

/// Owner ids at and above this reserve TCP ports for connections the netserver holds (handed
/// over by processes): the port table then refuses a bind without SO_REUSEADDR and skips the
/// port for ephemeral binds while the connection lasts (TIME_WAIT included), as Linux does.
const NETSERVER_HELD_BASE: EndpointId = 1 << 62;

pub(crate) struct Server {
    pub config: Config,
    pub iface: InterfaceInfo,
    pub host: Host,
    channel: PacketChannel,
    region: RegionWriter,
    listener: ControlListener,
    address: ControlAddress,
    pub endpoints: EndpointTable,
    ports: PortTable,
    /// TCP ports with Linux's TCP rules (bind, listen, connect 4-tuples); connections the
    /// netserver finishes keep their socket's entry under a pseudo owner (`held_tcp`).
    tcp_ports: TcpPortTable,
    pub clients: HashMap<ClientId, Client>,
    next_client: ClientId,
    epoll: Epoll,
    signals: SignalFd,
    started: std::time::Instant,
    resolve_waiters: HashMap<Ipv4Addr, Vec<ClientId>>,
    events: Vec<Event>,
    filter_dirty: bool,
    /// Port reservations of the connections in `host.tcp`, by (local port, remote).
    held_tcp: HashMap<(u16, SocketAddrV4), EndpointId>,
    /// Connections accepted from listeners held here and cached in processes, by (local port,
    /// remote): their segments are the process's (its channel matches the 4-tuple).
    tcp_connections: HashMap<(u16, SocketAddrV4), EndpointId>,
    /// Flushed connections (run by `host.tcp`, held by a process) by (local port, remote).
    flushed: HashMap<(u16, SocketAddrV4), EndpointId>,
    /// Readiness bits last reported per flushed endpoint and holder (`Upcall::TcpReady` on a
    /// rise).
    flushed_events: HashMap<(EndpointId, ClientId), u8>,
    /// Holders of listening endpoints told (`Upcall::Acceptable`) that connections are
    /// waiting and not re-armed since (each `Accept` of theirs re-arms them).
    acceptable_sent: std::collections::HashSet<(EndpointId, ClientId)>,
    /// `Accept` requests answered per listener and holder (`Upcall::Acceptable::seq`).
    accepts_answered: HashMap<(EndpointId, ClientId), u32>,
    /// Crash-record files of cached TCP connections, by endpoint (read if the process dies).
    crash_records: HashMap<EndpointId, OwnedFd>,
    next_held: EndpointId,
    endpoint_ring: RingConfig,
    /// Endpoint channels made ahead of binds and accepts (ring set-up waits for the kernel).
    pub channel_pool: super::channel_pool::ChannelPool,
    pub control: ControlCounters,
    /// Neighbours set with `msock route neigh add`: permanent, ARP learning and expiry leave
    /// their region entries alone.
    static_neighbors: HashMap<Ipv4Addr, EthernetAddress>,
    /// Connections whose bytes the netserver carries through a socketpair, by their holder id
    /// (`super::relay`).
    relays: HashMap<ClientId, Relay>,
    next_relay: ClientId,
    /// A relay stopped at its pass budget: the next pass comes without waiting.
    relays_busy: bool,
}

/// Frames the loop takes from the netserver's channel before it serves control requests again.
const RX_BUDGET: usize = 256;

/// Runs the netserver until SIGINT or SIGTERM.
pub fn run(config: &Config) -> io::Result<()> {
    // Block the stop signals before anything else so the signalfd sees them.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().map_err(io::Error::from)?;
    // A client that vanished must not kill us with SIGPIPE.
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)?;
    // Descriptors per client and per connection: take what the hard limit allows up front.
    raise_nofile_limit();
    let mut server = Server::new(config, signals)?;
    eprintln!(
        "msock netserver: {} on {} ({}, ifindex {}, mtu {}), control {}",
        config.addr,
        server.iface.name,
        server.iface.mac,
        server.iface.ifindex,
        server.iface.mtu,
        server.address
    );
    let result = server.serve();
    eprintln!("msock netserver: shutting down");
    // Channels close in the background (each close waits for the kernel): let them finish
    // together rather than one by one at exit.
    drop(server);
    crate::channel::closer::wait_idle(std::time::Duration::from_secs(2));
    result
}

/// RFC 791's reassembly timeout is 30 s (the default); `MSOCK_FRAG_TIMEOUT_MS` shortens it so
/// tests can watch never-completed datagrams being freed.
fn reassembly_limits_from_env() -> ReassemblyLimits {
    let mut limits = ReassemblyLimits::default();
    if let Some(ms) = std::env::var("MSOCK_FRAG_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        limits.timeout = crate::stack::Duration::from_millis(ms.clamp(1, 30_000));
    }
    limits
}

/// The netserver's own channel: TPACKET_V2 (a wake-up per frame) unless
/// `MSOCK_NETSERVER_RX_RING=v3` asks for the batching block ring.
fn netserver_ring_from_env() -> RingConfig {
    match std::env::var("MSOCK_NETSERVER_RX_RING").as_deref() {
        Ok("v3") => RingConfig::netserver_v3(),
        _ => RingConfig::netserver(),
    }
}

fn endpoint_ring_from_env() -> RingConfig {
    match std::env::var("MSOCK_RX_RING").as_deref() {
        Ok("v3") => RingConfig::endpoint(RingVersion::V3),
        _ => RingConfig::endpoint(RingVersion::V2),
    }
}

impl Server {
    fn new(config: &Config, signals: SignalFd) -> io::Result<Server> {
        let iface = InterfaceInfo::read(&config.iface)?;
        let mut host = Host::with_reassembly(
            HostConfig {
                mac: iface.mac,
                addr: config.addr,
                prefix_len: config.prefix_len,
                mtu: iface.mtu,
            },
            reassembly_limits_from_env(),
        );
        host.tcp = super::tcp_host::TcpHost::new(
            config.addr,
            crate::stack::tcp::isn::IsnGenerator::new(random_secret()?),
        );
        let filter = bpf::netserver(config.addr, iface.mac, &[]);
        let ring = netserver_ring_from_env().fit_mtu(iface.mtu as usize);
        let channel = PacketChannel::open(iface.ifindex, &ring, &filter, false).map_err(|e| {
            io::Error::new(e.kind(), format!("packet channel on {}: {e}", iface.name))
        })?;
        let endpoint_ring = endpoint_ring_from_env();
        // Opens the port-range file now, so the descriptor count is steady from the start.
        let _ = local_port_range();
        let channel_pool = super::channel_pool::ChannelPool::start(iface.ifindex, endpoint_ring);
        let mut region = RegionWriter::create()?;
        region.set_interface(&InterfaceConfig {
            ifindex: iface.ifindex,
            mac: iface.mac,
            addr: config.addr,
            prefix_len: config.prefix_len,
            mtu: iface.mtu,
        });
        let mask = super::host::prefix_mask(config.prefix_len);
        region.add_route(&Route {
            dest: Ipv4Addr::from(u32::from(config.addr) & mask),
            prefix_len: config.prefix_len,
            gateway: None,
        })?;
        if let Some(gw) = config.gateway {
            region.add_route(&Route {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(gw),
            })?;
        }
        let address = ControlAddress::from_env();
        let listener = ControlListener::bind(&address).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(
                    e.kind(),
                    format!(
                        "control socket {address} in use: is a netserver already running here?"
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("control socket {address}: {e}"))
            }
        })?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        epoll
            .add(
                channel.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CHANNEL),
            )
            .map_err(io::Error::from)?;
        epoll
            .add(
                listener.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER),
            )
            .map_err(io::Error::from)?;
        epoll
            .add(
                signals.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL),
            )
            .map_err(io::Error::from)?;
        Ok(Server {
            config: config.clone(),
            iface,
            host,
            channel,
            region,
            listener,
            address,
            endpoints: EndpointTable::new(),
            ports: PortTable::new(),
            tcp_ports: TcpPortTable::new(TcpPortConfig::new(config.addr)),
            clients: HashMap::new(),
            next_client: 1,
            epoll,
            signals,
            started: std::time::Instant::now(),
            resolve_waiters: HashMap::new(),
            events: Vec::new(),
            filter_dirty: false,
            held_tcp: HashMap::new(),
            tcp_connections: HashMap::new(),
            acceptable_sent: std::collections::HashSet::new(),
            accepts_answered: HashMap::new(),
            crash_records: HashMap::new(),
            flushed: HashMap::new(),
            flushed_events: HashMap::new(),
            next_held: NETSERVER_HELD_BASE,
            endpoint_ring,
            channel_pool,
            control: ControlCounters::default(),
            static_neighbors: HashMap::new(),
            relays: HashMap::new(),
            next_relay: RELAY_HOLDER_BASE,
            relays_busy: false,
        })
    }

    fn now(&self) -> crate::stack::Instant {
        crate::stack::Instant::from_micros(self.started.elapsed().as_micros() as u64)
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut ready = vec![EpollEvent::empty(); 64];
        loop {
            let now = self.now();
            let timeout_ms = match self.host.poll_at() {
                _ if self.relays_busy => 0,
                Some(at) => at.saturating_duration_since(now).as_millis().min(1000) as u16,
                None => 1000,
            };
            let n = match self.epoll.wait(&mut ready, EpollTimeout::from(timeout_ms)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            for event in &ready[..n] {
                match event.data() {
                    TOKEN_CHANNEL => self.receive_frames()?,
                    TOKEN_LISTENER => self.accept_clients(),
                    TOKEN_SIGNAL => {
                        if let Ok(Some(info)) = self.signals.read_signal() {
                            eprintln!("msock netserver: signal {}", info.ssi_signo);
                            return Ok(());
                        }
                    }
                    token if token >= TOKEN_CLIENT_BASE => {
                        let id = (token - TOKEN_CLIENT_BASE) as ClientId;
                        if id >= RELAY_HOLDER_BASE {
                            self.relay_woken(id, event.events());
                        } else {
                            self.serve_client(id);
                        }
                    }
                    _ => {}
                }
            }
            self.pump_relays();
            let now = self.now();
            let mut events = std::mem::take(&mut self.events);
            self.host.poll(now, &mut events);
            let region = &self.region;
            self.host.poll_tcp(
                now,
                &|dst| region.lookup(dst).map(|hop| (hop.ip, hop.dst_mac)),
                &mut events,
            );
            self.release_finished_tcp();
            self.handle_events(&mut events);
            self.notify_acceptable();
            self.notify_flushed();
            self.events = events;
            if self.filter_dirty {
                self.update_filter();
            }
            self.channel.flush().or_else(ignore_would_block)?;
        }
    }

    /// Takes at most [`RX_BUDGET`] frames: under a flood (a SYN flood, say) control requests
    /// and timers still get their turn each loop; the channel stays readable (level-triggered
    /// epoll) and the rest is taken next time round.
    fn receive_frames(&mut self) -> io::Result<()> {
        self.receive_frames_up_to(RX_BUDGET)
    }

    /// Takes frames from the netserver's channel until it is empty or `budget` were taken.
    fn receive_frames_up_to(&mut self, budget: usize) -> io::Result<()> {
        let now = self.now();
        let mut events = std::mem::take(&mut self.events);
        let mut taken = 0;
        loop {
            let host = &mut self.host;
            let ports = Ports {
                table: &self.ports,
                tcp: &self.tcp_ports,
                endpoints: &self.endpoints,
                tcp_connections: &self.tcp_connections,
                region: &self.region,
            };
            let n = self.channel.recv_batch(64, &mut |frame| {
                host.receive(now, frame, &ports, &mut events)
            })?;
            self.handle_events(&mut events);
            taken += n;
            if n < 64 || taken >= budget {
                break;
            }
        }
        self.events = events;
        Ok(())
    }

    fn handle_events(&mut self, events: &mut Vec<Event>) {
        for event in events.drain(..) {
            match event {
                Event::Transmit(frame) => {
                    if let Err(e) = self.channel.send(&frame)
                        && e.kind() != io::ErrorKind::WouldBlock
                    {
                        eprintln!("msock netserver: send: {e}");
                    }
                }
                // A permanent entry (`msock route neigh add`) is not ARP's to change.
                Event::Neighbor { ip, .. } if self.static_neighbors.contains_key(&ip) => {}
                Event::Neighbor { ip, mac: Some(mac) } => {
                    if let Err(e) = self.region.set_neighbor(ip, mac) {
                        eprintln!("msock netserver: routing region: {e}");
                    }
                }
                Event::Neighbor { ip, mac: None } => self.region.remove_neighbor(ip),
                Event::Redirect { dst, gateway } => {
                    let route = Route {
                        dest: dst,
                        prefix_len: 32,
                        gateway: Some(gateway),
                    };
                    if let Err(e) = self.region.add_route(&route) {
                        self.control.redirects_unstored += 1;
                        eprintln!("msock netserver: redirect for {dst} via {gateway}: {e}");
                    }
                }
                Event::Resolved { ip, mac } => {
                    for client in self.resolve_waiters.remove(&ip).unwrap_or_default() {
                        self.upcall(client, &Upcall::Resolved { addr: ip, mac });
                    }
                }
                Event::Deliver {
                    id,
                    src,
                    dst,
                    payload,
                } => match self.endpoints.get(id) {
                    Some(ep) => {
                        let owner = ep.owner();
                        self.upcall(
                            owner,
                            &Upcall::Datagram {
                                id,
                                src,
                                dst,
                                payload,
                            },
                        );
                    }
                    None => self.host.drops.count(DropReason::NoSocket),
                },
                Event::IcmpError { id, remote, errno } => {
                    if let Some(ep) = self.endpoints.get(id) {
                        let owner = ep.owner();
                        self.upcall(owner, &Upcall::IcmpError { id, remote, errno });
                    }
                }
                Event::TcpIcmpError {
                    id,
                    local,
                    remote,
                    errno,
                    next_hop_mtu,
                    quoted_seq,
                } => {
                    if let Some(ep) = self.endpoints.get(id) {
                        let owner = ep.owner();
                        self.upcall(
                            owner,
                            &Upcall::TcpIcmpError {
                                id,
                                local,
                                remote,
                                errno,
                                next_hop_mtu,
                                quoted_seq,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Best effort and non-blocking: a client that does not drain its upcall socket loses
    /// upcalls (counted), it never stalls the netserver.
    fn upcall(&mut self, client: ClientId, upcall: &Upcall) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        let Some(conn) = c.upcall.as_ref() else {
            return;
        };
        let mut buf = Vec::new();
        codec::encode_upcall(upcall, &mut buf);
        match conn.send(&buf, &[]) {
            Ok(()) => self.control.upcalls_sent += 1,
            Err(_) => {
                c.upcalls_dropped += 1;
                self.control.upcalls_dropped += 1;
            }
        }
    }

    fn update_filter(&mut self) {
        let ports = self.endpoints.cached_udp_ports();
        let mut tcp_ports = self.endpoints.cached_tcp_ports();
        // A port whose only users are connections cached in processes (accepted from a
        // listener that has closed) is theirs too; while a listener or a connection held here
        // uses it, the netserver keeps its traffic and drops the cached 4-tuples in software.
        for (port, _) in self.tcp_connections.keys() {
            if !self.host.tcp.holds_port(*port) {
                tcp_ports.push(*port);
            }
        }
        let filter = bpf::netserver_excluding(self.config.addr, self.iface.mac, &ports, &tcp_ports);
        match self.channel.set_filter(&filter) {
            Ok(()) => {
                self.control.filter_updates += 1;
                self.filter_dirty = false;
            }
            Err(e) => eprintln!("msock netserver: filter update: {e}"),
        }
    }

    /// Accepts every waiting client. Out of descriptors (EMFILE/ENFILE), the soft limit is
    /// raised to the hard one if it is lower; if that is not enough, waiting connections are
    /// accepted into a spare descriptor kept for that purpose and closed at once (the client
    /// sees end of file), so the listener does not stay readable and spin the event loop, and
    /// the netserver keeps serving the clients it has.
    fn accept_clients(&mut self) {
        /// A descriptor held in reserve (`/dev/null`), given up to accept-and-close one
        /// connection when the process has no descriptor left.
        static SPARE: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        if spare.is_none() {
            *spare = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
        }
        let mut shed = 0u64;
        loop {
            match self.listener.accept() {
                Ok((conn, cred)) => {
                    if let Err(e) = self.register_client(conn, cred, None) {
                        eprintln!("msock netserver: epoll: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if raise_nofile_limit() {
                        continue;
                    }
                    // accept(2) fails with EMFILE before it looks at the queue: free the
                    // spare, take the connection (if one is waiting) into it and close it.
                    if spare.take().is_none() {
                        eprintln!("msock netserver: accept: {e} (no spare descriptor)");
                        break;
                    }
                    // The connection is closed (dropped) before the spare is taken back.
                    let refused = self.listener.accept().map(drop);
                    *spare = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
                    match refused {
                        Ok(()) => shed += 1,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("msock netserver: accept: {e}");
                            break;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("msock netserver: accept: {e}");
                    break;
                }
            }
        }
        if shed > 0 {
            eprintln!(
                "msock netserver: out of descriptors with {} clients: {shed} connection(s) refused",
                self.clients.len()
            );
        }
    }

    /// Adds a control connection to the client table and the epoll set (a client that
    /// connected, or a child session made by `Fork`).
    fn register_client(
        &mut self,
        conn: Connection,
        cred: PeerCred,
        forked_from: Option<u32>,
    ) -> io::Result<ClientId> {
        // Ids wrap below the relays' range: skip one still in use.
        let next = |id: ClientId| {
            if id + 1 >= RELAY_HOLDER_BASE {
                1
            } else {
                id + 1
            }
        };
        let mut id = self.next_client;
        while self.clients.contains_key(&id) {
            id = next(id);
        }
        self.next_client = next(id);
        let token = TOKEN_CLIENT_BASE + u64::from(id);
        self.epoll
            .add(conn.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(io::Error::from)?;
        self.control.clients_accepted += 1;
        self.clients.insert(
            id,
            Client {
                conn,
                upcall: None,
                cred,
                registered: false,
                stats: None,
                upcalls_dropped: 0,
                requests: 0,
                forked_from,
            },
        );
        Ok(id)
    }

    fn serve_client(&mut self, id: ClientId) {
        let mut buf = Vec::new();
        // Serve what is queued, a bounded number per wake-up so one client cannot starve others.
        for _ in 0..64 {
            let Some(client) = self.clients.get(&id) else {
                return;
            };
            let (n, fds) = match client.conn.recv(&mut buf) {
                Ok((0, _)) => return self.drop_client(id),
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Truncated or fd-abusing message: the transport closed the fds; answer.
                    self.control.bad_messages += 1;
                    self.reply(
                        id,
                        &Reply::Error {
                            errno: libc::EMSGSIZE,
                        },
                        Vec::new(),
                    );
                    continue;
                }
            };
            self.control.requests += 1;
            if let Some(c) = self.clients.get_mut(&id) {
                c.requests += 1;
            }
            let (reply, out_fds) = match codec::decode_request(&buf[..n]) {
                Ok(request) => self.handle_request(id, request, fds),
                Err(e) => {
                    self.control.bad_messages += 1;
                    (Reply::Error { errno: e.errno() }, Vec::new())
                }
            };
            if matches!(reply, Reply::Error { .. }) {
                self.control.errors_returned += 1;
            }
            self.reply(id, &reply, out_fds);
        }
    }

    /// Sends the reply to a request. The connection is non-blocking: a client whose replies
    /// pile up unread (it sends requests without reading the answers, which libmsock never
    /// does: one request at a time) fills its socket, and is disconnected then — its sockets
    /// reclaimed as on exit — rather than stalling the netserver or growing a queue here.
    fn reply(&mut self, id: ClientId, reply: &Reply, fds: Vec<OwnedFd>) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        let mut buf = Vec::new();
        codec::encode_reply(reply, &mut buf);
        let raw: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        loop {
            match client.conn.send(&buf, &raw) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        eprintln!(
                            "msock netserver: client {id} (pid {}) does not read its replies: disconnected",
                            client.cred.pid
                        );
                    }
                    break;
                }
            }
        }
        self.drop_client(id);
    }

    /// The client's control socket closed (exit, crash or kill): reclaim everything it held,
    /// as the kernel does on process exit. An endpoint other processes still hold (shared by
    /// a fork) only loses this holder.
    fn drop_client(&mut self, id: ClientId) {
        if let Some(client) = self.clients.remove(&id) {
            let _ = self.epoll.delete(client.conn.as_fd());
        }
        self.flushed_events.retain(|&(_, c), _| c != id);
        self.acceptable_sent.retain(|&(_, c)| c != id);
        self.accepts_answered.retain(|&(_, c), _| c != id);
        let ids: Vec<EndpointId> = self.endpoints.held_by(id).map(|ep| ep.id).collect();
        let now = self.now();
        for ep in ids {
            if self.release_shared(ep, id) {
                continue;
            }
            // A flushed connection is closed as the kernel closes the sockets of a process
            // that exits.
            if self
                .endpoints
                .get(ep)
                .is_some_and(|e| matches!(e.state, EndpointState::Flushed { .. }))
            {
                self.close_flushed(ep);
                continue;
            }
            // A TCP connection that died with its process: closed from its crash record as
            // Linux closes an exiting process's socket, or reset if there is none.
            if let Some(e) = self.endpoints.get(ep)
                && let (EndpointState::Cached { local }, Some(remote), SockKind::Stream) =
                    (e.state, e.remote, e.kind)
            {
                self.reclaim_cached(ep, local, remote, now);
                continue;
            }
            self.forget_endpoint(ep);
        }
        for waiters in self.resolve_waiters.values_mut() {
            waiters.retain(|&c| c != id);
        }
    }

    /// `client` lets go of endpoint `id` (close or death) while other holders keep it: true if
    /// so (the endpoint lives on for them), false if `client` is its last holder (the caller
    /// ends it). A connection cached in `client` goes on flushed for the others
    /// ([`Server::cacher_gone`]); a flushed one left with a single holder is offered to it
    /// (`Upcall::SoleHolder`, paper §3.1: "cached again when a close leaves a single holder").
    fn release_shared(&mut self, id: EndpointId, client: ClientId) -> bool {
        let cached_here = self.endpoints.get(id).is_some_and(|ep| {
            ep.cached_in == Some(client)
                && ep.is_tcp_connection()
                && matches!(ep.state, EndpointState::Cached { .. })
        });
        let Some(left) = self.endpoints.release_holder(id, client) else {
            return false;
        };
        self.flushed_events.remove(&(id, client));
        self.accepts_answered.remove(&(id, client));
        // Who is told about waiting connections depends on who accepts: a holder told once
        // (and never accepting since) is told again, or a listener could be left with
        // connections waiting and nobody woken (inetd after its `wait` service exits).
        self.acceptable_sent.retain(|&(ep, _)| ep != id);
        if cached_here {
            self.cacher_gone(id);
        }
        if left == 1 {
            self.notify_sole_holder(id);
        }
        true
    }

    /// The process a shared TCP connection was cached in died, or closed it without flushing
    /// it: the other holders reach it in the netserver from now on, rebuilt from its crash
    /// record ([`super::crash_reclaim::resume`]). When it cannot go on exactly (no usable
    /// record, or data it had received left unread) the peer is reset, as that process's
    /// exit would have done, and the others' requests fail with ECONNRESET.
    fn cacher_gone(&mut self, id: EndpointId) {
        let Some(ep) = self.endpoints.get(id) else {
            return;
        };
        let (EndpointState::Cached { local }, Some(remote)) = (ep.state, ep.remote) else {
            return;
        };
        let key = (local.port(), remote);
        let ours = SocketAddrV4::new(self.config.addr, local.port());
        let now = self.now();
        // The record was the dead process's view; nobody keeps it up to date from here.
        let resumed = self
            .crash_records
            .remove(&id)
            .and_then(|file| super::crash_reclaim::resume(&file, ours, remote, now));
        self.tcp_connections.remove(&key);
        self.filter_dirty = true;
        let adopted = resumed.is_some_and(|conn| self.host.tcp.adopt_flushed(conn).is_ok());
        if adopted {
            self.flushed.insert(key, id);
        } else {
            self.host.tcp.reset_orphan(key.0, key.1, now);
        }
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.state = EndpointState::Flushed { local };
            ep.cached_in = None;
            ep.lost = !adopted;
        }
        self.wake_recall_waiters(id);
    }

    /// Tells the single holder left of flushed TCP connection `id` that it may cache it
    /// again (`Upcall::SoleHolder`).
    fn notify_sole_holder(&mut self, id: EndpointId) {
        let Some(ep) = self.endpoints.get(id) else {
            return;
        };
        let [holder] = ep.holders[..] else {
            return;
        };
        if holder >= RELAY_HOLDER_BASE {
            return;
        }
        if !ep.is_tcp_connection() || ep.lost || !matches!(ep.state, EndpointState::Flushed { .. })
        {
            return;
        }
        self.control.sole_holder_upcalls += 1;
        self.upcall(holder, &Upcall::SoleHolder { id });
    }

    /// The recall of connection `id` is over (flushed, or its cacher gone): the holders told
    /// `ERR_RECALLING` meanwhile get a `TcpReady` with every bit set, to retry.
    fn wake_recall_waiters(&mut self, id: EndpointId) {
        let waiters = match self.endpoints.get_mut(id) {
            Some(ep) => {
                ep.recall_sent = false;
                std::mem::take(&mut ep.recall_waiters)
            }
            None => return,
        };
        for client in waiters {
            self.upcall(
                client,
                &Upcall::TcpReady {
                    id,
                    events: RECALL_OVER,
                },
            );
        }
    }

    /// Recall-on-access (paper §4.2): `client` names TCP connection `id` that another holder
    /// has cached. That holder is asked to flush it (once per recall) and `client` gets
    /// `ERR_RECALLING`, to retry when told (`wake_recall_waiters`). `Ok` when there is nothing
    /// to recall (the request goes on; an endpoint `client` does not hold fails there).
    fn recall_on_access(&mut self, client: ClientId, id: EndpointId) -> Result<(), i32> {
        let Some(ep) = self.endpoints.get_mut(id) else {
            return Ok(());
        };
        if !ep.is_held_by(client)
            || !ep.is_tcp_connection()
            || !matches!(ep.state, EndpointState::Cached { .. })
        {
            return Ok(());
        }
        let Some(cacher) = ep.cached_in.filter(|&c| c != client) else {
            return Ok(());
        };
        ep.requests += 1;
        if !ep.recall_waiters.contains(&client) {
            ep.recall_waiters.push(client);
        }
        if !std::mem::replace(&mut ep.recall_sent, true) {
            self.control.recalls += 1;
            self.upcall(cacher, &Upcall::Recall { id });
        }
        Err(crate::control::ERR_RECALLING)
    }

    /// `Request::Fork`: a new client session for the caller's child, holding every endpoint in
    /// `ids` beside the caller; its control connection (one end of a socketpair) is the reply's
    /// descriptor. The child registers on it with its own `Hello`.
    fn fork(&mut self, client: ClientId, mut ids: Vec<EndpointId>) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        ids.sort_unstable();
        ids.dedup();
        // All checked before anything changes.
        for &id in &ids {
            let ep = match self.endpoints.request(client, id) {
                Ok(ep) => ep,
                Err(e) => return err(e.errno()),
            };
            // Datagram sockets are cached whole in their process; a connection cached in the
            // caller is flushed first (a deferred one was never cached: it is flushed).
            let cached_connection = ep.is_tcp_connection()
                && matches!(ep.state, EndpointState::Cached { .. })
                && ep.cached_in == Some(client);
            if ep.kind == SockKind::Datagram || cached_connection {
                return err(libc::EINVAL);
            }
        }
        let Some(cred) = self.clients.get(&client).map(|c| c.cred) else {
            return err(libc::EPROTO);
        };
        let (ours, theirs) = match Connection::pair() {
            Ok(pair) => pair,
            Err(e) => return err(e.raw_os_error().unwrap_or(libc::ENOMEM)),
        };
        if let Err(e) = ours.set_nonblocking(true) {
            return err(e.raw_os_error().unwrap_or(libc::EIO));
        }
        let child = match self.register_client(ours, cred, Some(cred.pid)) {
            Ok(child) => child,
            Err(e) => return err(e.raw_os_error().unwrap_or(libc::ENOMEM)),
        };
        for (done, &id) in ids.iter().enumerate() {
            if !self.endpoints.add_holder(id, child) {
                // Cannot happen for checked ids and a fresh session; undone if it does.
                for &added in &ids[..done] {
                    let _ = self.endpoints.release_holder(added, child);
                }
                if let Some(c) = self.clients.remove(&child) {
                    let _ = self.epoll.delete(c.conn.as_fd());
                }
                return err(libc::EMFILE);
            }
        }
        self.control.forks += 1;
        (Reply::Forked, vec![theirs.into()])
    }

    /// `Request::Relay`: the caller's hold on flushed connection `id` passes to a relay on the
    /// stream socket it sent (`super::relay`), which holds the connection from now on.
    fn relay(
        &mut self,
        client: ClientId,
        id: EndpointId,
        fds: Vec<OwnedFd>,
    ) -> (Reply, Vec<OwnedFd>) {
        use nix::sys::socket::{getsockopt, sockopt};
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let Ok([socket]) = <[OwnedFd; 1]>::try_from(fds) else {
            return err(libc::EBADF);
        };
        if getsockopt(&socket, sockopt::SockType).ok() != Some(nix::sys::socket::SockType::Stream) {
            return err(libc::EINVAL);
        }
        if let Err(errno) = self.recall_on_access(client, id) {
            return err(errno);
        }
        let key = match self.endpoints.request(client, id) {
            Ok(ep) if ep.lost => return err(libc::ECONNRESET),
            Ok(ep) => match (ep.state, ep.remote, ep.kind) {
                (EndpointState::Flushed { local }, Some(remote), _) => (local.port(), remote),
                (EndpointState::Cached { .. }, Some(_), SockKind::Stream) => {
                    return err(libc::EINVAL);
                }
                (_, _, SockKind::Stream) => return err(libc::ENOTCONN),
                _ => return err(libc::EOPNOTSUPP),
            },
            Err(e) => return err(e.errno()),
        };
        if self.host.tcp.flushed_mut(key.0, key.1).is_none() {
            return err(libc::ENOTCONN);
        }
        if let Err(e) = nix::fcntl::fcntl(
            socket.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        ) {
            return err(e as i32);
        }
        let mut holder = self.next_relay;
        while self.relays.contains_key(&holder) {
            holder = holder.checked_add(1).unwrap_or(RELAY_HOLDER_BASE);
        }
        self.next_relay = holder.checked_add(1).unwrap_or(RELAY_HOLDER_BASE);
        let token = TOKEN_CLIENT_BASE + u64::from(holder);
        let interest = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLET;
        if let Err(e) = self.epoll.add(&socket, EpollEvent::new(interest, token)) {
            return err(e as i32);
        }
        if !self.endpoints.add_holder(id, holder) {
            let _ = self.epoll.delete(&socket);
            return err(libc::EMFILE);
        }
        self.release_shared(id, client);
        // Relayed, it is never cached again (delayed caching ends here).
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.deferred = false;
        }
        self.relays.insert(holder, Relay::new(id, key, socket));
        self.control.relays += 1;
        self.relays_busy = true;
        (Reply::Ok, Vec::new())
    }

    /// An epoll edge on relay `holder`'s socket.
    fn relay_woken(&mut self, holder: ClientId, events: EpollFlags) {
        if let Some(relay) = self.relays.get_mut(&holder) {
            let hup = events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
            relay.wake(
                hup || events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP),
                hup || events.contains(EpollFlags::EPOLLOUT),
            );
        }
    }

    /// Relays currently carrying a connection (`msock stat`).
    pub(crate) fn relays_active(&self) -> usize {
        self.relays.len()
    }

    /// One pass of every relay (`Relay::pump`), before the engines' output runs, so what a
    /// relay queued leaves in the same pass.
    fn pump_relays(&mut self) {
        if self.relays.is_empty() {
            return;
        }
        let now = self.now();
        let mut busy = false;
        let mut ended = Vec::new();
        let mut recall = Vec::new();
        for (&holder, relay) in self.relays.iter_mut() {
            let Some(conn) = self.host.tcp.flushed_mut(relay.key.0, relay.key.1) else {
                // Cached by another holder (delayed caching, §4.2): recalled, the relay
                // resumes once it is flushed. Gone otherwise.
                let cached = self
                    .endpoints
                    .get(relay.endpoint)
                    .is_some_and(|ep| matches!(ep.state, EndpointState::Cached { .. }) && !ep.lost);
                if cached {
                    recall.push((holder, relay.endpoint));
                } else {
                    ended.push(holder);
                }
                continue;
            };
            match relay.pump(conn, now) {
                Pumped::Idle => {}
                Pumped::More => busy = true,
                Pumped::ProgramGone | Pumped::ConnectionFailed => ended.push(holder),
            }
        }
        self.relays_busy = busy;
        for (holder, id) in recall {
            let _ = self.recall_on_access(holder, id);
        }
        for holder in ended {
            self.end_relay(holder);
        }
    }

    /// Relay `holder` ends (its program closed every descriptor, both directions are over,
    /// or the connection failed): it lets go of the connection like a process closing its
    /// socket. Bytes the relay had taken and the program never read do not make it a reset
    /// (unlike Linux's close with unread data): the program's last reply, queued in the same
    /// pass, would be thrown away with it, where Linux would have sent it already.
    fn end_relay(&mut self, holder: ClientId) {
        let Some(relay) = self.relays.remove(&holder) else {
            return;
        };
        let _ = self.epoll.delete(relay.socket());
        let id = relay.endpoint;
        if self.release_shared(id, holder) {
            return;
        }
        // Likewise for data still in the connection: the program's reply queued this pass
        // goes out before the FIN instead of being discarded by a reset.
        if let Some(conn) = self.host.tcp.flushed_mut(relay.key.0, relay.key.1) {
            let mut sink = [0u8; 4096];
            while matches!(conn.recv(&mut sink), Ok(n) if n > 0) {}
        }
        self.close_flushed(id);
    }

    /// `SOL_MSOCK` options of TCP endpoint `id` (any state): `SO_CONCURRENT_SERVER` set from a
    /// native `int` (`value`) or read as one (`None`).
    fn msock_option(
        &mut self,
        client: ClientId,
        id: EndpointId,
        name: i32,
        value: Option<&[u8]>,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let ep = match self.endpoints.request(client, id) {
            Ok(ep) => ep,
            Err(e) => return err(e.errno()),
        };
        if ep.kind != SockKind::Stream || name != crate::control::SO_CONCURRENT_SERVER {
            return err(libc::ENOPROTOOPT);
        }
        match value {
            Some(value) => {
                // As Linux's int options: shorter than an int is EINVAL, the rest is ignored.
                let Some(int) = value.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                    return err(libc::EINVAL);
                };
                ep.concurrent_server = i32::from_ne_bytes(int) != 0;
                (Reply::Ok, Vec::new())
            }
            None => (
                Reply::Option {
                    value: i32::from(ep.concurrent_server).to_ne_bytes().to_vec(),
                },
                Vec::new(),
            ),
        }
    }

    /// The process holding cached TCP endpoint `id` (`local`–`remote`) died: the connection
    /// ends as Linux ends an exiting process's socket, from its crash record
    /// ([`super::crash_reclaim`]): queued data delivered then FIN (the connection adopted into
    /// `host.tcp`, its port reserved until it ends), or RST when data was left unread — exact,
    /// through the peer's challenge ACK (`reset_orphan`), which is also the fallback when the
    /// record is missing or unusable.
    fn reclaim_cached(
        &mut self,
        id: EndpointId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        now: crate::stack::Instant,
    ) {
        use super::crash_reclaim::Reclaim;
        let ours = SocketAddrV4::new(self.config.addr, local.port());
        let outcome = match self.crash_records.remove(&id) {
            Some(file) => super::crash_reclaim::reclaim(&file, ours, remote, now),
            None => Reclaim::Fallback("no record"),
        };
        let key = (local.port(), remote);
        match outcome {
            Reclaim::Nothing => self.forget_endpoint(id),
            Reclaim::Close(conn) => {
                let timestamps = conn.uses_timestamps();
                if !self.host.tcp.has_room_for_orphan(conn.send_queue_len())
                    || self.host.tcp.adopt(*conn).is_err()
                {
                    self.host.tcp.reset_orphan(key.0, key.1, now);
                    self.forget_endpoint(id);
                    return;
                }
                self.hold_tcp_entry(id, key, timestamps);
                self.forget_endpoint(id);
                self.reserve_held_port(key);
            }
            Reclaim::Reset | Reclaim::Fallback(_) => {
                self.host.tcp.reset_orphan(key.0, key.1, now);
                self.forget_endpoint(id);
            }
        }
    }

    fn handle_request(
        &mut self,
        client: ClientId,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let registered = self.clients.get(&client).is_some_and(|c| c.registered);
        match request {
            Request::Hello { version, pid } => {
                if version != VERSION {
                    return err(libc::EPROTO);
                }
                if registered {
                    return err(libc::EISCONN);
                }
                self.hello(client, pid, fds)
            }
            Request::Stat { json } => (
                Reply::Stat {
                    text: stat_text(super::stat::render(self, json), json),
                },
                Vec::new(),
            ),
            Request::RouteAdd { .. }
            | Request::RouteDel { .. }
            | Request::NeighAdd { .. }
            | Request::NeighDel { .. } => {
                let uid = self.clients.get(&client).map(|c| c.cred.uid);
                if !may_change_routes(uid) {
                    self.control.route_denied += 1;
                    return err(libc::EPERM);
                }
                match self.change_routes(&request) {
                    Ok(()) => {
                        self.control.route_changes += 1;
                        (Reply::Ok, Vec::new())
                    }
                    Err(errno) => err(errno),
                }
            }
            Request::Recall { id } => {
                let uid = self.clients.get(&client).map(|c| c.cred.uid);
                match self.recall(uid, id) {
                    Ok(()) => (Reply::Ok, Vec::new()),
                    Err(errno) => err(errno),
                }
            }
            _ if !registered => err(libc::EPROTO),
            Request::Socket { family, kind } => {
                if kind == SockKind::Stream && family != Family::Inet {
                    return err(libc::EAFNOSUPPORT);
                }
                match self.endpoints.create(client, family, kind) {
                    Ok(id) => (Reply::Socket { id }, Vec::new()),
                    Err(e) => err(e.errno()),
                }
            }
            Request::Bind {
                id,
                local,
                reuse_addr,
                reuse_port,
            } => self.bind(client, id, local, reuse_addr, reuse_port),
            Request::Connect { id, remote } => match self.endpoints.request(client, id) {
                Ok(ep) => {
                    // A TCP endpoint names the connection it runs (set once): the netserver can
                    // then tell its segments apart and reset it if the process dies.
                    // The 4-tuple is reserved here before the process sends its SYN: two
                    // processes cannot connect the same one (EADDRNOTAVAIL, as Linux's
                    // `__inet_check_established`).
                    if ep.kind == SockKind::Stream {
                        let local = match (ep.state, ep.remote, remote) {
                            (EndpointState::Cached { local }, None, Some(_)) => local,
                            (EndpointState::Unbound, None, Some(remote)) => {
                                let reply = self.connect_unbound(client, id, remote);
                                // Its crash-record file, kept once the connect succeeded.
                                if matches!(reply.0, Reply::Bound { .. })
                                    && let Some(file) = fds
                                        .into_iter()
                                        .next()
                                        .and_then(super::crash_reclaim::accept_record_file)
                                {
                                    self.crash_records.insert(id, file);
                                }
                                return reply;
                            }
                            _ => return err(libc::EISCONN),
                        };
                        let Some(remote) = remote else {
                            return err(libc::EISCONN);
                        };
                        self.sync_tcp_ports(false);
                        match self.tcp_ports.connect(id, remote) {
                            Ok(connected) => {
                                if connected.took_over.is_some() {
                                    self.end_taken_over((local.port(), remote));
                                }
                            }
                            Err(e) => return err(e.errno()),
                        }
                        // The connection's crash-record file, if one came with the request.
                        if let Some(file) = fds
                            .into_iter()
                            .next()
                            .and_then(super::crash_reclaim::accept_record_file)
                        {
                            self.crash_records.insert(id, file);
                        }
                        if let Some(ep) = self.endpoints.get_mut(id) {
                            ep.remote = Some(remote);
                            ep.cached_in = Some(client);
                        }
                        self.tcp_connections.insert((local.port(), remote), id);
                        self.filter_dirty = true;
                        return (Reply::Ok, Vec::new());
                    }
                    ep.remote = remote;
                    (Reply::Ok, Vec::new())
                }
                Err(e) => err(e.errno()),
            },
            Request::Close { id } => {
                let flushed = match self.endpoints.request(client, id) {
                    Ok(ep) => matches!(ep.state, EndpointState::Flushed { .. }),
                    Err(e) => return err(e.errno()),
                };
                // Only the last holder's close ends the endpoint (no recall for the others).
                if !self.release_shared(id, client) {
                    if flushed {
                        self.close_flushed(id);
                    } else {
                        self.forget_endpoint(id);
                    }
                }
                (Reply::Ok, Vec::new())
            }
            Request::Listen { id, backlog } => self.listen(client, id, backlog),
            Request::Accept { id } => self.accept(client, id),
            Request::Resolve { addr } => self.resolve(client, addr),
            Request::HandOver { id, len } => self.hand_over(client, id, len, fds),
            Request::Flush { id, len, rx_cursor } => self.flush(client, id, len, rx_cursor, fds),
            Request::Send { id, data } => self.flushed_send(client, id, &data),
            Request::Recv { id, max, peek } => self.flushed_recv(client, id, max, peek),
            Request::Shutdown { id, how } => self.flushed_shutdown(client, id, how),
            Request::Cache { id } => self.cache(client, id),
            Request::Fork { ids } => self.fork(client, ids),
            Request::Relay { id } => self.relay(client, id, fds),
            Request::SetOption {
                id,
                level,
                name,
                value,
            } => {
                if level == crate::control::SOL_MSOCK {
                    return self.msock_option(client, id, name, Some(&value));
                }
                let now = self.now();
                match self.flushed_connection(client, id).and_then(|conn| {
                    crate::stack::tcp::sockopt::set(
                        conn,
                        level,
                        name,
                        &value,
                        crate::stack::tcp::sockopt::SockoptLimits::default(),
                        now,
                    )
                }) {
                    Ok(()) => (Reply::Ok, Vec::new()),
                    Err(errno) => err(errno),
                }
            }
            Request::GetOption { id, level, name } => {
                if level == crate::control::SOL_MSOCK {
                    return self.msock_option(client, id, name, None);
                }
                let now = self.now();
                match self
                    .flushed_connection(client, id)
                    .and_then(|conn| crate::stack::tcp::sockopt::get(conn, level, name, now))
                {
                    Ok(value) => (Reply::Option { value }, Vec::new()),
                    Err(errno) => err(errno),
                }
            }
            Request::Names { id } => match self.endpoints.request(client, id) {
                Ok(ep) => {
                    let local = ep
                        .local()
                        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
                    let remote = ep.remote;
                    // A connected endpoint's address is ours, whatever it was bound to.
                    let local = match remote {
                        Some(_) => SocketAddrV4::new(self.config.addr, local.port()),
                        None => local,
                    };
                    (Reply::Names { local, remote }, Vec::new())
                }
                Err(e) => err(e.errno()),
            },
        }
    }

    /// Moves the caller's cached TCP connection `id` into `host.tcp` (paper §3.1 "flush"): the
    /// image is untrusted and must describe the endpoint's own 4-tuple. The endpoint stays the
    /// caller's; its port binding stays too.
    fn flush(
        &mut self,
        client: ClientId,
        id: EndpointId,
        len: u64,
        rx_cursor: u32,
        fds: Vec<OwnedFd>,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let (local, remote) = match self.endpoints.request(client, id) {
            Ok(ep) if ep.kind != SockKind::Stream => return err(libc::EOPNOTSUPP),
            // Only the holder it is cached in has the connection to flush.
            Ok(ep) if ep.cached_in.is_some_and(|c| c != client) => return err(libc::EPERM),
            Ok(ep) => match (ep.state, ep.remote) {
                (EndpointState::Cached { local }, Some(remote)) => (local, remote),
                (EndpointState::Flushed { .. }, _) => return err(libc::EALREADY),
                _ => return err(libc::ENOTCONN),
            },
            Err(e) => return err(e.errno()),
        };
        if len > crate::control::MAX_HANDOVER_IMAGE {
            return err(libc::EMSGSIZE);
        }
        let mut fds = fds.into_iter();
        let (Some(fd), channel, None) = (fds.next(), fds.next(), fds.next()) else {
            return err(libc::EBADF);
        };
        let image = match read_image(fd, len as usize) {
            Ok(image) => image,
            Err(errno) => return err(errno),
        };
        // The client's channel: only a packet socket with our endpoint rings, resumable at the
        // cursor it gave (anything else is refused before the connection moves).
        let channel = match channel {
            None => None,
            Some(fd) => match PacketChannel::from_fd(fd, self.endpoint_ring.spec()) {
                Ok(mut channel) => match channel.resume_at(rx_cursor) {
                    Ok(()) => {
                        channel.mark_peer_writable();
                        Some(channel)
                    }
                    Err(_) => return err(libc::EINVAL),
                },
                Err(_) => return err(libc::EBADF),
            },
        };
        let conn = match handed_over_connection(&image, local.port(), self.now()) {
            Ok(conn) if conn.remote() == remote => conn,
            Ok(_) => return err(libc::EPERM),
            Err(errno) => return err(errno),
        };
        if let Err(e) = self.host.tcp.adopt_flushed(conn) {
            return err(e.errno());
        }
        let key = (local.port(), remote);
        self.tcp_connections.remove(&key);
        self.flushed.insert(key, id);
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.state = EndpointState::Flushed { local };
            ep.cached_in = None;
            ep.flushes += 1;
        }
        self.control.flushes += 1;
        // Take the connection's frames on our channel now, then read what reached the
        // client's channel since its export: nothing is lost in the move (a frame arriving
        // in between reaches both and is a harmless duplicate).
        self.update_filter();
        if let Some(mut channel) = channel {
            self.receive_leftovers(&mut channel, key);
        }
        // Holders that found it cached elsewhere (recall-on-access) may retry now.
        self.wake_recall_waiters(id);
        (Reply::Ok, Vec::new())
    }

    /// Feeds the frames waiting in a flushing client's channel to the connection `key` now
    /// held here (only TCP segments of that 4-tuple; the channel's filter already ensures it).
    fn receive_leftovers(&mut self, channel: &mut PacketChannel, key: (u16, SocketAddrV4)) {
        let now = self.now();
        let mut events = std::mem::take(&mut self.events);
        let host = &mut self.host;
        let ports = Ports {
            table: &self.ports,
            tcp: &self.tcp_ports,
            endpoints: &self.endpoints,
            tcp_connections: &self.tcp_connections,
            region: &self.region,
        };
        let mut taken = 0;
        // At most one ring's worth: the client drained it just before.
        let ring = channel.config().rx_frames() as usize;
        while taken < ring {
            let n = channel
                .recv_batch(64, &mut |frame| {
                    if super::host::tcp_frame_key(frame) == Some(key) {
                        host.receive(now, frame, &ports, &mut events);
                    }
                })
                .unwrap_or(0);
            taken += n;
            if n < 64 {
                break;
            }
        }
        self.handle_events(&mut events);
        self.events = events;
    }

    /// The flushed connection of the caller's endpoint `id`; `ERR_RECALLING` (and a recall)
    /// when another holder has it cached, ECONNRESET when it was lost with its cacher.
    fn flushed_connection(
        &mut self,
        client: ClientId,
        id: EndpointId,
    ) -> Result<&mut crate::stack::tcp::connection::TcpConnection, i32> {
        self.recall_on_access(client, id)?;
        let key = match self.endpoints.request(client, id) {
            Ok(ep) if ep.lost => return Err(libc::ECONNRESET),
            Ok(ep) => match (ep.state, ep.remote) {
                (EndpointState::Flushed { local }, Some(remote)) => (local.port(), remote),
                _ if ep.kind != SockKind::Stream => return Err(libc::EOPNOTSUPP),
                _ => return Err(libc::ENOTCONN),
            },
            Err(e) => return Err(e.errno()),
        };
        self.host
            .tcp
            .flushed_mut(key.0, key.1)
            .ok_or(libc::ENOTCONN)
    }

    fn flushed_send(
        &mut self,
        client: ClientId,
        id: EndpointId,
        data: &[u8],
    ) -> (Reply, Vec<OwnedFd>) {
        use crate::stack::tcp::connection::SendError;
        let conn = match self.flushed_connection(client, id) {
            Ok(conn) => conn,
            Err(errno) => return (Reply::Error { errno }, Vec::new()),
        };
        match conn.send(data) {
            Ok(n) => (Reply::Sent { n: n as u32 }, Vec::new()),
            Err(e) => {
                // Would block: the next rise of writability must be told (the bit may never
                // have dropped between two loop passes).
                if e == SendError::WouldBlock {
                    self.rearm_flushed(id, client, crate::control::TcpReady::WRITABLE);
                }
                (Reply::Error { errno: e.errno() }, Vec::new())
            }
        }
    }

    fn flushed_recv(
        &mut self,
        client: ClientId,
        id: EndpointId,
        max: u32,
        peek: bool,
    ) -> (Reply, Vec<OwnedFd>) {
        use crate::stack::tcp::connection::RecvError;
        let conn = match self.flushed_connection(client, id) {
            Ok(conn) => conn,
            Err(errno) => return (Reply::Error { errno }, Vec::new()),
        };
        // No bigger than what is queued (at least one byte, so an empty read means EOF, not
        // a zero-length buffer).
        let want = (max as usize)
            .min(crate::control::MAX_TRANSFER)
            .min(conn.recv_queue_len().max(1));
        let mut buf = vec![0u8; want];
        let read = if peek {
            conn.peek(&mut buf)
        } else {
            conn.recv(&mut buf)
        };
        match read {
            Ok(n) => {
                buf.truncate(n);
                let reply = Reply::Received {
                    fin: n == 0 && max > 0,
                    data: buf,
                };
                (reply, Vec::new())
            }
            Err(e) => {
                if e == RecvError::WouldBlock {
                    self.rearm_flushed(id, client, crate::control::TcpReady::READABLE);
                }
                (Reply::Error { errno: e.errno() }, Vec::new())
            }
        }
    }

    fn flushed_shutdown(
        &mut self,
        client: ClientId,
        id: EndpointId,
        how: crate::control::ShutdownHow,
    ) -> (Reply, Vec<OwnedFd>) {
        use crate::control::ShutdownHow;
        let now = self.now();
        let conn = match self.flushed_connection(client, id) {
            Ok(conn) => conn,
            Err(errno) => return (Reply::Error { errno }, Vec::new()),
        };
        if matches!(how, ShutdownHow::Read | ShutdownHow::Both) {
            conn.shutdown_read();
        }
        if matches!(how, ShutdownHow::Write | ShutdownHow::Both) {
            conn.shutdown_write(now);
        }
        (Reply::Ok, Vec::new())
    }

    /// Moves flushed connection `id` back into the caller (paper §3.1 "cache"): a channel for
    /// its 4-tuple and the engine image, as `accept` hands a new connection out. Only a sole
    /// holder may, or any holder of a connection accepted through a `SO_CONCURRENT_SERVER`
    /// listener that was never cached since (delayed caching, §4.2); EBUSY otherwise.
    fn cache(&mut self, client: ClientId, id: EndpointId) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        if let Err(errno) = self.recall_on_access(client, id) {
            return err(errno);
        }
        let (local, remote) = match self.endpoints.request(client, id) {
            Ok(ep) if ep.lost => return err(libc::ECONNRESET),
            Ok(ep) => match (ep.state, ep.remote) {
                (EndpointState::Flushed { .. }, Some(_))
                    if ep.holders.len() > 1 && !ep.deferred =>
                {
                    return err(libc::EBUSY);
                }
                (EndpointState::Flushed { local }, Some(remote)) => (local, remote),
                (EndpointState::Cached { .. }, Some(_)) => return err(libc::EALREADY),
                _ if ep.kind != SockKind::Stream => return err(libc::EOPNOTSUPP),
                _ => return err(libc::ENOTCONN),
            },
            Err(e) => return err(e.errno()),
        };
        let our = SocketAddrV4::new(self.config.addr, local.port());
        let channel = match self.endpoint_channel(&bpf::endpoint_tcp(our, remote)) {
            Ok(fd) => fd,
            Err(errno) => return err(errno),
        };
        // Segments already waiting on our channel go into the connection before it leaves
        // (after the release they would be the process's, and dropped here): all of them,
        // at most a ring's worth (what arrives later also reaches the new channel).
        let ring = self.channel.config().rx_frames() as usize;
        if let Err(e) = self.receive_frames_up_to(ring) {
            eprintln!("msock netserver: receive before cache: {e}");
        }
        let now = self.now();
        let Some(image) = self.host.tcp.release(local.port(), remote, now) else {
            return err(libc::ENOTCONN);
        };
        let memfd = match crate::control::image_memfd(&image, c"msock-tcp-image") {
            Ok(fd) => fd,
            Err(e) => {
                // Keep running it here, still flushed for its owner, rather than lose it.
                if let Ok(conn) = crate::stack::tcp::connection::TcpConnection::import(&image, now)
                {
                    let _ = self.host.tcp.adopt_flushed(conn);
                }
                return err(e.raw_os_error().unwrap_or(libc::ENOMEM));
            }
        };
        let key = (local.port(), remote);
        self.flushed.remove(&key);
        self.flushed_events.retain(|&(ep, _), _| ep != id);
        self.tcp_connections.insert(key, id);
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.state = EndpointState::Cached { local };
            ep.cached_in = Some(client);
            ep.deferred = false;
            ep.caches += 1;
        }
        self.control.caches += 1;
        self.filter_dirty = true;
        (
            Reply::Cached {
                ring: self.endpoint_ring.spec(),
                len: image.len() as u64,
            },
            vec![channel, memfd],
        )
    }

    /// Asks the holder of cached TCP connection `id` to flush it (`Upcall::Recall`), for a
    /// requester of uid `uid` (root, ours, or the holder's).
    fn recall(&mut self, uid: Option<u32>, id: EndpointId) -> Result<(), i32> {
        let ep = self.endpoints.get(id).ok_or(libc::ESRCH)?;
        let holder_uid = self.clients.get(&ep.owner()).map(|c| c.cred.uid);
        if !(may_change_routes(uid) || (uid.is_some() && uid == holder_uid)) {
            return Err(libc::EPERM);
        }
        match (ep.kind, ep.state, ep.remote) {
            (SockKind::Stream, EndpointState::Cached { .. }, Some(_)) => {}
            _ => return Err(libc::EINVAL),
        }
        let owner = ep.owner();
        self.control.recalls += 1;
        self.upcall(owner, &Upcall::Recall { id });
        Ok(())
    }

    /// The owner let go of flushed endpoint `id` (close, or its process died): the connection
    /// closes as Linux closes a socket (FIN after the queued data, or RST if received data was
    /// left unread) and runs to its end here, its port reserved meanwhile.
    fn close_flushed(&mut self, id: EndpointId) {
        let Some(ep) = self.endpoints.get(id) else {
            return;
        };
        let (EndpointState::Flushed { local }, Some(remote)) = (ep.state, ep.remote) else {
            return;
        };
        let key = (local.port(), remote);
        let now = self.now();
        self.host.tcp.close_flushed(key.0, key.1, now);
        self.flushed.remove(&key);
        self.flushed_events.retain(|&(ep, _), _| ep != id);
        // The socket's port entry stays with the closing connection, timestamps noted (a
        // later connect may take its TIME_WAIT over, as Linux's `tcp_twsk_unique`).
        if let Some(conn) = self.host.tcp.connection(key.0, key.1) {
            let timestamps = conn.uses_timestamps();
            self.hold_tcp_entry(id, key, timestamps);
        }
        self.forget_endpoint(id);
        if self.host.tcp.holds_connection(key.0, key.1) {
            self.reserve_held_port(key);
        }
    }

    /// Keeps the port of a connection `host.tcp` runs with nobody holding it reserved, as
    /// Linux keeps a closing socket (later its TIME_WAIT socket) in the port's bind bucket:
    /// `forget_endpoint` moved the socket's own entry already; a connection whose socket had
    /// none gets one with the strictest options.
    fn reserve_held_port(&mut self, key: (u16, SocketAddrV4)) {
        if !self.held_tcp.contains_key(&key) {
            let owner = self.next_held;
            self.next_held += 1;
            if self.tcp_ports.reserve(owner, key.0, key.1) {
                self.held_tcp.insert(key, owner);
                if self.host.tcp.in_time_wait(key.0, key.1) {
                    self.tcp_ports.enter_time_wait(owner);
                }
            }
        }
        self.filter_dirty = true;
    }

    /// Moves endpoint `id`'s TCP port entry (its options) to a pseudo owner for the connection
    /// `key` that `host.tcp` now runs; `timestamps`: the connection uses TCP timestamps (a
    /// later bound connect may take its TIME_WAIT over).
    fn hold_tcp_entry(&mut self, id: EndpointId, key: (u16, SocketAddrV4), timestamps: bool) {
        if self.held_tcp.contains_key(&key) {
            return;
        }
        let owner = self.next_held;
        if self.tcp_ports.hold(id, owner, key.1, timestamps) {
            self.next_held += 1;
            self.held_tcp.insert(key, owner);
            // It may have entered TIME_WAIT before it was held for nobody (flushed).
            if self.host.tcp.in_time_wait(key.0, key.1) {
                self.tcp_ports.enter_time_wait(owner);
            }
        }
    }

    /// Brings the TCP port table up to date before a bind, listen or connect: the ephemeral
    /// range (`ip_local_port_range` of our namespace, read live as Linux does) when a port is
    /// to be chosen, and which held connections are in TIME_WAIT.
    fn sync_tcp_ports(&mut self, choose_port: bool) {
        if choose_port && let Some((low, high)) = local_port_range() {
            self.tcp_ports.set_ephemeral_range(low, high);
        }
        self.note_time_waits();
    }

    /// Tells the port table which held connections entered TIME_WAIT (bind and connect
    /// treat a TIME_WAIT entry differently), from what `host.tcp` noted since last time.
    fn note_time_waits(&mut self) {
        for key in self.host.tcp.take_entered_time_wait() {
            if let Some(owner) = self.held_tcp.get(&key) {
                self.tcp_ports.enter_time_wait(*owner);
            }
        }
    }

    /// `connect` of an unbound TCP endpoint: the port chosen as Linux's `__inet_hash_connect`
    /// (a 4-tuple nobody uses), the 4-tuple reserved, and a channel for it. Reply:
    /// `Bound { local }` with fds `[channel]`, as a bind; the caller then sends its SYN.
    fn connect_unbound(
        &mut self,
        client: ClientId,
        id: EndpointId,
        remote: SocketAddrV4,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let uid = self.clients.get(&client).map_or(u32::MAX, |c| c.cred.uid);
        self.sync_tcp_ports(true);
        let socket = TcpSocket {
            owner: id,
            reuse_addr: false,
            reuse_port: false,
            uid,
        };
        let local = match self.tcp_ports.connect_unbound(socket, remote) {
            Ok(connected) => connected.local,
            Err(e) => return err(e.errno()),
        };
        let fd = match self.endpoint_channel(&bpf::endpoint_tcp(local, remote)) {
            Ok(fd) => fd,
            Err(errno) => {
                self.tcp_ports.release(id);
                return err(errno);
            }
        };
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.state = EndpointState::Cached { local };
            ep.remote = Some(remote);
            ep.cached_in = Some(client);
        }
        self.tcp_connections.insert((local.port(), remote), id);
        self.filter_dirty = true;
        (
            Reply::Bound {
                local,
                ring: self.endpoint_ring.spec(),
            },
            vec![fd],
        )
    }

    /// A TIME_WAIT connection held here whose 4-tuple a new connection took over (Linux's
    /// `tcp_twsk_unique`): it ends now.
    fn end_taken_over(&mut self, key: (u16, SocketAddrV4)) {
        self.held_tcp.remove(&key);
        let now = self.now();
        let _ = self.host.tcp.release(key.0, key.1, now);
        self.filter_dirty = true;
    }

    /// Forgets that `bit` was reported to `client` for flushed endpoint `id`, so it is
    /// reported again as soon as it is set (that holder just found it clear: EAGAIN).
    fn rearm_flushed(&mut self, id: EndpointId, client: ClientId, bit: u8) {
        if let Some(bits) = self.flushed_events.get_mut(&(id, client)) {
            *bits &= !bit;
        }
    }

    /// Tells each holder of a flushed connection when readiness bits rise for it
    /// (`Upcall::TcpReady`), so a client waiting to read or write knows when to ask again.
    /// Holders without an upcall socket yet (a forked child before its `Hello`) are told once
    /// they have one.
    fn notify_flushed(&mut self) {
        if self.flushed.is_empty() {
            return;
        }
        let mut rising = Vec::new();
        for (key, r) in self.host.tcp.flushed_readiness() {
            let Some(&id) = self.flushed.get(&key) else {
                continue;
            };
            let Some(ep) = self.endpoints.get(id) else {
                continue;
            };
            let events = readiness_bits(r);
            for &holder in &ep.holders {
                if self.clients.get(&holder).is_none_or(|c| c.upcall.is_none()) {
                    continue;
                }
                let last = self
                    .flushed_events
                    .insert((id, holder), events)
                    .unwrap_or(0);
                if events & !last != 0 {
                    rising.push((holder, id, events));
                }
            }
        }
        for (holder, id, events) in rising {
            self.upcall(holder, &Upcall::TcpReady { id, events });
        }
    }

    /// Takes a TCP connection from the process that held endpoint `id` (its engine image in a
    /// memfd) and runs it to its end here. The image is untrusted: it must decode, and describe
    /// a connection on the very port that endpoint holds.
    fn hand_over(
        &mut self,
        client: ClientId,
        id: EndpointId,
        len: u64,
        fds: Vec<OwnedFd>,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let (port, shared) = match self.endpoints.request(client, id) {
            // Only the holder it is cached in has the connection to give.
            Ok(ep) if ep.cached_in.is_some_and(|c| c != client) => return err(libc::EPERM),
            Ok(ep) if ep.kind == SockKind::Stream => match ep.state {
                EndpointState::Cached { local } => (local.port(), ep.holders.len() > 1),
                _ => return err(libc::ENOTCONN),
            },
            Ok(_) => return err(libc::EOPNOTSUPP),
            Err(e) => return err(e.errno()),
        };
        if len > crate::control::MAX_HANDOVER_IMAGE {
            return err(libc::EMSGSIZE);
        }
        let Ok([fd]) = <[OwnedFd; 1]>::try_from(fds) else {
            return err(libc::EBADF);
        };
        let image = match read_image(fd, len as usize) {
            Ok(image) => image,
            Err(errno) => return err(errno),
        };
        let conn = match handed_over_connection(&image, port, self.now()) {
            Ok(conn) => conn,
            Err(errno) => return err(errno),
        };
        if shared {
            return self.hand_over_shared(client, id, conn);
        }
        // The last holder's close (the process leaves it open for the netserver to decide:
        // a holder of a shared connection must not send its FIN).
        let mut conn = conn;
        conn.close(self.now());
        // Too many connections kept for processes already: the process closes it itself.
        if !self.host.tcp.has_room_for_orphan(conn.send_queue_len()) {
            return err(libc::ENOBUFS);
        }
        let key = (port, conn.remote());
        let timestamps = conn.uses_timestamps();
        if let Err(e) = self.host.tcp.adopt(conn) {
            return err(e.errno());
        }
        // The process's endpoint ends; its port entry (options included) stays with the
        // connection, as Linux keeps the socket (then its TIME_WAIT socket) in the bind bucket.
        self.hold_tcp_entry(id, key, timestamps);
        self.forget_endpoint(id);
        self.reserve_held_port(key);
        (Reply::Ok, Vec::new())
    }

    /// A holder lets go of the shared connection `id` it has cached, giving its image (its
    /// close while other processes still hold the socket): the connection is flushed for them
    /// (paper §3.1) and the caller holds it no longer.
    fn hand_over_shared(
        &mut self,
        client: ClientId,
        id: EndpointId,
        conn: crate::stack::tcp::connection::TcpConnection,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let Some(ep) = self.endpoints.get(id) else {
            return err(libc::EBADF);
        };
        let (EndpointState::Cached { local }, Some(remote)) = (ep.state, ep.remote) else {
            return err(libc::ENOTCONN);
        };
        if conn.remote() != remote {
            return err(libc::EPERM);
        }
        if let Err(e) = self.host.tcp.adopt_flushed(conn) {
            return err(e.errno());
        }
        let key = (local.port(), remote);
        self.tcp_connections.remove(&key);
        self.flushed.insert(key, id);
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.state = EndpointState::Flushed { local };
            ep.cached_in = None;
            ep.flushes += 1;
        }
        self.control.flushes += 1;
        self.update_filter();
        self.wake_recall_waiters(id);
        self.release_shared(id, client);
        (Reply::Ok, Vec::new())
    }

    /// Removes endpoint `id` and what hangs on it: its ports, a listener held here (connections
    /// nobody accepted are reset, as when Linux closes a listener), its 4-tuple.
    fn forget_endpoint(&mut self, id: EndpointId) {
        let Some(ep) = self.endpoints.remove(id) else {
            return;
        };
        // A connection that lives on here (flushed, then closed) keeps its socket's port entry.
        if let (Some(local), Some(remote), SockKind::Stream) = (ep.local(), ep.remote, ep.kind)
            && self.host.tcp.holds_connection(local.port(), remote)
        {
            self.hold_tcp_entry(id, (local.port(), remote), false);
        }
        self.tcp_ports.release(id);
        if let EndpointState::Listening { local } = ep.state {
            // SO_REUSEPORT listeners share the listener here: it closes with the last of them.
            let others = self
                .tcp_ports
                .on_port(local.port())
                .any(|(_, usage)| usage == PortUse::Listening);
            if !others {
                let _ = self.host.tcp.close_listener(local.port(), self.now());
            }
        }
        if let (EndpointState::Cached { local }, Some(remote), SockKind::Stream) =
            (ep.state, ep.remote, ep.kind)
        {
            self.tcp_connections.remove(&(local.port(), remote));
        }
        self.acceptable_sent.retain(|&(ep, _)| ep != id);
        self.accepts_answered.retain(|&(ep, _), _| ep != id);
        self.flushed_events.retain(|&(ep, _), _| ep != id);
        self.crash_records.remove(&id);
        self.ports.release(id);
        self.filter_dirty = true;
    }

    /// The netserver listens on the port endpoint `id` holds; the process keeps the endpoint
    /// (for accept and close) but no longer the port's traffic.
    fn listen(&mut self, client: ClientId, id: EndpointId, backlog: u32) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let (local, unbound) = match self.endpoints.request(client, id) {
            Ok(ep) if ep.kind != SockKind::Stream => return err(libc::EOPNOTSUPP),
            Ok(ep) => match (ep.state, ep.remote) {
                (EndpointState::Cached { local }, None) => (local, false),
                (EndpointState::Unbound, _) => (SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), true),
                (EndpointState::Listening { .. }, _) => return (Reply::Ok, Vec::new()),
                _ => return err(libc::EINVAL),
            },
            Err(e) => return err(e.errno()),
        };
        self.sync_tcp_ports(unbound);
        // listen(2) on an unbound socket binds an ephemeral port first, as Linux.
        let local = if unbound {
            let uid = self.clients.get(&client).map_or(u32::MAX, |c| c.cred.uid);
            let socket = TcpSocket {
                owner: id,
                reuse_addr: false,
                reuse_port: false,
                uid,
            };
            match self.tcp_ports.bind(socket, local) {
                Ok(bound) => bound,
                Err(e) => return err(e.errno()),
            }
        } else {
            local
        };
        // Linux checks the port again, now for a listener (`inet_csk_listen_start`).
        if let Err(e) = self.tcp_ports.listen(id) {
            if unbound {
                self.tcp_ports.release(id);
            }
            return err(e.errno());
        }
        // listen(2): the backlog is capped at SOMAXCONN (4096) and at least 1.
        let accept_backlog = backlog.clamp(1, 4096) as usize;
        let config = crate::stack::tcp::connection::TcpConfig::default();
        let syn_backlog = crate::stack::tcp::connection::DEFAULT_SYN_BACKLOG;
        // A SO_REUSEPORT listener joins the one already held here for its group (the port
        // table allowed it): one accept queue serves the group.
        let shared = self.host.tcp.listening_ports().any(|p| p == local.port());
        if !shared
            && self
                .host
                .tcp
                .listen(local.port(), config, syn_backlog, accept_backlog)
                .is_err()
        {
            if unbound {
                self.tcp_ports.release(id);
            } else {
                self.tcp_ports.unlisten(id);
            }
            return err(libc::EADDRINUSE);
        }
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.state = EndpointState::Listening { local };
            ep.cached_in = None;
        }
        self.filter_dirty = true;
        (Reply::Ok, Vec::new())
    }

    /// Hands the oldest established connection of listener `id` to the calling holder: a new
    /// endpoint, a channel matching the connection's 4-tuple and the engine image (memfd). A
    /// `SO_CONCURRENT_SERVER` listener's connection stays here instead ([`Server::accept_deferred`]).
    /// Each call re-arms the caller's `Acceptable` upcall; one is sent at once if connections
    /// are still waiting after this one.
    fn accept(&mut self, client: ClientId, id: EndpointId) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let (local, concurrent) = match self.endpoints.request(client, id) {
            Ok(ep) => match ep.state {
                EndpointState::Listening { local } => (local, ep.concurrent_server),
                _ => return err(libc::EINVAL),
            },
            Err(e) => return err(e.errno()),
        };
        self.acceptable_sent.remove(&(id, client));
        let seq = {
            let n = self.accepts_answered.entry((id, client)).or_insert(0);
            *n = n.wrapping_add(1);
            *n
        };
        let port = local.port();
        let conn = match self.host.tcp.accept(port) {
            Ok(Some(conn)) => conn,
            Ok(None) => return err(libc::EAGAIN),
            Err(_) => return err(libc::EINVAL),
        };
        if self.host.tcp.pending(port) > 0
            && self
                .clients
                .get(&client)
                .is_some_and(|c| c.upcall.is_some())
        {
            self.acceptable_sent.insert((id, client));
            self.upcall(client, &Upcall::Acceptable { id, seq });
        }
        if concurrent {
            return self.accept_deferred(client, id, conn);
        }
        let remote = conn.remote();
        let our = SocketAddrV4::new(self.config.addr, port);
        let refuse = |server: &mut Server,
                      mut conn: crate::stack::tcp::connection::TcpConnection,
                      errno: i32| {
            // The connection cannot be handed out: reset it from here, as Linux does when
            // accept fails for lack of resources.
            conn.abort(server.now());
            let _ = server.host.tcp.adopt_aborted(conn);
            (Reply::Error { errno }, Vec::new())
        };
        let new_id = match self
            .endpoints
            .create(client, Family::Inet, SockKind::Stream)
        {
            Ok(new_id) => new_id,
            Err(e) => return refuse(self, conn, e.errno()),
        };
        let filter = bpf::endpoint_tcp(our, remote);
        let channel = match self.endpoint_channel(&filter) {
            Ok(fd) => fd,
            Err(errno) => {
                self.endpoints.remove(new_id);
                return refuse(self, conn, errno);
            }
        };
        // Segments of this connection already waiting on our channel (a request sent right
        // after the handshake) go into it before it leaves, as in `cache`: it runs here while
        // our channel is drained, then leaves. Dropped here as the process's, they would cost
        // the peer a retransmission timeout (200 ms); what arrives from now on also reaches
        // the new channel, whose filter is set.
        if let Err(e) = self.host.tcp.adopt_flushed(conn) {
            self.endpoints.remove(new_id);
            return err(match e.errno() {
                libc::EINVAL => libc::ECONNABORTED,
                errno => errno,
            });
        }
        let ring = self.channel.config().rx_frames() as usize;
        if let Err(e) = self.receive_frames_up_to(ring) {
            eprintln!("msock netserver: receive before accept: {e}");
        }
        let now = self.now();
        let Some(image) = self.host.tcp.release(port, remote, now) else {
            // Ended while draining (reset by the peer): nothing to hand out.
            self.endpoints.remove(new_id);
            return err(libc::ECONNABORTED);
        };
        let memfd = match crate::control::image_memfd(&image, c"msock-tcp-image") {
            Ok(fd) => fd,
            Err(e) => {
                self.endpoints.remove(new_id);
                let errno = e.raw_os_error().unwrap_or(libc::ENOMEM);
                return match crate::stack::tcp::connection::TcpConnection::import(&image, now) {
                    Ok(conn) => refuse(self, conn, errno),
                    Err(_) => err(errno),
                };
            }
        };
        if let Some(ep) = self.endpoints.get_mut(new_id) {
            ep.state = EndpointState::Cached { local: our };
            ep.remote = Some(remote);
            ep.cached_in = Some(client);
            ep.caches = 1;
        }
        self.control.caches += 1;
        // The connection shares the listener's port with its options while it lives.
        let _ = self.tcp_ports.inherit(id, new_id, remote);
        self.tcp_connections.insert((port, remote), new_id);
        let mut fds = vec![channel, memfd];
        // Its crash-record file: the process maps it, this netserver keeps it to read (only)
        // if the process dies. Without one the connection is reset on a crash.
        if let Ok(file) = super::crash_reclaim::create_record_file()
            && let Ok(ours) = file.try_clone()
        {
            self.crash_records.insert(new_id, ours);
            fds.push(file);
        }
        (
            Reply::Accepted {
                id: new_id,
                remote,
                ring: self.endpoint_ring.spec(),
                len: image.len() as u64,
            },
            fds,
        )
    }

    /// Accepts `conn` from `SO_CONCURRENT_SERVER` listener `id` without caching it (delayed
    /// caching, paper §4.2): it runs here as a flushed connection of a new endpoint the caller
    /// holds, marked deferred so that the child the caller forks may cache it while the caller
    /// still holds it. Reply: `AcceptedDeferred`, no descriptors.
    fn accept_deferred(
        &mut self,
        client: ClientId,
        id: EndpointId,
        mut conn: crate::stack::tcp::connection::TcpConnection,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let remote = conn.remote();
        let port = conn.local().port();
        let our = SocketAddrV4::new(self.config.addr, port);
        let new_id = match self
            .endpoints
            .create(client, Family::Inet, SockKind::Stream)
        {
            Ok(new_id) => new_id,
            Err(e) => {
                // Reset from here, as Linux does when accept fails for lack of resources.
                conn.abort(self.now());
                let _ = self.host.tcp.adopt_aborted(conn);
                return err(e.errno());
            }
        };
        if let Err(e) = self.host.tcp.adopt_flushed(conn) {
            // Already ended (reset while queued) or its 4-tuple taken: nothing to hand out.
            self.endpoints.remove(new_id);
            return err(match e.errno() {
                libc::EINVAL => libc::ECONNABORTED,
                errno => errno,
            });
        }
        if let Some(ep) = self.endpoints.get_mut(new_id) {
            ep.state = EndpointState::Flushed { local: our };
            ep.remote = Some(remote);
            ep.deferred = true;
        }
        let _ = self.tcp_ports.inherit(id, new_id, remote);
        self.flushed.insert((port, remote), new_id);
        self.control.deferred_accepts += 1;
        (Reply::AcceptedDeferred { id: new_id, remote }, Vec::new())
    }

    /// A channel for a cached endpoint: `filter` set and locked here, rings as configured
    /// (an errno on failure).
    fn endpoint_channel(&self, filter: &bpf::BpfProgram) -> Result<OwnedFd, i32> {
        self.channel_pool
            .take(filter)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOBUFS))
    }

    /// Tells each armed holder of a listener (one not told since its last `Accept`) when its
    /// accept queue has connections; holders without an upcall socket yet (a forked child
    /// before its `Hello`) are told once they have one.
    fn notify_acceptable(&mut self) {
        if self.host.tcp.listening_ports().next().is_none() {
            return;
        }
        let mut waiting: Vec<(EndpointId, ClientId)> = Vec::new();
        for ep in self.endpoints.iter() {
            let EndpointState::Listening { local } = ep.state else {
                continue;
            };
            if self.host.tcp.pending(local.port()) == 0 {
                continue;
            }
            // Only the holders that accept from it, once one has: a process that shares the
            // listener through fork and never accepts (inetd's children between fork and
            // exec) would mark the shared placeholder readable after the acceptor took the
            // connection, and a stale mark sends a blocking acceptor into accept(2) on the
            // wrong listener for good. Until someone accepts, every holder is told.
            let acceptors = ep
                .holders
                .iter()
                .any(|&h| self.accepts_answered.contains_key(&(ep.id, h)));
            for &holder in &ep.holders {
                if acceptors && !self.accepts_answered.contains_key(&(ep.id, holder)) {
                    continue;
                }
                if !self.acceptable_sent.contains(&(ep.id, holder))
                    && self
                        .clients
                        .get(&holder)
                        .is_some_and(|c| c.upcall.is_some())
                {
                    waiting.push((ep.id, holder));
                }
            }
        }
        for (id, holder) in waiting {
            self.acceptable_sent.insert((id, holder));
            let seq = self
                .accepts_answered
                .get(&(id, holder))
                .copied()
                .unwrap_or(0);
            self.upcall(holder, &Upcall::Acceptable { id, seq });
        }
    }

    /// Frees the port reservations of connections that ended here.
    fn release_finished_tcp(&mut self) {
        self.note_time_waits();
        for key in self.host.tcp.take_finished() {
            if let Some(owner) = self.held_tcp.remove(&key) {
                self.tcp_ports.release(owner);
                self.filter_dirty = true;
            }
        }
    }

    fn hello(&mut self, client: ClientId, pid: u32, fds: Vec<OwnedFd>) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let Some(c) = self.clients.get_mut(&client) else {
            return err(libc::EPROTO);
        };
        // The kernel's word on the pid counts, not the message's. A session made by `Fork` has
        // no peer of its own (a socketpair end): its Hello may name a child of the forking
        // process (or that process itself, which may hand the session to a thread).
        let allowed = match c.forked_from {
            None => pid == c.cred.pid,
            Some(parent) => pid == parent || parent_pid_of(pid) == Some(parent),
        };
        if !allowed {
            return err(libc::EPERM);
        }
        if fds.len() > 1 {
            return err(libc::EINVAL);
        }
        // The optional stats page stays mapped here and `msock stat` reads it: only a memfd of
        // the right size sealed against shrinking is taken (a page the client could truncate
        // would SIGBUS the netserver); anything else is refused, not silently ignored.
        let stats = match fds.into_iter().next().map(StatsPage::map_readonly) {
            None => None,
            Some(Ok(view)) => Some(view),
            Some(Err(_)) => return err(libc::EINVAL),
        };
        let (ours, theirs) = match Connection::pair() {
            Ok(pair) => pair,
            Err(e) => return err(e.raw_os_error().unwrap_or(libc::ENOMEM)),
        };
        if let Err(e) = ours.set_nonblocking(true) {
            return err(e.raw_os_error().unwrap_or(libc::EIO));
        }
        let region = match self.region.readonly_fd() {
            Ok(fd) => fd,
            Err(e) => return err(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        c.stats = stats;
        c.upcall = Some(ours);
        c.registered = true;
        c.cred.pid = pid;
        // A child whose parent let go before it said Hello may cache what it alone holds.
        if c.forked_from.is_some() {
            let sole: Vec<EndpointId> = self
                .endpoints
                .held_by(client)
                .filter(|ep| ep.holders.len() == 1)
                .map(|ep| ep.id)
                .collect();
            for id in sole {
                self.notify_sole_holder(id);
            }
        }
        (
            Reply::Hello {
                client_id: client,
                region_len: self.region.len() as u64,
            },
            vec![region, theirs.into()],
        )
    }

    fn bind(
        &mut self,
        client: ClientId,
        id: EndpointId,
        local: SocketAddrV4,
        reuse_addr: bool,
        reuse_port: bool,
    ) -> (Reply, Vec<OwnedFd>) {
        let err = |errno: i32| (Reply::Error { errno }, Vec::new());
        let uid = self.clients.get(&client).map_or(u32::MAX, |c| c.cred.uid);
        let our_addr = self.config.addr;
        let ep = match self.endpoints.request(client, id) {
            Ok(ep) => ep,
            Err(e) => return err(e.errno()),
        };
        if ep.state != EndpointState::Unbound {
            return err(libc::EINVAL);
        }
        if let Family::Inet6 { v6only: true } = ep.family {
            return err(libc::EAFNOSUPPORT);
        }
        if !local.ip().is_unspecified() && *local.ip() != our_addr {
            return err(libc::EADDRNOTAVAIL);
        }
        let stream = ep.kind == SockKind::Stream;
        let bound = if stream {
            // Linux's TCP rules (`inet_csk_get_port`), not UDP's.
            self.sync_tcp_ports(local.port() == 0);
            let socket = TcpSocket {
                owner: id,
                reuse_addr,
                reuse_port,
                uid,
            };
            match self.tcp_ports.bind(socket, local) {
                Ok(bound) => bound,
                Err(e) => return err(e.errno()),
            }
        } else {
            match self.ports.bind(BindRequest {
                local,
                owner: id,
                reuse_addr,
                reuse_port,
                uid,
            }) {
                Ok(bound) => bound,
                Err(e) => return err(e.errno()),
            }
        };
        // A wildcard bind also receives the subnet and limited broadcast, as on Linux.
        let filter = if stream {
            bpf::endpoint_tcp_port(SocketAddrV4::new(our_addr, bound.port()))
        } else if bound.ip().is_unspecified() {
            let mask = super::host::prefix_mask(self.config.prefix_len);
            let subnet_broadcast = Ipv4Addr::from(u32::from(our_addr) | !mask);
            bpf::endpoint_udp_to(
                &[our_addr, subnet_broadcast, Ipv4Addr::BROADCAST],
                bound.port(),
            )
        } else {
            bpf::endpoint_udp(our_addr, bound.port())
        };
        let fd = match self.endpoint_channel(&filter) {
            Ok(fd) => fd,
            Err(errno) => {
                if stream {
                    self.tcp_ports.release(id);
                } else {
                    self.ports.release(id);
                }
                return err(errno);
            }
        };
        if let Some(ep) = self.endpoints.get_mut(id) {
            ep.state = EndpointState::Cached { local: bound };
            ep.cached_in = Some(client);
        }
        self.filter_dirty = true;
        (
            Reply::Bound {
                local: bound,
                ring: self.endpoint_ring.spec(),
            },
            vec![fd],
        )
    }

    fn resolve(&mut self, client: ClientId, addr: Ipv4Addr) -> (Reply, Vec<OwnedFd>) {
        let mask = super::host::prefix_mask(self.config.prefix_len);
        if u32::from(addr) & mask != u32::from(self.config.addr) & mask || addr == self.config.addr
        {
            return (
                Reply::Error {
                    errno: libc::EHOSTUNREACH,
                },
                Vec::new(),
            );
        }
        if let Some(&mac) = self.static_neighbors.get(&addr) {
            return (Reply::Resolve { mac: Some(mac) }, Vec::new());
        }
        let now = self.now();
        let mut events = std::mem::take(&mut self.events);
        let known = self.host.resolve(now, addr, &mut events);
        // Known here but withdrawn from the region (`msock route neigh del`): publish it
        // again, so the caller's next sends find it without asking.
        if let Some(mac) = known
            && self.region.neighbor(addr) != Some(mac)
            && let Err(e) = self.region.set_neighbor(addr, mac)
        {
            eprintln!("msock netserver: routing region: {e}");
        }
        let failed_now = events
            .iter()
            .any(|e| matches!(e, Event::Resolved { ip, mac: None } if *ip == addr));
        if known.is_none() && !failed_now {
            let waiters = self.resolve_waiters.entry(addr).or_default();
            if !waiters.contains(&client) {
                waiters.push(client);
            }
        }
        self.handle_events(&mut events);
        self.events = events;
        if failed_now {
            return (
                Reply::Error {
                    errno: libc::EHOSTUNREACH,
                },
                Vec::new(),
            );
        }
        (Reply::Resolve { mac: known }, Vec::new())
    }

    /// Applies a route or neighbour request (the caller checked the privilege); an errno as
    /// `ip route` / `ip neigh` would get for bad input.
    fn change_routes(&mut self, request: &Request) -> Result<(), i32> {
        let host = *self.host.config();
        match *request {
            Request::RouteAdd {
                dest,
                prefix_len,
                gateway,
            } => {
                let route = Route {
                    dest,
                    prefix_len,
                    gateway,
                };
                if prefix_len > 32 || route.normalized() != route {
                    return Err(libc::EINVAL);
                }
                if let Some(gw) = gateway {
                    if gw == host.addr
                        || gw.is_unspecified()
                        || gw.is_broadcast()
                        || gw.is_multicast()
                    {
                        return Err(libc::EINVAL);
                    }
                    if !host.is_on_link_neighbor(gw) {
                        return Err(libc::ENETUNREACH);
                    }
                }
                self.region.add_route(&route).map_err(|e| match e {
                    TableError::Full => libc::ENOSPC,
                    TableError::BadPrefix | TableError::BadGateway => libc::EINVAL,
                })
            }
            Request::RouteDel { dest, prefix_len } => {
                if prefix_len > 32 {
                    return Err(libc::EINVAL);
                }
                if self.region.del_route(dest, prefix_len) {
                    Ok(())
                } else {
                    Err(libc::ESRCH)
                }
            }
            Request::NeighAdd { ip, mac } => {
                if ip == host.addr || ip.is_unspecified() || ip.is_multicast() || !mac.is_unicast()
                {
                    return Err(libc::EINVAL);
                }
                if !host.is_on_link_neighbor(ip) {
                    return Err(libc::ENETUNREACH);
                }
                self.region
                    .set_neighbor(ip, mac)
                    .map_err(|_| libc::ENOSPC)?;
                self.static_neighbors.insert(ip, mac);
                // Clients waiting for this neighbour have their answer.
                for client in self.resolve_waiters.remove(&ip).unwrap_or_default() {
                    self.upcall(
                        client,
                        &Upcall::Resolved {
                            addr: ip,
                            mac: Some(mac),
                        },
                    );
                }
                Ok(())
            }
            Request::NeighDel { ip } => {
                let was_static = self.static_neighbors.remove(&ip).is_some();
                let published = self.region.neighbor(ip).is_some();
                if !was_static && !published {
                    return Err(libc::ESRCH);
                }
                self.region.remove_neighbor(ip);
                Ok(())
            }
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub(crate) fn channel_stats(&self) -> crate::channel::ChannelStats {
        self.channel.stats()
    }

    pub(crate) fn neighbors(&self) -> Vec<(Ipv4Addr, EthernetAddress)> {
        self.host.neighbors()
    }
}

/// Room for the stat text in one control message (the rest of the reply is a few bytes).
const STAT_TEXT_LIMIT: usize = crate::control::MAX_MESSAGE - 1024;

/// A stat text that fits one control message: a text report is cut at a line boundary with a
/// note; a JSON report that does not fit is replaced by an error object (cut JSON is useless).
/// Who may change routes and neighbours: root, or the uid the netserver runs as (peer
/// credentials of the control connection, taken by the kernel at connect time).
/// The `Upcall::TcpReady` events telling a holder that the recall it waited for is over
/// (every bit set, `control::ERR_RECALLING`): it retries its request.
const RECALL_OVER: u8 = crate::control::TcpReady::RETRY;

/// The parent pid of process `pid`, if it exists: the fourth field of `/proc/<pid>/stat`,
/// read with one `read` (a fork child's `Hello` asks for it on every connection of an
/// inetd-style server; `status` is five times longer and was read in eight pieces).
fn parent_pid_of(pid: u32) -> Option<u32> {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = file.read(&mut buf).ok()?;
    parse_stat_ppid(buf.get(..n)?)
}

/// `PPid` from a `/proc/<pid>/stat` line: `pid (comm) state ppid ...`, where `comm` may hold
/// spaces and parentheses (so the fields are counted after the last `)`).
fn parse_stat_ppid(stat: &[u8]) -> Option<u32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `Upcall::TcpReady` bits of an engine readiness.
fn readiness_bits(r: crate::stack::tcp::connection::Readiness) -> u8 {
    use crate::control::TcpReady;
    [
        (r.readable, TcpReady::READABLE),
        (r.writable, TcpReady::WRITABLE),
        (r.read_hup, TcpReady::READ_HUP),
        (r.hup, TcpReady::HUP),
        (r.error, TcpReady::ERROR),
        (r.priority, TcpReady::PRIORITY),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(0, |bits, (_, bit)| bits | bit)
}

fn may_change_routes(peer_uid: Option<u32>) -> bool {
    peer_uid.is_some_and(|uid| uid == 0 || uid == nix::unistd::geteuid().as_raw())
}

fn stat_text(text: String, json: bool) -> String {
    if text.len() <= STAT_TEXT_LIMIT {
        return text;
    }
    if json {
        return format!(
            "{{\"error\":\"report of {} bytes exceeds one control message\"}}",
            text.len()
        );
    }
    let mut cut = STAT_TEXT_LIMIT - 64;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let cut = text[..cut].rfind('\n').map_or(cut, |i| i + 1);
    format!(
        "{}... ({} more bytes not shown)\n",
        &text[..cut],
        text.len() - cut
    )
}

/// A handed-over image as a connection, if it decodes and belongs to `port` (a process may
/// only give away a connection of the port it holds).
fn handed_over_connection(
    image: &[u8],
    port: u16,
    now: crate::stack::Instant,
) -> Result<crate::stack::tcp::connection::TcpConnection, i32> {
    let mut conn = crate::stack::tcp::connection::TcpConnection::import(image, now)
        .map_err(|_| libc::EINVAL)?;
    if conn.local().port() != port {
        return Err(libc::EPERM);
    }
    // The process chose its settings; here they may not spin the netserver (zero RTO),
    // pin the port (a TIME_WAIT of years) or take its memory (1 GiB buffers).
    conn.apply_limits(&crate::stack::tcp::connection::ConfigLimits::default(), now);
    Ok(conn)
}

/// The host's 128-bit secret for ISNs and SYN cookies.
fn random_secret() -> io::Result<[u8; 16]> {
    use std::io::Read;
    let mut key = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

/// Reads a handed-over image: `len` bytes from offset 0 of a memfd (a regular file on shmem).
/// Anything else is EBADF before any read: a pipe, FIFO or socket could block the netserver, and
/// so could a regular file on a filesystem someone else serves (FUSE, NFS); a directory, device
/// or `O_PATH` descriptor has no image. A file shorter than `len` is EINVAL. Errors are errnos
/// for the reply.
fn read_image(fd: OwnedFd, len: usize) -> Result<Vec<u8>, i32> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|_| libc::EBADF)?;
    if !meta.file_type().is_file() {
        return Err(libc::EBADF);
    }
    if !super::on_shmem(file.as_fd()) {
        return Err(libc::EBADF);
    }
    if meta.len() < len as u64 {
        return Err(libc::EINVAL);
    }
    let mut image = vec![0u8; len];
    file.read_exact_at(&mut image, 0)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    Ok(image)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; true if it was lower and now is not (the
/// netserver holds descriptors per client and per connection, and the usual soft limit of 1024
/// is far below what the hard limit allows).
fn raise_nofile_limit() -> bool {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok(),
        _ => false,
    }
}

fn ignore_would_block(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(())
    } else {
        Err(e)
    }
}

/// `net.ipv4.ip_local_port_range` of our network namespace (`None` if unreadable or bad),
/// read live (a change applies to the next bind, as on Linux) with one `pread` of a file kept
/// open (the netserver never changes namespace).
fn local_port_range() -> Option<(u16, u16)> {
    use std::os::unix::fs::FileExt;
    static FILE: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let file = FILE
        .get_or_init(|| std::fs::File::open("/proc/sys/net/ipv4/ip_local_port_range").ok())
        .as_ref()?;
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    match (it.next()??, it.next()??) {
        (low, high) if low >= 1 && low <= high => Some((low, high)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::{handed_over_connection, read_image};
    use crate::stack::Instant;
    use crate::stack::tcp::connection::{InitialSequence, TcpConfig, TcpConnection};
    use crate::wire::TcpSeqNumber;

    fn memfd_with(bytes: &[u8]) -> std::os::fd::OwnedFd {
        let fd = nix::sys::memfd::memfd_create(
            c"test-image",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .expect("memfd");
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes).expect("write");
        file.into()
    }

    #[test]
    fn parent_pid_comes_from_proc_stat_even_with_odd_command_names() {
        assert_eq!(parse_stat_ppid(b"42 (cat) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_stat_ppid(b"42 (a) b) (c) R 1234 42 42"), Some(1234));
        assert_eq!(parse_stat_ppid(b"42 (x y z) S 9\n"), Some(9));
        assert_eq!(parse_stat_ppid(b"42 (cat"), None);
        assert_eq!(parse_stat_ppid(b"42 (cat) S"), None);
        assert_eq!(parse_stat_ppid(b"42 (cat) S -1"), None);
        // This test process, as the kernel sees it.
        let ppid = std::os::unix::process::parent_id();
        assert_eq!(parent_pid_of(std::process::id()), Some(ppid));
    }

    #[test]
    fn only_root_or_our_own_uid_may_change_routes() {
        use super::may_change_routes;
        assert!(may_change_routes(Some(0)));
        assert!(may_change_routes(Some(nix::unistd::geteuid().as_raw())));
        let other = if nix::unistd::geteuid().is_root() {
            65534
        } else {
            nix::unistd::geteuid().as_raw() + 1
        };
        assert!(!may_change_routes(Some(other)));
        assert!(!may_change_routes(None), "unknown peer");
    }

    #[test]
    fn hand_over_images_come_only_from_files_of_the_announced_length() {
        assert_eq!(read_image(memfd_with(b"abcdef"), 4), Ok(b"abcd".to_vec()));
        assert_eq!(read_image(memfd_with(b"ab"), 4), Err(libc::EINVAL));
        // A pipe (or socket) could block the netserver: refused before any read.
        let (reader, _writer) = nix::unistd::pipe().expect("pipe");
        assert_eq!(read_image(reader, 4), Err(libc::EBADF));
        // Neither a directory, a device, an O_PATH descriptor of a memfd, nor a regular file on
        // a filesystem other than shmem (FUSE or NFS could stall the read).
        let open = |path: &str, flags: nix::fcntl::OFlag| {
            let fd = nix::fcntl::open(
                path,
                flags | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .expect("open");
            // SAFETY: `open` returned a fresh descriptor nothing else owns.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        };
        assert_eq!(
            read_image(open("/", nix::fcntl::OFlag::O_RDONLY), 4),
            Err(libc::EBADF)
        );
        assert_eq!(
            read_image(open("/dev/zero", nix::fcntl::OFlag::O_RDONLY), 4),
            Err(libc::EBADF)
        );
        let memfd = memfd_with(b"abcdef");
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&memfd));
        assert_eq!(
            read_image(open(&path, nix::fcntl::OFlag::O_PATH), 4),
            Err(libc::EBADF)
        );
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let on_shmem = nix::sys::statfs::statfs(manifest)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !on_shmem {
            assert_eq!(
                read_image(open(manifest, nix::fcntl::OFlag::O_RDONLY), 4),
                Err(libc::EBADF)
            );
        }
    }

    #[test]
    fn hand_over_images_must_decode_and_belong_to_the_holders_port() {
        let now = Instant::from_secs(5);
        let conn = TcpConnection::connect(
            TcpConfig::default(),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80),
            InitialSequence {
                iss: TcpSeqNumber(1),
                ts_offset: 0,
            },
            now,
        );
        let image = conn.export(now);
        assert!(handed_over_connection(&image, 40000, now).is_ok());
        assert_eq!(
            handed_over_connection(&image, 40001, now).err(),
            Some(libc::EPERM),
            "another endpoint's port"
        );
        assert_eq!(
            handed_over_connection(b"MSTC garbage", 40000, now).err(),
            Some(libc::EINVAL)
        );
        let mut cut = image.clone();
        cut.truncate(image.len() / 2);
        assert_eq!(
            handed_over_connection(&cut, 40000, now).err(),
            Some(libc::EINVAL)
        );
    }

    use super::*;

    #[test]
    fn stat_text_fits_one_control_message() {
        let small = "a\nb\n".to_string();
        assert_eq!(stat_text(small.clone(), false), small);
        let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let cut = stat_text(big.clone(), false);
        assert!(cut.len() <= STAT_TEXT_LIMIT, "{}", cut.len());
        assert!(cut.ends_with("more bytes not shown)\n"));
        let json = stat_text(big, true);
        assert!(json.starts_with("{\"error\""));
    }
}
