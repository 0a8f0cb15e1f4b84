//! Control-path costs of the netserver (issue 4, paper §3.1): the round trip of one control
//! request, and the cost of setting up a TCP connection through the netserver, each beside the
//! kernel's nearest equivalent measured in the same run on the same machine.
//!
//! Topology: `msock testnet` namespaces; a netserver in `N-a` owning 198.18.0.2, `N-a`'s kernel
//! owning 198.18.0.3, the kernel peer in `N-b` (198.18.0.1). Everything runs in this one
//! process: a measuring thread joins `N-a` (`setns`), peer threads join `N-b`, so one monotonic
//! clock times both ends.
//!
//! 1. Control round trip: `Request::Connect { id, remote: None }` on an unbound UDP endpoint
//!    (pure bookkeeping in the netserver: look the endpoint up, clear its remote; no port, no
//!    filter, no routing work), called through `control::transport::Connection::call` exactly
//!    as libmsock calls it (encode, `sendmsg`, `recvmsg`, decode). Beside it: the same-sized
//!    request/reply over a SOCK_SEQPACKET socketpair to a trivial echo process (blocking
//!    `recv`/`send`), and `getsockname(2)` on a kernel UDP socket (a cheap socket syscall).
//!    Interleaved blocks, each call timed alone, after a warm-up; repeated after part 2, with
//!    the netserver holding the closed connections in TIME_WAIT.
//! 2. Connection set-up, each sample one connection, sequential, every connection closed
//!    gracefully (FIN both ways):
//!    - active open, msock: a sibling session of one registered client (`Socket` + `Bind`
//!      ephemeral, the port's AF_PACKET channel mapped), the next hop from the routing region
//!      (no request), `Connect`, then the engine's handshake over the channel, timed until the
//!      engine is ESTABLISHED with its ACK on the wire; then `close()` and `HandOver` (the
//!      netserver sends the FIN and holds TIME_WAIT, as the kernel does after `close`). Kernel:
//!      `socket` + `connect` from 198.18.0.3, then `close`. Both to one kernel listener in
//!      `N-b` that reads to EOF and closes.
//!    - passive open through the netserver's listener: one `Listen`ing endpoint; per connection
//!      a kernel client in `N-b` connects, the server waits for `Upcall::Acceptable` and sends
//!      `Accept` (the connection's channel and engine image come back), timed from the client's
//!      `connect` call to the server holding the connection; then `close()` + `HandOver`.
//!      Kernel: a listener on 198.18.0.3, blocking `accept`, `close`. The client reads to EOF
//!      and closes. The listener stays open across connections, as servers use it:
//!      `TcpSession::accept` closes its listener after one connection (`nc -l` style), so this
//!      side speaks the control protocol directly with the same requests.
//!
//!    Control requests per connection come from the netserver's own counter (`msock stat`'s
//!    `control: … requests N`), read before and after a counting pass.
//!
//! Needs root; writes the `control` section of BENCHMARKS.md. The namespaces carry this
//! process's pid and are removed on exit, also on error.

#[path = "support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use msock::channel::PacketChannel;
use msock::client::tcp_session::TcpSession;
use msock::control::transport::{Connection, ControlAddress};
use msock::control::{EndpointId, Family, Reply, Request, SockKind, Upcall, VERSION};
use msock::stack::tcp::connection::{InitialSequence, State, TcpConfig, TcpConnection};
use msock::stack::tcp::isn::IsnGenerator;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, connect, getsockname, recv, send,
    socket, socketpair,
};

/// Control round trips per variant, measured (after [`RTT_WARMUP`]).
const RTT_CALLS: usize = 100_000;
const RTT_WARMUP: usize = 10_000;
/// Interleaved blocks the round-trip calls are split into.
const RTT_BLOCKS: usize = 10;
/// Connections per case, measured (after [`CONN_WARMUP`]).
const CONNS: usize = 2_000;
const CONN_WARMUP: usize = 200;
/// Interleaved blocks the connections are split into.
const CONN_BLOCKS: usize = 4;
/// Connections of the request-counting pass (before the timed ones, while the tables are small
/// enough for `msock stat` to fit one control message).
const COUNT_CONNS: usize = 20;
/// Longest wait for one handshake, or for a peer's EOF.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const MSOCK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const KERNEL_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Kernel listener in `N-b` (active-open cases).
const PEER_PORT: u16 = 7100;
/// msock listener (passive open, held by the netserver).
const MSOCK_PORT: u16 = 7101;
/// Kernel listener in `N-a` (passive open).
const KERNEL_PORT: u16 = 7102;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--seqpacket-echo") {
        if let Err(e) = seqpacket_echo() {
            eprintln!("control --seqpacket-echo: {e}");
            std::process::exit(1);
        }
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("control: needs root (network namespaces); skipped");
        return;
    }
    if let Err(e) = run() {
        eprintln!("control: {e}");
        std::process::exit(1);
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

// ---------------------------------------------------------------------------------------------
// Kernel reference: a trivial echo process on a SOCK_SEQPACKET socketpair (its stdin).

/// Size of the encoded `Connect { remote: None }` request and of the `Ok` reply, so the echo
/// moves the same bytes as the control round trip.
fn message_sizes() -> (usize, usize) {
    let mut req = Vec::new();
    msock::control::codec::encode_request(
        &Request::Connect {
            id: 1,
            remote: None,
        },
        &mut req,
    );
    let mut rep = Vec::new();
    msock::control::codec::encode_reply(&Reply::Ok, &mut rep);
    (req.len(), rep.len())
}

/// `--seqpacket-echo`: answers every message on fd 0 with a reply of the control reply's size,
/// until end of file.
fn seqpacket_echo() -> io::Result<()> {
    let fd = io::stdin().as_raw_fd();
    let (_, reply_len) = message_sizes();
    let reply = vec![0u8; reply_len];
    let mut buf = [0u8; 256];
    loop {
        match recv(fd, &mut buf, MsgFlags::empty()) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                send(fd, &reply, MsgFlags::MSG_NOSIGNAL)?;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up and clean-up.

struct Guard {
    name: String,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = msock::testnet::down(&self.name);
    }
}

fn msock_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("release")
        .join("msock")
}

/// Moves the calling thread into network namespace `ns` (an `ip netns` name); sockets it
/// creates from then on belong there.
fn enter_netns(ns: &str) -> Result<(), String> {
    let file = File::open(format!("/run/netns/{ns}")).map_err(|e| err(ns, e))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| err(&format!("setns {ns}"), e))
}

