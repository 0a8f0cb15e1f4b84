//! Single-flow TCP goodput over the testnet: msock vs the kernel stack, same run, same link.
//!
//! Topology: `msock testnet` namespaces at MTU 1500 (offloads off, so every frame is a real
//! 1500 B frame); the kernel peer in `N-b` (198.18.0.1), a netserver in `N-a` owning 198.18.0.2
//! and `N-a`'s kernel owning 198.18.0.3. Four cases, each [`REPS`] times, interleaved:
//!
//! - send, msock: `msock tcp connect 198.18.0.1:P` in `N-a`, stdin a sparse file of [`VOLUME`]
//!   zero bytes, into a kernel receiver in `N-b` (this binary's `--sink` role: reads and counts);
//! - send, kernel: this binary's `--source` role in `N-a` bound to .3, into the same receiver;
//! - receive, msock: a kernel `--source` in `N-b` into `msock tcp listen P` in `N-a`, output to
//!   /dev/null;
//! - receive, kernel: the same source into a `--sink` in `N-a` bound to .3.
//!
//! The kernel of `N-b` measures every row: sending, its sink counts the bytes read from the
//! first byte to EOF; receiving, its source counts from the established connection until every
//! byte it wrote is acknowledged (`SIOCOUTQ` 0). Both stop at [`CAP`] (a slow run reports what
//! got through in [`CAP`]). CPU is
//! the `N-a` endpoint process's user+system time (`wait4` rusage) over the transfer time, and
//! for msock the netserver's CPU time during the run (`/proc/PID/stat`). The same four cases run
//! once more over `msock testnet up --impair delay=5ms,seed=1` (10 ms RTT through the link
//! emulator) with 4 MiB socket buffers on the msock side, to show window scaling. Needs root;
//! writes the `tcp_throughput` section of BENCHMARKS.md. Every namespace, process and file it
//! creates carries this process's pid and is removed on exit, also on error or panic.

#[path = "support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes each transfer offers (the sender stops earlier when [`CAP`] ends the measurement).
const VOLUME: u64 = 1 << 30;
/// Longest measured transfer, from the first byte at the receiver.
const CAP: Duration = Duration::from_secs(4);
/// How long a receiver waits for the first byte (connection set-up included).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to exit on its own after the measurement before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// Repetitions of each case on the plain testnet (the median is reported).
const REPS: usize = 3;
/// Repetitions of each case over the 10 ms RTT emulator.
const REPS_DELAY: usize = 1;
/// Impairment of the window-scaling row: 5 ms each way.
const DELAY_SPEC: &str = "delay=5ms,seed=1";
/// msock socket buffers for the 10 ms RTT row (≥ the bandwidth-delay product of 1 Gbit/s).
const DELAY_BUFFER: usize = 4 << 20;
/// Read/write chunk of the bench's own sources and sinks.
const CHUNK: usize = 256 << 10;
/// msock's TIME_WAIT (ms), so an actively closing `msock tcp` exits and prints `--info` soon
/// after the transfer (the transfer itself is unaffected).
const TIME_WAIT_MS: u64 = 10;
/// First TCP port; every run takes the next one (no TIME_WAIT collisions).
const BASE_PORT: u16 = 9300;