fn start_netserver(guard: &mut Guard, msock: &PathBuf) -> Result<(), String> {
    let a = format!("{}-a", guard.name);
    let child = support::netns(&a)
        .arg(msock)
        .args([
            "netserver",
            "--iface",
            &format!("{}-a0", guard.name),
            "--addr",
            &format!("{MSOCK}/24"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err("netserver", e))?;
    guard.children.push(child);
    support::wait_for_netserver(&a, msock)
}

// ---------------------------------------------------------------------------------------------
// Talking to the netserver directly.

fn unexpected(reply: Reply) -> String {
    match reply {
        Reply::Error { errno } => format!("netserver: {}", io::Error::from_raw_os_error(errno)),
        other => format!("netserver: unexpected reply {other:?}"),
    }
}

/// A registered control connection (`Hello`), with its upcall socket.
struct Client {
    ctl: Connection,
    upcall: Connection,
}

impl Client {
    fn register() -> Result<Client, String> {
        let ctl =
            Connection::connect(&ControlAddress::from_env()).map_err(|e| err("control", e))?;
        let hello = Request::Hello {
            version: VERSION,
            pid: std::process::id(),
        };
        let (reply, fds) = ctl.call(&hello, &[]).map_err(|e| err("hello", e))?;
        let Reply::Hello { .. } = reply else {
            return Err(unexpected(reply));
        };
        let mut fds = fds.into_iter();
        let (Some(_region), Some(upcall)) = (fds.next(), fds.next()) else {
            return Err("hello reply without its descriptors".into());
        };
        let upcall = Connection::from_fd(upcall);
        upcall.set_nonblocking(true).map_err(|e| err("upcall", e))?;
        Ok(Client { ctl, upcall })
    }

    fn call(
        &self,
        request: &Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), String> {
        self.ctl
            .call(request, fds)
            .map_err(|e| err("control call", e))
    }

    fn socket(&self, kind: SockKind) -> Result<EndpointId, String> {
        match self.call(
            &Request::Socket {
                family: Family::Inet,
                kind,
            },
            &[],
        )? {
            (Reply::Socket { id }, _) => Ok(id),
            (other, _) => Err(unexpected(other)),
        }
    }
}

/// The netserver's total of control requests served (`msock stat`: `control: … requests N`),
/// asked on a fresh unregistered connection; the asking `Stat` counts itself.
fn netserver_requests() -> Result<u64, String> {
    let ctl = Connection::connect(&ControlAddress::from_env()).map_err(|e| err("control", e))?;
    let text = match ctl.call(&Request::Stat { json: false }, &[]) {
        Ok((Reply::Stat { text }, _)) => text,
        Ok((other, _)) => return Err(unexpected(other)),
        Err(e) => return Err(err("stat", e)),
    };
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("control: ")?;
            let mut words = rest.split_whitespace();
            while let Some(w) = words.next() {
                if w == "requests" {
                    return words.next()?.parse().ok();
                }
            }
            None
        })
        .ok_or_else(|| "msock stat: no `control: … requests N` line".to_string())
}

// ---------------------------------------------------------------------------------------------
// 1. Control round trip.

struct RttResults {
    control: Vec<f64>,
    echo: Vec<f64>,
    getsockname: Vec<f64>,
}