const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const MSOCK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const KERNEL_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let role = match args.get(1).map(String::as_str) {
        Some("--sink") => Some(sink_role(&args[2..])),
        Some("--source") => Some(source_role(&args[2..])),
        _ => None,
    };
    if let Some(result) = role {
        if let Err(e) = result {
            eprintln!("tcp_throughput {}: {e}", args[1]);
            std::process::exit(1);
        }
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tcp_throughput: needs root (network namespaces); skipped");
        return;
    }
    if let Err(e) = run() {
        eprintln!("tcp_throughput: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Roles run inside the namespaces (this binary, re-executed).

/// `--sink BIND`: listens, prints `ready`, accepts one connection, counts what arrives until EOF
/// or [`CAP`], prints `result BYTES NANOS`, closes.
fn sink_role(args: &[String]) -> io::Result<()> {
    let bind: SocketAddr = parse_arg(args.first())?;
    let listener = TcpListener::bind(bind)?;
    println!("ready");
    io::stdout().flush()?;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let wait = FIRST_BYTE_TIMEOUT.as_millis() as i32;
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, wait) } != 1 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
    }
    let (stream, _) = listener.accept()?;
    let (bytes, elapsed) = count_until_eof(stream.as_raw_fd(), CAP, FIRST_BYTE_TIMEOUT)?;
    println!("result {bytes} {}", elapsed.as_nanos());
    io::stdout().flush()?;
    drop(stream);
    Ok(())
}

/// `--source BIND_IP DEST BYTES`: connects from BIND_IP (retrying while the listener is not up
/// yet), writes BYTES zero bytes or as many as [`CAP`] allows, waits until the peer acknowledged
/// everything (`SIOCOUTQ` 0, or [`CAP`] ran out), prints `result ACKED_BYTES NANOS` (from the
/// established connection to the last acknowledgement), half-closes and waits for the peer's FIN.
fn source_role(args: &[String]) -> io::Result<()> {
    let bind: Ipv4Addr = parse_arg(args.first())?;
    let dest: SocketAddrV4 = parse_arg(args.get(1))?;
    let volume: u64 = parse_arg(args.get(2))?;
    let deadline = Instant::now() + FIRST_BYTE_TIMEOUT;
    let mut stream = loop {
        match connect_from(bind, dest) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e),
        }
    };
    let start = Instant::now();
    let end = start + CAP;
    let chunk = vec![0u8; CHUNK];
    let mut written = 0u64;
    while written < volume && Instant::now() < end {
        let n = (volume - written).min(CHUNK as u64) as usize;
        stream.write_all(&chunk[..n])?;
        written += n as u64;
    }
    let unacked = loop {
        let mut outq: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int.
        if unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut outq) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if outq <= 0 || Instant::now() >= end {
            break outq.max(0) as u64;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let elapsed = start.elapsed().min(CAP);
    println!("result {} {}", written - unacked, elapsed.as_nanos());
    io::stdout().flush()?;
    // After the result the end does not matter: a receiver cut short by [`CAP`] resets.
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).is_ok_and(|n| n > 0) {}
    Ok(())
}

/// A TCP connection from `bind`:0 to `dest`.
fn connect_from(bind: Ipv4Addr, dest: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream below (or closed).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let stream: TcpStream = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sin(SocketAddrV4::new(bind, 0));
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd, (&raw const local).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sin(dest);
    // SAFETY: `remote` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::connect(fd, (&raw const remote).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn parse_arg<T: FromStr>(arg: Option<&String>) -> io::Result<T> {
    arg.and_then(|a| a.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad argument {arg:?}")))
}

/// Reads `fd` until EOF, or until `cap` after the first byte; returns the bytes read and the time
/// from the first byte's arrival to the last read. Fails if nothing arrives within
/// `first_timeout`.
fn count_until_eof(
    fd: RawFd,
    cap: Duration,
    first_timeout: Duration,
) -> io::Result<(u64, Duration)> {
    let mut buf = vec![0u8; 1 << 20];
    let begin = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = begin;
    let mut bytes = 0u64;
    loop {
        let now = Instant::now();
        let deadline = match first {
            Some(f) => f + cap,
            None => begin + first_timeout,
        };
        if now >= deadline {
            if first.is_none() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no data arrived"));
            }
            break;
        }
        let wait = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, wait) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        let ready = Instant::now();
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        first.get_or_insert(ready);
        bytes += n as u64;
        last = Instant::now();
    }
    let start = first.unwrap_or(begin);
    Ok((bytes, last.saturating_duration_since(start)))
}

// ---------------------------------------------------------------------------------------------
// Processes and clean-up.

/// A child process reaped with `wait4` (for its rusage); killed and reaped on drop.
struct Proc {
    what: String,
    child: Child,
    reaped: bool,
}

/// How a process ended.
struct Exit {
    /// `wait4` status word.
    status: i32,
    /// User + system CPU time.
    cpu: Duration,
    killed_by_us: bool,
}

impl Proc {
    fn spawn(what: &str, cmd: &mut Command) -> Result<Proc, String> {
        let child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
        Ok(Proc {
            what: what.to_string(),
            child,
            reaped: false,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits up to `grace` for the process to exit, then SIGKILLs it; reaps it either way.
    fn finish(&mut self, grace: Duration) -> Result<Exit, String> {
        let deadline = Instant::now() + grace;
        let mut killed = false;
        loop {
            let mut status = 0;
            // SAFETY: zeroed rusage is a valid out-parameter.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let flags = if killed { 0 } else { libc::WNOHANG };
            // SAFETY: our own child; valid out-pointers.
            let r = unsafe { libc::wait4(self.pid(), &mut status, flags, &mut usage) };
            if r == self.pid() {
                self.reaped = true;
                let tv = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
                };
                return Ok(Exit {
                    status,
                    cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
                    killed_by_us: killed,
                });
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("{}: wait4: {e}", self.what));
                }
                continue;
            }
            if !killed && Instant::now() >= deadline {
                let _ = self.child.kill();
                killed = true;
                continue;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.finish(Duration::ZERO);
        }
    }
}

/// A testnet with a netserver; both torn down on drop.
struct Net {
    name: String,
    netserver: Option<Proc>,
}

impl Net {
    fn up(name: &str, msock: &Path, impair: Option<&str>) -> Result<Net, String> {
        let impair = impair
            .map(msock::testnet::ImpairSpec::from_str)
            .transpose()
            .map_err(|e| e.to_string())?;
        let options = msock::testnet::UpOptions {
            impair,
            nft_drop: None,
            msock_bin: Some(msock.to_path_buf()),
        };
        msock::testnet::up_with(name, &options).map_err(|e| format!("testnet: {e}"))?;
        let mut net = Net {
            name: name.to_string(),
            netserver: None,
        };
        let mut cmd = support::netns(&net.ns_a());
        cmd.arg(msock)
            .args([
                "netserver",
                "--iface",
                &format!("{name}-a0"),
                "--addr",
                &format!("{MSOCK}/24"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        net.netserver = Some(Proc::spawn("netserver", &mut cmd)?);
        for _ in 0..100 {
            let ok = support::netns(&net.ns_a())
                .arg(msock)
                .arg("stat")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if ok.map(|s| s.success()).unwrap_or(false) {
                return Ok(net);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("netserver did not come up".into())
    }

    fn ns_a(&self) -> String {
        format!("{}-a", self.name)
    }

    fn ns_b(&self) -> String {
        format!("{}-b", self.name)
    }

    /// The netserver's CPU time so far (`/proc/PID/stat` utime + stime).
    fn netserver_cpu(&self) -> Option<Duration> {
        proc_cpu(self.netserver.as_ref()?.pid())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        drop(self.netserver.take());
        let _ = msock::testnet::down(&self.name);
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn proc_cpu(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// Busy time of all CPUs since boot (`/proc/stat` line `cpu`).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(busy * 1_000_000_000 / hz))
}

// ---------------------------------------------------------------------------------------------
// The measurements.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    /// `N-a` sends to the kernel peer in `N-b`.
    Send,
    /// The kernel peer in `N-b` sends to `N-a`.
    Receive,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stack {
    Msock,
    Kernel,
}

/// One transfer's figures.
#[derive(Clone, Debug)]
struct Sample {
    bytes: u64,
    elapsed: Duration,
    /// CPU time of the `N-a` endpoint process (msock, or the kernel-stack program).
    cpu: Duration,
    /// CPU time of the netserver during the run (msock only).
    netserver_cpu: Option<Duration>,
    /// Busy time of all CPUs during the run (`/proc/stat`: user, nice, system, irq, softirq,
    /// steal): both stacks' work wherever the kernel charged it, and anything else running.
    machine_cpu: Option<Duration>,
    /// Segments the sender retransmitted (msock `--info`, or the sending kernel's
    /// `RetransSegs`).
    retransmits: Option<u64>,
    /// What msock printed on stderr (`--info`).
    info: String,
}

impl Sample {
    fn gbits(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// What every run needs.
struct Ctx {
    me: PathBuf,
    msock: PathBuf,
    zeros: PathBuf,
    port: u16,
}

impl Ctx {
    fn next_port(&mut self) -> u16 {
        self.port += 1;
        self.port
    }
}

/// Reads a child's pipe to a string in a thread (so the child never blocks on it).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// Starts a `--sink` in `ns` on `bind` and waits for its `ready`.
fn start_sink(
    ctx: &Ctx,
    ns: &str,
    bind: SocketAddrV4,
) -> Result<(Proc, BufReader<ChildStdout>), String> {
    let mut cmd = support::netns(ns);
    cmd.arg(&ctx.me)
        .args(["--sink", &bind.to_string()])
        .stdout(Stdio::piped());
    let mut sink = Proc::spawn("kernel sink", &mut cmd)?;
    let stdout = sink.child.stdout.take().ok_or("sink: no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("sink: {e}"))?;
    if line.trim() != "ready" {
        return Err(format!("sink did not start: {line:?}"));
    }
    Ok((sink, reader))
}

/// Reads a role's `result BYTES NANOS` line.
fn read_result(what: &str, reader: &mut BufReader<ChildStdout>) -> Result<(u64, Duration), String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("{what}: {e}"))?;
    let mut it = line.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some("result"), Some(b), Some(ns)) => {
            let bytes = b
                .parse()
                .map_err(|_| format!("{what}: bad line {line:?}"))?;
            let ns: u64 = ns
                .parse()
                .map_err(|_| format!("{what}: bad line {line:?}"))?;
            Ok((bytes, Duration::from_nanos(ns)))
        }
        _ => Err(format!("{what} failed (output {line:?})")),
    }
}

fn source_cmd(ctx: &Ctx, ns: &str, bind: Ipv4Addr, dest: SocketAddrV4) -> Command {
    let mut cmd = support::netns(ns);
    cmd.arg(&ctx.me)
        .args([
            "--source",
            &bind.to_string(),
            &dest.to_string(),
            &VOLUME.to_string(),
        ])
        .stdout(Stdio::null());
    cmd
}

fn msock_cmd(ctx: &Ctx, net: &Net, args: &[String], buffers: Option<usize>) -> Command {
    let mut cmd = support::netns(&net.ns_a());
    cmd.arg(&ctx.msock).args(["tcp"]).arg(&args[0]).args([
        "--info",
        "--time-wait-ms",
        &TIME_WAIT_MS.to_string(),
    ]);
    if let Some(b) = buffers {
        cmd.args(["--rcvbuf", &b.to_string(), "--sndbuf", &b.to_string()]);
    }
    cmd.args(&args[1..]).stderr(Stdio::piped());
    cmd
}

/// Whether the receiver counted the whole [`VOLUME`] (else [`CAP`] cut the transfer short).
fn complete(bytes: u64) -> bool {
    bytes >= VOLUME
}

/// Fails if a process exited with an error, unless the transfer was cut short by [`CAP`] (then
/// the peer was stopped first and a reset or a kill is the expected end).
fn check_exit(what: &str, exit: &Exit, info: &str, complete: bool) -> Result<(), String> {
    if exit.status == 0 || !complete {
        Ok(())
    } else if exit.killed_by_us {
        Err(format!(
            "{what} did not exit within {} s of the end of the transfer: {}",
            EXIT_GRACE.as_secs(),
            info.trim()
        ))
    } else {
        Err(format!(
            "{what} failed (wait status {:#x}): {}",
            exit.status,
            info.trim()
        ))
    }
}

/// `Tcp: RetransSegs` of namespace `ns` (`/proc/net/snmp` read inside it).
fn retrans_segs(ns: &str) -> Option<u64> {
    let out = support::netns(ns)
        .args(["cat", "/proc/net/snmp"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The value of `key=` in msock's `--info` line.
fn info_field(info: &str, key: &str) -> Option<u64> {
    info.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// One transfer of `stack` in `direction` over `net`.
fn run_once(
    ctx: &mut Ctx,
    net: &Net,
    stack: Stack,
    direction: Direction,
    buffers: Option<usize>,
) -> Result<Sample, String> {
    let port = ctx.next_port();
    let ns_a = net.ns_a();
    let ns_b = net.ns_b();
    // The namespace whose kernel sends, when the kernel sends.
    let sender_ns = match (stack, direction) {
        (Stack::Msock, Direction::Send) => None,
        (Stack::Kernel, Direction::Send) => Some(ns_a.as_str()),
        (_, Direction::Receive) => Some(ns_b.as_str()),
    };
    let retrans_before = sender_ns.and_then(retrans_segs);
    let busy_before = machine_busy();
    let ns_cpu_before = net.netserver_cpu();
    let sample = match (stack, direction) {
        (_, Direction::Send) => {
            let (mut sink, mut reader) = start_sink(ctx, &ns_b, SocketAddrV4::new(PEER, port))?;
            let (mut sender, info) = match stack {
                Stack::Msock => {
                    let zeros = File::open(&ctx.zeros).map_err(|e| format!("zeros: {e}"))?;
                    let mut cmd = msock_cmd(
                        ctx,
                        net,
                        &["connect".into(), format!("{PEER}:{port}")],
                        buffers,
                    );
                    cmd.stdin(zeros).stdout(Stdio::null());
                    let mut p = Proc::spawn("msock tcp connect", &mut cmd)?;
                    let info = drain(p.child.stderr.take());
                    (p, Some(info))
                }
                Stack::Kernel => {
                    let mut cmd = source_cmd(ctx, &ns_a, KERNEL_A, SocketAddrV4::new(PEER, port));
                    (Proc::spawn("kernel source", &mut cmd)?, None)
                }
            };
            let (bytes, elapsed) = read_result("sink", &mut reader)?;
            // The sink closes after its result: a cut-short sender sees a reset (msock prints
            // its --info and exits); a kernel source is simply stopped.
            let _ = sink.finish(EXIT_GRACE)?;
            let grace = match (stack, complete(bytes)) {
                (Stack::Kernel, false) => Duration::ZERO,
                _ => EXIT_GRACE,
            };
            let sender_exit = sender.finish(grace)?;
            let info = info
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            check_exit(&sender.what, &sender_exit, &info, complete(bytes))?;
            Sample {
                bytes,
                elapsed,
                cpu: sender_exit.cpu,
                netserver_cpu: None,
                machine_cpu: None,
                retransmits: info_field(&info, "retrans"),
                info,
            }
        }
        (_, Direction::Receive) => {
            // The receiver discards (msock into /dev/null, the kernel sink reads and drops);
            // the kernel source in `N-b` measures until everything is acknowledged.
            let (mut receiver, info, stdin, sink_reader) = match stack {
                Stack::Msock => {
                    let mut cmd =
                        msock_cmd(ctx, net, &["listen".into(), port.to_string()], buffers);
                    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
                    let mut p = Proc::spawn("msock tcp listen", &mut cmd)?;
                    // Held open until the measurement ends, so stdin EOF cannot end anything.
                    let stdin = p.child.stdin.take();
                    let info = drain(p.child.stderr.take());
                    (p, Some(info), stdin, None)
                }
                Stack::Kernel => {
                    let (p, reader) = start_sink(ctx, &ns_a, SocketAddrV4::new(KERNEL_A, port))?;
                    (p, None, None, Some(reader))
                }
            };
            let dest = match stack {
                Stack::Msock => MSOCK,
                Stack::Kernel => KERNEL_A,
            };
            let mut cmd = source_cmd(ctx, &ns_b, PEER, SocketAddrV4::new(dest, port));
            cmd.stdout(Stdio::piped());
            let mut source = Proc::spawn("kernel source", &mut cmd)?;
            let mut reader = BufReader::new(source.child.stdout.take().ok_or("source: no stdout")?);
            let result = read_result("source", &mut reader);
            drop(stdin);
            let _ = source.finish(EXIT_GRACE)?;
            let receiver_exit = receiver.finish(EXIT_GRACE)?;
            drop(sink_reader);
            let info = info
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            let (bytes, elapsed) =
                result.map_err(|e| format!("{e}; msock said: {}", info.trim()))?;
            check_exit(&receiver.what, &receiver_exit, &info, true)?;
            Sample {
                bytes,
                elapsed,
                cpu: receiver_exit.cpu,
                netserver_cpu: None,
                machine_cpu: None,
                retransmits: None,
                info,
            }
        }
    };
    let netserver_cpu = match (stack, ns_cpu_before, net.netserver_cpu()) {
        (Stack::Msock, Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let retransmits = match (retrans_before, sender_ns.and_then(retrans_segs)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => sample.retransmits,
    };
    let machine_cpu = match (busy_before, machine_busy()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(Sample {
        netserver_cpu,
        retransmits,
        machine_cpu,
        ..sample
    })
}

/// Results of one (direction, stack) case.
struct Case {
    label: String,
    direction: Direction,
    stack: Stack,
    samples: Vec<Sample>,
}

impl Case {
    fn median_gbits(&self) -> f64 {
        support::median(&self.samples.iter().map(Sample::gbits).collect::<Vec<_>>())
    }

    /// The sample whose goodput is the median (for CPU and `--info`).
    fn median_sample(&self) -> Option<&Sample> {
        let m = self.median_gbits();
        self.samples
            .iter()
            .min_by(|a, b| (a.gbits() - m).abs().total_cmp(&(b.gbits() - m).abs()))
    }
}

/// Runs every case `reps` times, interleaving msock and kernel so load changes hit both.
fn measure(
    ctx: &mut Ctx,
    net: &Net,
    label: &str,
    reps: usize,
    buffers: Option<usize>,
) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for direction in [Direction::Send, Direction::Receive] {
        for stack in [Stack::Msock, Stack::Kernel] {
            cases.push(Case {
                label: label.to_string(),
                direction,
                stack,
                samples: Vec::new(),
            });
        }
    }
    for rep in 0..reps {
        for case in &mut cases {
            let buffers = if case.stack == Stack::Msock {
                buffers
            } else {
                None
            };
            let s = run_once(ctx, net, case.stack, case.direction, buffers)
                .map_err(|e| format!("{label} {:?} {:?}: {e}", case.direction, case.stack))?;
            println!(
                "{label:<22} {:<8} {:<7} run {}: {:>6.2} Gbit/s  {:>5} MiB in {:.2} s  cpu {:.2} s  retrans {}{}{}",
                format!("{:?}", case.direction).to_lowercase(),
                format!("{:?}", case.stack).to_lowercase(),
                rep + 1,
                s.gbits(),
                s.bytes >> 20,
                s.elapsed.as_secs_f64(),
                s.cpu.as_secs_f64(),
                s.retransmits.map_or_else(|| "?".into(), |n| n.to_string()),
                s.netserver_cpu
                    .map(|c| format!("  netserver cpu {:.2} s", c.as_secs_f64()))
                    .unwrap_or_default(),
                s.machine_cpu
                    .map(|c| format!("  machine cpu {:.2} s", c.as_secs_f64()))
                    .unwrap_or_default()
            );
            case.samples.push(s);
        }
    }
    Ok(cases)
}

fn percent_of(cpu: Duration, elapsed: Duration) -> String {
    format!(
        "{:.0} %",
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9)
    )
}

fn direction_text(direction: Direction) -> &'static str {
    match direction {
        Direction::Send => "N-a → N-b (N-a sends)",
        Direction::Receive => "N-b → N-a (N-a receives)",
    }
}

/// Median over a case's runs of all CPUs' busy time per GiB moved.
fn cpu_per_gib(case: &Case) -> String {
    let v: Vec<f64> = case
        .samples
        .iter()
        .filter_map(|s| {
            Some(s.machine_cpu?.as_secs_f64() / (s.bytes.max(1) as f64 / (1u64 << 30) as f64))
        })
        .collect();
    if v.len() == case.samples.len() && !v.is_empty() {
        format!("{:.2}", support::median(&v))
    } else {
        "?".into()
    }
}

/// Sum of a case's retransmissions over its runs (`?` if a count is missing).
fn retransmits(case: &Case) -> String {
    case.samples
        .iter()
        .map(|s| s.retransmits)
        .sum::<Option<u64>>()
        .map_or_else(|| "?".into(), |n| n.to_string())
}

fn table(cases: &[Case]) -> support::Table {
    let mut rows = Vec::new();
    for pair in cases.chunks(2) {
        let [m, k] = pair else { continue };
        let runs = |c: &Case| {
            c.samples
                .iter()
                .map(|s| format!("{:.2}", s.gbits()))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let (mg, kg) = (m.median_gbits(), k.median_gbits());
        let ms = m.median_sample();
        let ks = k.median_sample();
        let direction = direction_text(m.direction);
        rows.push(vec![
            m.label.clone(),
            direction.to_string(),
            format!("{mg:.2} ({})", runs(m)),
            format!("{kg:.2} ({})", runs(k)),
            format!("{:.2}", mg / kg),
            ms.map(|s| percent_of(s.cpu, s.elapsed)).unwrap_or_default(),
            ms.and_then(|s| s.netserver_cpu.map(|c| percent_of(c, s.elapsed)))
                .unwrap_or_else(|| "–".into()),
            ks.map(|s| percent_of(s.cpu, s.elapsed)).unwrap_or_default(),
            format!("{} / {}", cpu_per_gib(m), cpu_per_gib(k)),
            format!("{} / {}", retransmits(m), retransmits(k)),
        ]);
    }
    support::Table {
        header: vec![
            "link".into(),
            "direction".into(),
            "msock Gbit/s, median (runs)".into(),
            "kernel Gbit/s, median (runs)".into(),
            "msock / kernel".into(),
            "msock process CPU".into(),
            "netserver CPU".into(),
            "kernel-side process CPU".into(),
            "machine CPU s per GiB, median (msock / kernel)".into(),
            "retransmitted segments, all runs (msock / kernel)".into(),
        ],
        rows,
    }
}

fn run() -> Result<(), String> {
    let msock = PathBuf::from(env!("CARGO_BIN_EXE_msock"));
    if !msock.is_file() {
        return Err(format!("missing {}", msock.display()));
    }
    let help = Command::new(&msock)
        .args(["tcp", "--help"])
        .output()
        .map_err(|e| format!("{}: {e}", msock.display()))?;
    let help_text = String::from_utf8_lossy(&help.stdout) + String::from_utf8_lossy(&help.stderr);
    if !help_text.contains("connect") || !help_text.contains("listen") {
        return Err(format!(
            "{} has no `tcp connect|listen` driver yet: {}",
            msock.display(),
            help_text.trim()
        ));
    }
    let pid = std::process::id() % 100_000;
    // A sparse file of VOLUME zero bytes: msock's stdin when it sends (reads cost no disk).
    let zeros = TempFile(PathBuf::from(format!("/dev/shm/msock-tput-{pid}.zeros")));
    File::create(&zeros.0)
        .and_then(|f| f.set_len(VOLUME))
        .map_err(|e| format!("{}: {e}", zeros.0.display()))?;
    let mut ctx = Ctx {
        me: std::env::current_exe().map_err(|e| e.to_string())?,
        msock: msock.clone(),
        zeros: zeros.0.clone(),
        port: BASE_PORT,
    };
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let plain = {
        let net = Net::up(&format!("tput{pid}"), &msock, None)?;
        measure(&mut ctx, &net, "veth, MTU 1500", REPS, None)?
    };
    let delayed = {
        let net = Net::up(&format!("tpud{pid}"), &msock, Some(DELAY_SPEC))?;
        measure(
            &mut ctx,
            &net,
            "emulator, 10 ms RTT",
            REPS_DELAY,
            Some(DELAY_BUFFER),
        )?
    };
    let all: Vec<Case> = plain.into_iter().chain(delayed).collect();
    let table = table(&all);
    print!("\n{}", table.to_markdown());
    // The `--info` line of each msock row's median run (engine state at the end).
    let mut infos = String::new();
    for case in all.iter().filter(|c| c.stack == Stack::Msock) {
        let line = case
            .median_sample()
            .and_then(|s| s.info.lines().find(|l| l.contains("rtt_us=")));
        if let Some(line) = line {
            let line = line.trim_start_matches("msock tcp: ");
            infos.push_str(&format!(
                "- {}, {}: `{line}`\n",
                case.label,
                direction_text(case.direction)
            ));
        }
    }
    print!("\nmsock --info at exit (median runs):\n{infos}");
    let target = all
        .iter()
        .filter(|c| c.stack == Stack::Msock && c.label.starts_with("veth"))
        .map(Case::median_gbits)
        .fold(f64::INFINITY, f64::min);
    println!(
        "\nissue target ≥ 1 Gbit/s at MTU 1500: {} (slower msock direction {target:.2} Gbit/s); {:.0} s total",
        if target >= 1.0 { "met" } else { "NOT met" },
        started.elapsed().as_secs_f64()
    );
    let body = format!(
        "Single-flow TCP goodput between namespaces `N-a` and `N-b` of `msock testnet` (veth, MTU \
         1500, offloads off): msock (`msock tcp connect|listen`, the engine in-process over its \
         netserver channel, at 198.18.0.2) against the kernel stack of the same namespace \
         (198.18.0.3), the kernel of `N-b` as the peer in every row, all in one run with \
         msock and kernel runs interleaved. Goodput is measured by the kernel of `N-b`: its \
         receiving application from the first byte to EOF, or its sender from the established \
         connection until all it wrote is acknowledged, for {} MiB or what gets through in {} s \
         (receivers discard: msock writes to /dev/null, the kernel sink reads and drops); {REPS} runs per row on the \
         plain veth, {REPS_DELAY} over the link emulator (`--impair {DELAY_SPEC}`, msock with \
         `--rcvbuf/--sndbuf {DELAY_BUFFER}`; the kernel autotunes). CPU columns: user+system time \
         of the `N-a` endpoint process (msock, or the kernel-stack program, whose in-kernel \
         work is largely charged to other tasks' softirq context instead) and of the netserver, as \
         a share of one core over the transfer time; machine CPU is the busy time of all CPUs \
         during the run (both stacks' work wherever the kernel charged it, set-up included, and \
         whatever else the machine was doing) per GiB moved. Load average at start: {}.\n\n{}\n`msock tcp --info` at exit, median runs:\n\n{infos}",
        VOLUME >> 20,
        CAP.as_secs(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        table.to_markdown()
    );
    support::write_section_markdown(
        "tcp_throughput",
        &body,
        "cargo bench --bench tcp_throughput  # as root",
    )
    .map_err(|e| format!("BENCHMARKS.md: {e}"))?;
    drop(zeros);
    Ok(())
}