fn measure_rtt(me: &PathBuf) -> Result<RttResults, String> {
    let client = Client::register()?;
    let udp = client.socket(SockKind::Datagram)?;
    let request = Request::Connect {
        id: udp,
        remote: None,
    };
    let control_call = || -> Result<(), String> {
        match client.call(&request, &[])? {
            (Reply::Ok, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    };

    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| err("socketpair", e))?;
    let mut echo_child = Command::new(me)
        .arg("--seqpacket-echo")
        .stdin(Stdio::from(theirs))
        .spawn()
        .map_err(|e| err("echo process", e))?;
    let (req_len, rep_len) = message_sizes();
    let out = vec![0x5au8; req_len];
    let mut back = [0u8; 256];
    let fd = ours.as_raw_fd();
    let echo_call = |back: &mut [u8]| -> Result<(), String> {
        send(fd, &out, MsgFlags::MSG_NOSIGNAL).map_err(|e| err("echo send", e))?;
        match recv(fd, back, MsgFlags::empty()) {
            Ok(n) if n == rep_len => Ok(()),
            Ok(n) => Err(format!("echo: {n} bytes back")),
            Err(e) => Err(err("echo recv", e)),
        }
    };

    let udp_sock = std::net::UdpSocket::bind((KERNEL_A, 0)).map_err(|e| err("udp", e))?;
    let udp_fd = udp_sock.as_raw_fd();
    let name_call = || -> Result<(), String> {
        getsockname::<SockaddrIn>(udp_fd)
            .map(|_| ())
            .map_err(|e| err("getsockname", e))
    };

    for _ in 0..RTT_WARMUP {
        control_call()?;
        echo_call(&mut back)?;
        name_call()?;
    }
    let mut r = RttResults {
        control: Vec::with_capacity(RTT_CALLS),
        echo: Vec::with_capacity(RTT_CALLS),
        getsockname: Vec::with_capacity(RTT_CALLS),
    };
    let per_block = RTT_CALLS / RTT_BLOCKS;
    for _ in 0..RTT_BLOCKS {
        for _ in 0..per_block {
            let t = Instant::now();
            control_call()?;
            r.control.push(t.elapsed().as_nanos() as f64);
        }
        for _ in 0..per_block {
            let t = Instant::now();
            echo_call(&mut back)?;
            r.echo.push(t.elapsed().as_nanos() as f64);
        }
        for _ in 0..per_block {
            let t = Instant::now();
            name_call()?;
            r.getsockname.push(t.elapsed().as_nanos() as f64);
        }
    }
    drop(ours);
    let _ = echo_child.wait();
    let _ = client.call(&Request::Close { id: udp }, &[]);
    Ok(r)
}

/// `calls` control round trips (ns) of a fresh client after `warmup` ones, alone.
fn control_rtt(warmup: usize, calls: usize) -> Result<Vec<f64>, String> {
    let client = Client::register()?;
    let udp = client.socket(SockKind::Datagram)?;
    let request = Request::Connect {
        id: udp,
        remote: None,
    };
    let mut samples = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let t = Instant::now();
        match client.call(&request, &[])? {
            (Reply::Ok, _) => {}
            (other, _) => return Err(unexpected(other)),
        }
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as f64);
        }
    }
    let _ = client.call(&Request::Close { id: udp }, &[]);
    Ok(samples)
}

// ---------------------------------------------------------------------------------------------
// 2. Connection set-up.

/// Per-connection set-up times (ns) and the wall time of the whole sequence (set-up and
/// close of every connection).
#[derive(Default)]
struct ConnResults {
    setup: Vec<f64>,
    wall: Duration,
    /// Named parts of each connection's life (ns), where the msock cases break it down.
    phases: Vec<(&'static str, Vec<f64>)>,
    /// When msock connections were handed to the netserver (it holds them through TIME_WAIT).
    handed_over: Vec<Instant>,
}

impl ConnResults {
    fn add(&mut self, other: ConnResults) {
        self.setup.extend(other.setup);
        self.wall += other.wall;
        self.handed_over.extend(other.handed_over);
        for (name, samples) in other.phases {
            match self.phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, all)) => all.extend(samples),
                None => self.phases.push((name, samples)),
            }
        }
    }

    fn phase(&mut self, name: &'static str, ns: f64) {
        match self.phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, all)) => all.push(ns),
            None => self.phases.push((name, vec![ns])),
        }
    }

    fn per_second(&self) -> f64 {
        self.setup.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Kernel listener in `N-b` for the active-open cases: accepts, reads each connection to EOF
/// and closes it, all connections at once in a poll loop (so the listener never lags behind a
/// fast client and overflows its accept queue). Counts how connections ended.
fn peer_server(ns: String, ready: mpsc::Sender<Result<(), String>>, ends: Arc<Ends>) {
    let listener = enter_netns(&ns).and_then(|()| listen_on(SocketAddrV4::new(PEER, PEER_PORT)));
    let listener = match listener {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 512];
    let mut open: Vec<(TcpStream, Instant)> = Vec::new();
    loop {
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            open.iter()
                .map(|(s, _)| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
        );
        if let Err(e) = poll(&mut fds, PollTimeout::from(100u16))
            && e != nix::errno::Errno::EINTR
        {
            return;
        }
        let ready: Vec<bool> = fds
            .iter()
            .skip(1)
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        // Readable connections: read what is there; EOF or an error ends them.
        let mut still = Vec::with_capacity(open.len());
        for ((mut stream, since), is_ready) in open.drain(..).zip(ready) {
            let ended = if is_ready {
                match stream.read(&mut buf) {
                    Ok(0) => Some(true),
                    Ok(_) => None,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        None
                    }
                    Err(_) => Some(false),
                }
            } else if since.elapsed() > STEP_TIMEOUT {
                Some(false)
            } else {
                None
            };
            match ended {
                Some(fin) => ends.record(fin),
                None => still.push((stream, since)),
            }
        }
        open = still;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        open.push((stream, Instant::now()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

/// A kernel listener with the largest accept queue Linux gives (`SOMAXCONN`, 4096), so a
/// listening thread that the scheduler delays cannot make the kernel drop SYNs (std's
/// `TcpListener::bind` asks for 128).
fn listen_on(addr: SocketAddrV4) -> Result<TcpListener, String> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err("listener socket", e))?;
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReuseAddr, &true)
        .map_err(|e| err("SO_REUSEADDR", e))?;
    nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrIn::from(addr))
        .map_err(|e| err("listener bind", e))?;
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::MAXCONN)
        .map_err(|e| err("listen", e))?;
    Ok(TcpListener::from(fd))
}

/// How the kernel peer saw connections end: with a FIN (EOF), or otherwise (reset, timeout).
#[derive(Default)]
struct Ends {
    fin: AtomicU64,
    other: AtomicU64,
}

impl Ends {
    fn record(&self, fin: bool) {
        let counter = if fin { &self.fin } else { &self.other };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (FIN, other), once `expected` connections have ended or [`STEP_TIMEOUT`] passed.
    fn wait_for(&self, expected: u64) -> (u64, u64) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let fin = self.fin.load(Ordering::Relaxed);
            let other = self.other.load(Ordering::Relaxed);
            if fin + other >= expected || Instant::now() >= deadline {
                return (fin, other);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Reads until the peer's FIN (true) or an error or [`STEP_TIMEOUT`] (false).
fn read_to_eof(stream: &mut TcpStream, buf: &mut [u8]) -> bool {
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    loop {
        match stream.read(buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Kernel client in `N-b` for the passive-open cases: for each address it receives, records
/// the time, connects, reports the start time, reads to EOF and closes.
fn peer_client(
    ns: String,
    targets: mpsc::Receiver<SocketAddrV4>,
    starts: mpsc::Sender<Result<Instant, String>>,
    ends: Arc<Ends>,
) {
    if let Err(e) = enter_netns(&ns) {
        let _ = starts.send(Err(e));
        return;
    }
    let mut buf = [0u8; 512];
    for target in targets {
        let t0 = Instant::now();
        match TcpStream::connect_timeout(&target.into(), STEP_TIMEOUT) {
            Ok(mut stream) => {
                if starts.send(Ok(t0)).is_err() {
                    return;
                }
                ends.record(read_to_eof(&mut stream, &mut buf));
            }
            Err(e) => {
                if starts.send(Err(err("peer connect", e))).is_err() {
                    return;
                }
            }
        }
    }
}

fn secret() -> Result<[u8; 16], String> {
    let mut key = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| err("urandom", e))?;
    Ok(key)
}

/// msock active open: `count` connections to the kernel listener in `N-b`.
fn msock_active(
    parent: &TcpSession,
    isn: &IsnGenerator,
    count: usize,
) -> Result<ConnResults, String> {
    let remote = SocketAddrV4::new(PEER, PEER_PORT);
    let mut r = ConnResults::default();
    let wall = Instant::now();
    for _ in 0..count {
        let t0 = Instant::now();
        let mut s = parent.sibling(0).map_err(|e| err("socket+bind", e))?;
        let t_bound = Instant::now();
        s.resolve(PEER).map_err(|e| err("resolve", e))?;
        s.connected(remote).map_err(|e| err("connect request", e))?;
        let t_connect = Instant::now();
        let now = s.now();
        let local = s.local();
        let initial = InitialSequence {
            iss: isn.initial_sequence(local, remote, now),
            ts_offset: isn.timestamp_offset(local, remote),
        };
        let mut conn = TcpConnection::connect(TcpConfig::default(), local, remote, initial, now);
        s.transmit(&mut conn, now).map_err(|e| err("transmit", e))?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while conn.state() == State::SynSent {
            if Instant::now() >= deadline {
                return Err("msock active open: no SYN-ACK".into());
            }
            let wait_ms = conn
                .poll_at()
                .map(|at| {
                    at.saturating_duration_since(s.now())
                        .as_micros()
                        .div_ceil(1000)
                })
                .unwrap_or(100)
                .min(100) as u16;
            if let Some(fd) = s.wake() {
                let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(wait_ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(err("poll", e)),
                }
            }
            let now = s.now();
            s.receive(|src, seg| {
                if src == remote {
                    conn.process(now, seg);
                }
            })
            .map_err(|e| err("receive", e))?;
            s.transmit(&mut conn, now).map_err(|e| err("transmit", e))?;
        }
        if conn.state() != State::Established {
            return Err(format!("msock active open ended in {}", conn.state()));
        }
        let t1 = Instant::now();
        r.setup.push((t1 - t0).as_nanos() as f64);
        let now = s.now();
        conn.close(now);
        s.hand_over(&conn, now).map_err(|e| err("hand over", e))?;
        let t_handed = Instant::now();
        r.handed_over.push(t_handed);
        drop(s);
        let t_dropped = Instant::now();
        r.phase(
            "Socket + Bind (channel mapped)",
            (t_bound - t0).as_nanos() as f64,
        );
        r.phase("Connect request", (t_connect - t_bound).as_nanos() as f64);
        r.phase(
            "handshake (SYN to ACK sent)",
            (t1 - t_connect).as_nanos() as f64,
        );
        r.phase("close + HandOver", (t_handed - t1).as_nanos() as f64);
        r.phase(
            "channel closed (unmap, close)",
            (t_dropped - t_handed).as_nanos() as f64,
        );
    }
    r.wall = wall.elapsed();
    Ok(r)
}

/// Kernel active open from 198.18.0.3: `socket` + `connect`, then `close`.
fn kernel_active(count: usize) -> Result<ConnResults, String> {
    let remote = SockaddrIn::from(SocketAddrV4::new(PEER, PEER_PORT));
    let mut r = ConnResults::default();
    let wall = Instant::now();
    for _ in 0..count {
        let t0 = Instant::now();
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err("socket", e))?;
        connect(fd.as_raw_fd(), &remote).map_err(|e| err("kernel connect", e))?;
        r.setup.push(t0.elapsed().as_nanos() as f64);
        drop(fd);
    }
    r.wall = wall.elapsed();
    Ok(r)
}

/// An accepted msock connection: its endpoint, channel and engine.
type Accepted = (EndpointId, PacketChannel, TcpConnection);

/// Named instants in an accept, each ending the phase of that name (the first phase starts at
/// the client's `connect`).
type Marks = Vec<(&'static str, Instant)>;

/// The netserver's listener on [`MSOCK_PORT`], driven with the control protocol.
struct MsockListener {
    client: Client,
    id: EndpointId,
    epoch: Instant,
}

impl MsockListener {
    fn open() -> Result<MsockListener, String> {
        let client = Client::register()?;
        let id = client.socket(SockKind::Stream)?;
        let bind = Request::Bind {
            id,
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MSOCK_PORT),
            reuse_addr: false,
            reuse_port: false,
        };
        match client.call(&bind, &[])? {
            (Reply::Bound { .. }, _) => {}
            (other, _) => return Err(unexpected(other)),
        }
        match client.call(&Request::Listen { id, backlog: 128 }, &[])? {
            (Reply::Ok, _) => {}
            (other, _) => return Err(unexpected(other)),
        }
        Ok(MsockListener {
            client,
            id,
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> msock::stack::Instant {
        msock::stack::Instant::from_micros(self.epoch.elapsed().as_micros() as u64 + 1_000_000)
    }

    /// Waits for `Upcall::Acceptable`, then `Accept`s; returns the new endpoint, its channel and
    /// its engine (the state a libmsock `accept` returns with).
    fn accept(&self) -> Result<(Accepted, Marks), String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        // Without an upcall for a while, ask anyway (an upcall lost to a full socket).
        let mut quiet = false;
        loop {
            let mut acceptable = quiet;
            loop {
                match self.client.upcall.recv_upcall() {
                    Ok(Upcall::Acceptable { id, .. }) if id == self.id => acceptable = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err("upcall", e)),
                }
            }
            if acceptable {
                let upcall_at = Instant::now();
                match self.client.call(&Request::Accept { id: self.id }, &[])? {
                    (Reply::Accepted { id, ring, len, .. }, fds) => {
                        let mut fds = fds.into_iter();
                        let (Some(channel), Some(image)) = (fds.next(), fds.next()) else {
                            return Err("accept reply without its descriptors".into());
                        };
                        let mut bytes = vec![0u8; len as usize];
                        // The netserver's write left the shared file offset at the end.
                        File::from(image)
                            .read_exact_at(&mut bytes, 0)
                            .map_err(|e| err("image", e))?;
                        let conn = TcpConnection::import(&bytes, self.now())
                            .map_err(|e| format!("image: {e:?}"))?;
                        let channel =
                            PacketChannel::from_fd(channel, ring).map_err(|e| err("channel", e))?;
                        let marks = vec![
                            ("connect to Acceptable upcall seen", upcall_at),
                            (
                                "Accept request, channel mapped, image imported",
                                Instant::now(),
                            ),
                        ];
                        return Ok(((id, channel, conn), marks));
                    }
                    (Reply::Error { errno }, _) if errno == libc::EAGAIN => {}
                    (other, _) => return Err(unexpected(other)),
                }
            }
            if Instant::now() >= deadline {
                return Err("msock accept: nothing to accept".into());
            }
            let mut fds = [PollFd::new(self.client.upcall.as_fd(), PollFlags::POLLIN)];
            quiet = match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(n) => n == 0,
                Err(nix::errno::Errno::EINTR) => false,
                Err(e) => return Err(err("poll", e)),
            };
        }
    }

    /// `close()` of an accepted connection: FIN queued, the connection handed to the netserver.
    fn close(&self, id: EndpointId, mut conn: TcpConnection) -> Result<(), String> {
        let now = self.now();
        conn.close(now);
        let image = conn.export(now);
        let fd = nix::sys::memfd::memfd_create(
            c"msock-bench-handover",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(|e| err("memfd", e))?;
        let mut file = File::from(fd);
        file.write_all(&image).map_err(|e| err("memfd", e))?;
        let request = Request::HandOver {
            id,
            len: image.len() as u64,
        };
        match self.client.call(&request, &[file.as_fd()])? {
            (Reply::Ok, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }
}

/// Passive open: `count` connections from the kernel client in `N-b` to `target`, accepted by
/// `accept` and closed by `close`.
fn passive<C>(
    count: usize,
    target: SocketAddrV4,
    peer: &(
        mpsc::Sender<SocketAddrV4>,
        mpsc::Receiver<Result<Instant, String>>,
    ),
    mut accept: impl FnMut() -> Result<(C, Marks), String>,
    mut close: impl FnMut(C) -> Result<(), String>,
) -> Result<ConnResults, String> {
    let mut r = ConnResults::default();
    let wall = Instant::now();
    for _ in 0..count {
        peer.0.send(target).map_err(|e| err("peer client", e))?;
        let (accepted, marks) = accept()?;
        let t1 = Instant::now();
        let t0 = peer
            .1
            .recv_timeout(STEP_TIMEOUT)
            .map_err(|e| err("peer client", e))??;
        r.setup
            .push(t1.saturating_duration_since(t0).as_nanos() as f64);
        close(accepted)?;
        if !marks.is_empty() {
            let mut last = t0;
            for (name, at) in marks {
                r.phase(name, at.saturating_duration_since(last).as_nanos() as f64);
                last = at;
            }
            r.phase(
                "close + HandOver, channel closed",
                t1.elapsed().as_nanos() as f64,
            );
            r.handed_over.push(Instant::now());
        }
    }
    r.wall = wall.elapsed();
    Ok(r)
}

struct SetupResults {
    msock_active: ConnResults,
    kernel_active: ConnResults,
    msock_passive: ConnResults,
    kernel_passive: ConnResults,
    /// Control requests per connection (netserver counter), active and passive.
    requests: (f64, f64),
    /// Connections the kernel peer saw end with a FIN / otherwise, as listener (active-open
    /// cases) and as client (passive-open cases), msock and kernel rows together.
    server_ends: (u64, u64),
    client_ends: (u64, u64),
    /// Connections made in all (warm-up and counting included), listener side and client side.
    made: (u64, u64),
    /// msock connections handed over less than TIME_WAIT ago (a lower bound of what the
    /// netserver holds) when [`SetupResults::rtt_loaded`] was measured.
    held: usize,
    /// Control round trips (ns) after the set-up runs.
    rtt_loaded: Vec<f64>,
}

fn measure_setup(ns_b: &str) -> Result<SetupResults, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns_b.to_string();
    let server_ends = Arc::new(Ends::default());
    let ends = server_ends.clone();
    std::thread::spawn(move || peer_server(ns, ready_tx, ends));
    ready_rx.recv().map_err(|e| err("peer server", e))??;
    let (target_tx, target_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel();
    let ns = ns_b.to_string();
    let client_ends = Arc::new(Ends::default());
    let ends = client_ends.clone();
    std::thread::spawn(move || peer_client(ns, target_rx, start_tx, ends));
    let peer = (target_tx, start_rx);

    let isn = IsnGenerator::new(secret()?);
    // The registered client whose siblings make the connections (`Hello` and the routing
    // region's mapping are per process, not per connection).
    let parent = TcpSession::open(0).map_err(|e| err("msock session", e))?;
    let listener = MsockListener::open()?;
    let kernel_listener =
        TcpListener::bind((KERNEL_A, KERNEL_PORT)).map_err(|e| err("kernel listener", e))?;
    let msock_target = SocketAddrV4::new(MSOCK, MSOCK_PORT);
    let kernel_target = SocketAddrV4::new(KERNEL_A, KERNEL_PORT);

    let msock_passive = |n: usize| {
        passive(
            n,
            msock_target,
            &peer,
            || listener.accept(),
            |(id, channel, conn)| {
                let closed = listener.close(id, conn);
                drop(channel);
                closed
            },
        )
    };
    let kernel_passive = |n: usize| {
        passive(
            n,
            kernel_target,
            &peer,
            || {
                kernel_listener
                    .accept()
                    .map(|(s, _)| (s, Vec::new()))
                    .map_err(|e| err("kernel accept", e))
            },
            |stream| {
                drop(stream);
                Ok(())
            },
        )
    };

    // Warm-up (ARP, caches, code paths), then the counting pass.
    msock_active(&parent, &isn, CONN_WARMUP)?;
    kernel_active(CONN_WARMUP)?;
    msock_passive(CONN_WARMUP)?;
    kernel_passive(CONN_WARMUP)?;
    let before = netserver_requests()?;
    msock_active(&parent, &isn, COUNT_CONNS)?;
    let between = netserver_requests()?;
    msock_passive(COUNT_CONNS)?;
    let after = netserver_requests()?;
    // Each reading's own `Stat` is counted in the next one.
    let per = |a: u64, b: u64| (b.saturating_sub(a).saturating_sub(1)) as f64 / COUNT_CONNS as f64;
    let requests = (per(before, between), per(between, after));

    let mut r = SetupResults {
        msock_active: ConnResults::default(),
        kernel_active: ConnResults::default(),
        msock_passive: ConnResults::default(),
        kernel_passive: ConnResults::default(),
        requests,
        server_ends: (0, 0),
        client_ends: (0, 0),
        made: (0, 0),
        held: 0,
        rtt_loaded: Vec::new(),
    };
    let per_block = CONNS / CONN_BLOCKS;
    for _ in 0..CONN_BLOCKS {
        r.msock_active.add(msock_active(&parent, &isn, per_block)?);
        r.kernel_active.add(kernel_active(per_block)?);
        r.msock_passive.add(msock_passive(per_block)?);
        r.kernel_passive.add(kernel_passive(per_block)?);
    }
    let made = (2 * (CONN_WARMUP + CONNS) + COUNT_CONNS) as u64;
    r.made = (made, made);
    r.server_ends = server_ends.wait_for(made);
    r.client_ends = client_ends.wait_for(made);
    // The control round trip again, now that the netserver holds many connections.
    let now = Instant::now();
    let time_wait = std::time::Duration::from_micros(TcpConfig::default().time_wait.as_micros());
    r.held = r
        .msock_active
        .handed_over
        .iter()
        .chain(&r.msock_passive.handed_over)
        .filter(|at| now.duration_since(**at) < time_wait)
        .count();
    r.rtt_loaded = control_rtt(RTT_WARMUP / 5, RTT_CALLS / 5)?;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Report.

/// The longest sample (ms) and the number above 100 ms.
fn slowest(samples: &[f64]) -> String {
    let max = samples.iter().copied().fold(0.0, f64::max);
    let slow = samples.iter().filter(|&&ns| ns > 100e6).count();
    format!("{:.1} ({slow})", max / 1e6)
}

/// A ratio with the precision its size needs; below 0.1 as a fraction (`1/1200`).
fn ratio(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 0.1 {
        format!("{x:.2}")
    } else if x > 0.0 {
        format!("1/{:.0}", 1.0 / x)
    } else {
        "–".into()
    }
}

fn us(ns: f64) -> String {
    format!("{:.1}", ns / 1e3)
}

fn run() -> Result<(), String> {
    let msock = msock_binary();
    if !msock.is_file() {
        return Err(format!("build first (make build): {}", msock.display()));
    }
    let me = std::env::current_exe().map_err(|e| err("current_exe", e))?;
    let name = format!("ctl{}", std::process::id() % 100_000);
    msock::testnet::up(&name).map_err(|e| err("testnet", e))?;
    let mut guard = Guard {
        name: name.clone(),
        children: Vec::new(),
    };
    start_netserver(&mut guard, &msock)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();

    let ns_a = format!("{name}-a");
    let ns_b = format!("{name}-b");
    // The measuring thread lives in `N-a` (the netserver's control socket is an abstract name
    // of that namespace); this thread stays where it was, for the clean-up.
    let worker = std::thread::spawn(move || -> Result<(RttResults, SetupResults), String> {
        enter_netns(&ns_a)?;
        let rtt = measure_rtt(&me)?;
        let setup = measure_setup(&ns_b)?;
        Ok((rtt, setup))
    });
    let (rtt, setup) = worker
        .join()
        .map_err(|_| "measuring thread panicked".to_string())??;
    drop(guard);

    // 1. Round trip.
    let ctl_med = support::median(&rtt.control);
    let loaded_med = support::median(&setup.rtt_loaded);
    let echo_med = support::median(&rtt.echo);
    let name_med = support::median(&rtt.getsockname);
    println!(
        "control round trip: median {} µs p99 {} µs | seqpacket echo median {} µs p99 {} µs | getsockname median {} µs p99 {} µs | ratio {:.2} / {:.1}",
        us(ctl_med),
        us(support::p99(&rtt.control)),
        us(echo_med),
        us(support::p99(&rtt.echo)),
        us(name_med),
        us(support::p99(&rtt.getsockname)),
        ctl_med / echo_med,
        ctl_med / name_med,
    );
    let (req_len, rep_len) = message_sizes();
    let rtt_table = support::Table {
        header: vec![
            "operation".into(),
            "median (µs)".into(),
            "p99 (µs)".into(),
            "msock / this, median".into(),
        ],
        rows: vec![
            vec![
                format!(
                    "msock control round trip (`Connect {{ remote: None }}` on a UDP endpoint, {req_len} B request, {rep_len} B reply)"
                ),
                us(ctl_med),
                us(support::p99(&rtt.control)),
                "1.00".into(),
            ],
            vec![
                format!(
                    "kernel: SOCK_SEQPACKET socketpair echo to a process ({req_len} B / {rep_len} B)"
                ),
                us(echo_med),
                us(support::p99(&rtt.echo)),
                ratio(ctl_med / echo_med),
            ],
            vec![
                "kernel: `getsockname(2)` on a UDP socket".into(),
                format!("{:.2}", name_med / 1e3),
                format!("{:.2}", support::p99(&rtt.getsockname) / 1e3),
                ratio(ctl_med / name_med),
            ],
            vec![
                format!(
                    "msock control round trip again after the set-up runs, the netserver holding ≥ {} connections in TIME_WAIT ({} calls)",
                    setup.held,
                    setup.rtt_loaded.len()
                ),
                us(loaded_med),
                us(support::p99(&setup.rtt_loaded)),
                format!("{} vs the echo", ratio(loaded_med / echo_med)),
            ],
        ],
    };
    println!(
        "control round trip with >= {} connections held: median {} µs p99 {} µs",
        setup.held,
        us(loaded_med),
        us(support::p99(&setup.rtt_loaded))
    );

    // 2. Set-up.
    let row = |case: &str, m: &ConnResults, k: &ConnResults, requests: f64| {
        let (mm, km) = (support::median(&m.setup), support::median(&k.setup));
        let (mp, kp) = (support::p99(&m.setup), support::p99(&k.setup));
        println!(
            "{case}: msock median {} µs p99 {} µs {:.0} conn/s | kernel median {} µs p99 {} µs {:.0} conn/s | {requests:.1} requests/conn | slowest {} / {}",
            us(mm),
            us(mp),
            m.per_second(),
            us(km),
            us(kp),
            k.per_second(),
            slowest(&m.setup),
            slowest(&k.setup),
        );
        vec![
            case.to_string(),
            format!("{} / {}", us(mm), us(km)),
            ratio(mm / km),
            format!("{} / {}", us(mp), us(kp)),
            ratio(mp / kp),
            format!("{:.0} / {:.0}", m.per_second(), k.per_second()),
            ratio(m.per_second() / k.per_second()),
            format!("{requests:.1}"),
            format!("{} / {}", slowest(&m.setup), slowest(&k.setup)),
        ]
    };
    let mut phase_rows = Vec::new();
    for (case, results) in [
        ("active open", &setup.msock_active),
        ("passive open", &setup.msock_passive),
    ] {
        for (name, samples) in &results.phases {
            println!(
                "  msock {case}, {name}: median {} µs p99 {} µs",
                us(support::median(samples)),
                us(support::p99(samples))
            );
            phase_rows.push(vec![
                format!("{case}: {name}"),
                us(support::median(samples)),
                us(support::p99(samples)),
            ]);
        }
    }
    let phase_table = support::Table {
        header: vec![
            "msock phase".into(),
            "median (µs)".into(),
            "p99 (µs)".into(),
        ],
        rows: phase_rows,
    };
    println!(
        "kernel peer saw FIN on {}/{} accepted ({} other) and {}/{} connected ({} other)",
        setup.server_ends.0,
        setup.made.0,
        setup.server_ends.1,
        setup.client_ends.0,
        setup.made.1,
        setup.client_ends.1
    );
    let setup_table = support::Table {
        header: vec![
            "case".into(),
            "set-up median µs (msock / kernel)".into(),
            "ratio".into(),
            "set-up p99 µs (msock / kernel)".into(),
            "ratio".into(),
            "connections/s, open + close (msock / kernel)".into(),
            "ratio".into(),
            "control requests per connection".into(),
            "slowest set-up ms, and how many > 100 ms (msock / kernel)".into(),
        ],
        rows: vec![
            row(
                "active open (connect) to a kernel listener in N-b",
                &setup.msock_active,
                &setup.kernel_active,
                setup.requests.0,
            ),
            row(
                "passive open (accept) of a kernel client in N-b",
                &setup.msock_passive,
                &setup.kernel_passive,
                setup.requests.1,
            ),
        ],
    };

    let body = format!(
        "Control-path costs of the netserver, all rows from one run on one machine (`msock testnet` \
         namespaces, netserver in `N-a` at 198.18.0.2, `N-a`'s kernel at 198.18.0.3, the kernel \
         peer in `N-b`). Load average at start: {load}.\n\n\
         **Control round trip**: {RTT_CALLS} calls per row after {RTT_WARMUP} warm-up, in \
         {RTT_BLOCKS} interleaved blocks, each call timed alone (`Instant::now` pairs included). \
         The request is `Connect {{ id, remote: None }}` on an unbound UDP endpoint, which the \
         netserver answers with bookkeeping only (endpoint look-up, remote cleared), sent with \
         `control::transport::Connection::call` as libmsock sends it; the kernel rows are the \
         same-sized message over a SOCK_SEQPACKET socketpair to a process that echoes it \
         (blocking `recv`/`send`), and a cheap socket syscall. The last row repeats the \
         round trip after the connection runs below, with the netserver holding the closed \
         connections through TIME_WAIT (60 s).\n\n\
         {rtt}\n\
         **Connection set-up**: {CONNS} sequential connections per row after {CONN_WARMUP} \
         warm-up, in {CONN_BLOCKS} interleaved blocks, every connection closed gracefully. \
         *Active open*: msock is a sibling `TcpSession` of one registered client (`Socket` + \
         `Bind` to an ephemeral port, which maps the port's AF_PACKET channel), the next hop \
         from the routing region, `Connect`, and the engine's handshake over the channel, timed \
         until ESTABLISHED with the ACK sent; then `close()` + `HandOver` (the netserver sends \
         the FIN and holds TIME_WAIT, as the kernel does after `close`). The kernel row is \
         `socket` + `connect` from 198.18.0.3, then `close`; the listener in `N-b` reads to EOF \
         and closes. *Passive open*: a kernel client in `N-b` connects; timed from its \
         `connect` call to the server holding the accepted connection. msock: one endpoint \
         `Listen`ing at the netserver (which runs the handshake); per connection the server \
         waits for the `Acceptable` upcall and sends `Accept` (the connection's channel and \
         engine image come back, the channel is mapped, the image imported), then `close()` + \
         `HandOver`; kernel: blocking `accept` on a listener at 198.18.0.3, then `close`. \
         Connections/s is the whole open-and-close sequence. Control requests per connection \
         are the netserver's own count (`msock stat`, `control: … requests`) over a pass of \
         {COUNT_CONNS} connections. The kernel peer saw {server_fin} of {made_server} \
         connections it accepted and {client_fin} of {made_client} it made end with a FIN \
         (warm-up and counting passes included; the rest: {server_other} and {client_other}).\n\n\
         {setup}\n\
         Where the msock connections spend their time (same runs; the set-up columns above end \
         with the handshake or the accept, the later phases count in connections/s only):\n\n\
         {phases}\n\
         Each connection's AF_PACKET channel costs RCU grace periods in the kernel \
         (`synchronize_net`, 10–25 ms) when its ring is set up and again when it is closed. \
         Neither is on these paths: the netserver's pool makes channels ahead of demand \
         (more maker threads while it is drained fast, since concurrent makers share grace \
         periods), and dropping a channel hands the unmap and close to background closer \
         threads (`channel::closer`); the netserver's own channel is TPACKET_V2, so a SYN or \
         a handshake ACK wakes it at once rather than when a V3 block retires. The pool and \
         closer counters are in `msock stat` (`channel-pool`, `channel-closer`).",
        server_fin = setup.server_ends.0,
        server_other = setup.server_ends.1,
        client_fin = setup.client_ends.0,
        client_other = setup.client_ends.1,
        made_server = setup.made.0,
        made_client = setup.made.1,
        load = load.join(" "),
        phases = phase_table.to_markdown(),
        rtt = rtt_table.to_markdown(),
        setup = setup_table.to_markdown(),
    );
    support::write_section_markdown(
        "control",
        &body,
        "make build && cargo bench --bench control  # as root",
    )
    .map_err(|e| err("BENCHMARKS.md", e))?;
    Ok(())
}
