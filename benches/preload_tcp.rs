//! TCP through libmsock (issue 5): unmodified C programs (`cdemo/`) under `msock run` beside
//! the same binaries on the kernel stack, same run, same veth link.
//!
//! Topology: `msock testnet` namespaces. `N-a` holds the netserver (198.18.0.2, msock) and
//! its kernel's own address (198.18.0.3); `N-b` is the kernel peer (198.18.0.1). Every msock
//! figure has a kernel twin that differs only in the stack of the `N-a` program:
//!
//! 1. Request/response latency, 1 B and 1400 B: `echo_client` in `N-a` (under `msock run`,
//!    then plain), `echo_server` (epoll) in `N-b`; median and p99 of one connection's round
//!    trips.
//! 2. Bulk throughput, one flow: `bulk_send` in `N-a` to `bulk_send -l` in `N-b`; the sink's
//!    FNV-64 of the stream must equal the sender's.
//! 3. inetd-style connect/request/close rate: `concurrent_server` (the paper's Fig. 5
//!    fork-per-connection server) in `N-a` under msock without and with
//!    `SO_CONCURRENT_SERVER` (`-c`), and on the kernel (.3); `echo_client -r` from `N-b`, one
//!    connection after another.
//!
//! Each msock measurement gets a fresh netserver. Every process runs under a deadline and the
//! C programs carry socket timeouts, so a stack that stalls costs seconds, not a hang: a failed
//! msock run prints `msock: failed (<reason>)`, keeps the kernel figure and says so in
//! BENCHMARKS.md. A msock client must report `stack=msock` (libmsock's `msock_is_msock_fd`
//! on its connection), so a kernel fallback is never counted as msock. Needs root and the
//! built tree (`make build`); builds `cdemo/bin` itself (`make cdemo`). Writes the
//! `preload_tcp` section of BENCHMARKS.md.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const PEER: &str = "198.18.0.1";
const MSOCK_ADDR: &str = "198.18.0.2";
const KERNEL_A: &str = "198.18.0.3";

const ECHO_PORT: u16 = 7201;
const BULK_PORT: u16 = 7202;
/// Conn-rate listeners: kernel, msock, msock with SO_CONCURRENT_SERVER (distinct ports, so the
/// client's TIME_WAIT entries of one case never collide with the next).
const RATE_PORTS: [u16; 3] = [7210, 7211, 7212];

const RTT_SAMPLES: u32 = 20_000;
const RTT_WARMUP: u32 = 2_000;
const BULK_MIB: u32 = 512;
const CONNS: u32 = 2_000;
const CONN_WARMUP: u32 = 100;
/// Request size of the conn-rate client (echoed back).
const CONN_REQUEST: u32 = 64;
/// Socket timeout inside the C programs (`-T`).
const SOCKET_TIMEOUT_S: u32 = 5;
/// Deadline of one measured program run.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for a server's `ready` line, and for a server to finish after its last client.
const SERVER_DEADLINE: Duration = Duration::from_secs(15);

const COMMAND: &str = "make build && cargo bench --bench preload_tcp";

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("preload_tcp: needs root (network namespaces); skipped");
        return;
    }
    if let Err(e) = run() {
        eprintln!("preload_tcp: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Processes with deadlines.

/// A spawned program whose stdout lines arrive on a channel and whose stderr is collected;
/// killed and reaped when dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> Result<Proc, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().ok_or("stdout not piped")?;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().ok_or("stderr not piped")?;
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Proc {
            child,
            lines,
            stderr,
        })
    }

    /// The first stdout line starting with `prefix`, within `deadline`.
    fn line(&self, prefix: &str, deadline: Duration) -> Result<String, String> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no `{prefix}` line within {} s{}",
                        deadline.as_secs(),
                        self.stderr_tail()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "exited without a `{prefix}` line{}",
                        self.stderr_tail()
                    ));
                }
            }
        }
    }

    /// Waits for the exit within `deadline` (killing it after that).
    fn wait(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        let end = Instant::now() + deadline;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= end => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("timed out after {} s", deadline.as_secs()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("wait: {e}")),
            }
        }
    }

    /// Runs to completion within `deadline`; the stdout line starting with `prefix`.
    fn result(mut self, prefix: &str, deadline: Duration) -> Result<String, String> {
        let status = self.wait(deadline)?;
        if !status.success() {
            return Err(format!("{status}{}", self.stderr_tail()));
        }
        self.line(prefix, Duration::from_secs(2))
    }

    /// `: <first error line of stderr>` (shortened; the programs print the cause first and
    /// warnings with `warning:`), or nothing.
    fn stderr_tail(&self) -> String {
        // Let the reader thread catch up with a process that just ended.
        std::thread::sleep(Duration::from_millis(20));
        let text = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.clone().find(|l| !l.contains("warning:"));
        match first.or_else(|| lines.next()) {
            Some(l) => format!(": {}", shorten(l, 160)),
            None => String::new(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// `key=value` field of a result line, as a number.
fn field(line: &str, key: &str) -> Result<f64, String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no numeric `{key}=` in `{line}`"))
}

/// `key=value` field of a result line, as text.
fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

// ---------------------------------------------------------------------------------------------
// The test bed.

struct Bed {
    name: String,
    msock: PathBuf,
    lib: PathBuf,
    cdemo: PathBuf,
}

impl Bed {
    fn a(&self) -> String {
        format!("{}-a", self.name)
    }

    fn b(&self) -> String {
        format!("{}-b", self.name)
    }

    /// `prog args` in namespace `ns`, under `msock run` if `msock`.
    fn command(&self, ns: &str, msock: bool, prog: &str, args: &[String]) -> Command {
        let mut cmd = support::netns(ns);
        if msock {
            cmd.arg(&self.msock)
                .arg("run")
                .arg("--lib")
                .arg(&self.lib)
                .arg("--");
        }
        cmd.arg(self.cdemo.join(prog)).args(args);
        cmd.env_remove("LD_PRELOAD").env_remove("MSOCK_FALLBACK");
        cmd
    }

    /// A netserver in `N-a` owning the msock address, up and answering.
    fn netserver(&self) -> Result<Proc, String> {
        let mut cmd = support::netns(&self.a());
        cmd.arg(&self.msock).args([
            "netserver",
            "--iface",
            &format!("{}-a0", self.name),
            "--addr",
            &format!("{MSOCK_ADDR}/24"),
        ]);
        let p = Proc::spawn(cmd, "netserver")?;
        support::wait_for_netserver(&self.a(), &self.msock)?;
        Ok(p)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = msock::testnet::down(&self.name);
    }
}

fn args(list: &[&dyn std::fmt::Display]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// A msock client must have been served by msock, not by a kernel fallback.
fn check_stack(line: &str, msock: bool) -> Result<(), String> {
    let want = if msock { "msock" } else { "kernel" };
    match text_field(line, "stack") {
        Some(s) if s == want => Ok(()),
        Some(s) => Err(format!("connection served by {s}, not {want}")),
        None => Err(format!("no stack= in `{line}`")),
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// Median and p99 round trip (µs) of `size`-byte requests from `N-a` to the echo server.
fn latency(bed: &Bed, size: u32, msock: bool) -> Result<(f64, f64), String> {
    let _netserver = if msock { Some(bed.netserver()?) } else { None };
    let cmd = bed.command(
        &bed.a(),
        msock,
        "echo_client",
        &args(&[
            &"-a",
            &PEER,
            &"-p",
            &ECHO_PORT,
            &"-s",
            &size,
            &"-n",
            &RTT_SAMPLES,
            &"-w",
            &RTT_WARMUP,
            &"-T",
            &SOCKET_TIMEOUT_S,
        ]),
    );
    let line = Proc::spawn(cmd, "echo_client")?.result("rtt_us ", RUN_DEADLINE)?;
    check_stack(&line, msock)?;
    Ok((field(&line, "median")?, field(&line, "p99")?))
}

/// One flow's throughput (Gbit/s) from `N-a` to a sink in `N-b`, checked byte-exact.
fn bulk(bed: &Bed, msock: bool) -> Result<f64, String> {
    let sink_cmd = bed.command(
        &bed.b(),
        false,
        "bulk_send",
        &args(&[
            &"-l",
            &"-a",
            &PEER,
            &"-p",
            &BULK_PORT,
            &"-n",
            &1,
            &"-T",
            &SOCKET_TIMEOUT_S,
        ]),
    );
    let sink = Proc::spawn(sink_cmd, "bulk sink")?;
    sink.line("ready ", SERVER_DEADLINE)
        .map_err(|e| format!("sink: {e}"))?;
    let _netserver = if msock { Some(bed.netserver()?) } else { None };
    let cmd = bed.command(
        &bed.a(),
        msock,
        "bulk_send",
        &args(&[
            &"-a",
            &PEER,
            &"-p",
            &BULK_PORT,
            &"-m",
            &BULK_MIB,
            &"-T",
            &SOCKET_TIMEOUT_S,
        ]),
    );
    let sent = Proc::spawn(cmd, "bulk_send")?.result("bulk ", RUN_DEADLINE)?;
    check_stack(&sent, msock)?;
    let got = sink
        .result("bulk ", SERVER_DEADLINE)
        .map_err(|e| format!("sink: {e}"))?;
    let expected = u64::from(BULK_MIB) << 20;
    for (who, line) in [("sender", &sent), ("sink", &got)] {
        if field(line, "bytes")? as u64 != expected {
            return Err(format!(
                "{who} moved {} bytes, not {expected}",
                field(line, "bytes")?
            ));
        }
    }
    if text_field(&sent, "fnv") != text_field(&got, "fnv") {
        return Err(format!("stream corrupted: sender `{sent}`, sink `{got}`"));
    }
    // The sender's clock runs from its first send to the sink's close: delivery included.
    field(&sent, "gbit_s")
}

/// Connections per second (and median µs per connection) of the Fig. 5 server in `N-a`,
/// clients from `N-b`: on the kernel (`msock == None`), or under msock with or without
/// SO_CONCURRENT_SERVER.
fn conn_rate(bed: &Bed, msock: Option<bool>) -> Result<(f64, f64), String> {
    let (port, addr) = match msock {
        None => (RATE_PORTS[0], KERNEL_A),
        Some(false) => (RATE_PORTS[1], MSOCK_ADDR),
        Some(true) => (RATE_PORTS[2], MSOCK_ADDR),
    };
    let _netserver = if msock.is_some() {
        Some(bed.netserver()?)
    } else {
        None
    };
    let mut server_args = args(&[
        &"-a",
        &if msock.is_some() { "0.0.0.0" } else { KERNEL_A },
        &"-p",
        &port,
        &"-m",
        &"echo",
        &"-n",
        &(CONNS + CONN_WARMUP),
        &"-T",
        &SOCKET_TIMEOUT_S,
    ]);
    if msock == Some(true) {
        server_args.push("-c".into());
    }
    let mut server = Proc::spawn(
        bed.command(&bed.a(), msock.is_some(), "concurrent_server", &server_args),
        "concurrent_server",
    )?;
    let ready = server
        .line("ready ", SERVER_DEADLINE)
        .map_err(|e| format!("server: {e}"))?;
    if msock == Some(true) && text_field(&ready, "concurrent") != Some("on") {
        return Err(format!(
            "SO_CONCURRENT_SERVER refused{}",
            server.stderr_tail()
        ));
    }
    let client = bed.command(
        &bed.b(),
        false,
        "echo_client",
        &args(&[
            &"-r",
            &"-a",
            &addr,
            &"-p",
            &port,
            &"-s",
            &CONN_REQUEST,
            &"-n",
            &CONNS,
            &"-w",
            &CONN_WARMUP,
            &"-T",
            &SOCKET_TIMEOUT_S,
        ]),
    );
    let line = Proc::spawn(client, "echo_client -r")?
        .result("conn_rate ", RUN_DEADLINE)
        .map_err(|e| format!("client: {e}; server{}", server.stderr_tail()))?;
    let status = server
        .wait(SERVER_DEADLINE)
        .map_err(|e| format!("server: {e}"))?;
    let summary = server
        .line("concurrent_server ", Duration::from_secs(2))
        .map_err(|e| format!("server: {e}"))?;
    if !status.success() || field(&summary, "child_failures")? != 0.0 {
        return Err(format!(
            "server: {status}, `{summary}`{}",
            server.stderr_tail()
        ));
    }
    Ok((field(&line, "per_s")?, field(&line, "median_us")?))
}

// ---------------------------------------------------------------------------------------------
// Report.

struct Row {
    what: String,
    unit: &'static str,
    kernel: Result<f64, String>,
    msock: Result<f64, String>,
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Row {
    fn cells(&self) -> Vec<String> {
        let kernel = match &self.kernel {
            Ok(v) => fmt_value(*v),
            Err(e) => format!("failed ({e})"),
        };
        let (msock, ratio) = match (&self.msock, &self.kernel) {
            (Ok(m), Ok(k)) if *k > 0.0 => (fmt_value(*m), format!("{:.2}", m / k)),
            (Ok(m), _) => (fmt_value(*m), "—".into()),
            (Err(e), _) => (format!("failed ({e})"), "—".into()),
        };
        vec![self.what.clone(), self.unit.into(), msock, kernel, ratio]
    }

    fn print(&self) {
        let c = self.cells();
        match &self.msock {
            Ok(_) => println!(
                "{} ({}): msock {}, kernel {}, ratio {}",
                c[0], c[1], c[2], c[3], c[4]
            ),
            Err(e) => println!("{} ({}): msock: failed ({e}); kernel {}", c[0], c[1], c[3]),
        }
    }
}

fn artifacts() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("release");
    (dir.join("msock"), dir.join("libmsock.so"))
}

/// Builds `cdemo/bin` (cheap: four C files) so the bench never runs stale programs.
fn build_cdemo(root: &Path) -> Result<PathBuf, String> {
    let out = Command::new("make")
        .arg("-C")
        .arg(root)
        .args(["--no-print-directory", "cdemo"])
        .env_remove("MAKEFLAGS")
        .output()
        .map_err(|e| format!("make cdemo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "make cdemo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(root.join("cdemo/bin"))
}

fn run() -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (msock, lib) = artifacts();
    if !msock.is_file() || !lib.is_file() {
        return Err(format!(
            "build first (make build): {} / {}",
            msock.display(),
            lib.display()
        ));
    }
    let cdemo = build_cdemo(&root)?;
    let name = format!("ptcp{}", std::process::id() % 100_000);
    msock::testnet::up(&name).map_err(|e| format!("testnet: {e}"))?;
    let bed = Bed {
        name,
        msock,
        lib,
        cdemo,
    };

    let echo = Proc::spawn(
        bed.command(
            &bed.b(),
            false,
            "echo_server",
            &args(&[&"-a", &PEER, &"-p", &ECHO_PORT]),
        ),
        "echo_server",
    )?;
    echo.line("ready ", SERVER_DEADLINE)
        .map_err(|e| format!("echo_server: {e}"))?;

    let mut rows = Vec::new();
    for size in [1u32, 1400] {
        let kernel = latency(&bed, size, false);
        let msock = latency(&bed, size, true);
        for (label, pick) in [("median", 0usize), ("p99", 1)] {
            let get = |r: &Result<(f64, f64), String>| {
                r.as_ref()
                    .map(|v| if pick == 0 { v.0 } else { v.1 })
                    .map_err(Clone::clone)
            };
            rows.push(Row {
                what: format!("TCP request/response {size} B, {label} RTT"),
                unit: "µs",
                kernel: get(&kernel),
                msock: get(&msock),
            });
        }
    }
    drop(echo);

    rows.push(Row {
        what: format!("bulk throughput, one flow, {BULK_MIB} MiB"),
        unit: "Gbit/s",
        kernel: bulk(&bed, false),
        msock: bulk(&bed, true),
    });

    let kernel_rate = conn_rate(&bed, None);
    for (concurrent, label) in [(false, "without"), (true, "with")] {
        let msock = conn_rate(&bed, Some(concurrent));
        rows.push(Row {
            what: format!("inetd connect/request/close rate, {label} SO_CONCURRENT_SERVER"),
            unit: "conn/s",
            kernel: kernel_rate.as_ref().map(|v| v.0).map_err(Clone::clone),
            msock: msock.as_ref().map(|v| v.0).map_err(Clone::clone),
        });
        if let (Ok(m), Ok(k)) = (&msock, &kernel_rate) {
            println!(
                "per connection ({label} SO_CONCURRENT_SERVER): msock median {:.1} µs, kernel {:.1} µs",
                m.1, k.1
            );
        }
    }
    drop(bed);

    for r in &rows {
        r.print();
    }
    if let Some(r) = rows.iter().find(|r| r.kernel.is_err()) {
        return Err(format!(
            "kernel measurement failed ({}); BENCHMARKS.md left alone",
            r.what
        ));
    }
    let table = support::Table {
        header: vec![
            "measurement".into(),
            "unit".into(),
            "msock".into(),
            "kernel".into(),
            "ratio msock/kernel".into(),
        ],
        rows: rows.iter().map(Row::cells).collect(),
    };
    let failed = rows.iter().any(|r| r.msock.is_err());
    let body = format!(
        "Unmodified C programs (`cdemo/`) in `N-a` under `msock run` beside the same binaries on \
         `N-a`'s kernel stack, over one veth link to kernel peers in `N-b`, same run. Latency: \
         `echo_client` (one connection, {RTT_SAMPLES} round trips after {RTT_WARMUP} warm-up, \
         TCP_NODELAY) to `echo_server`. Bulk: `bulk_send` to `bulk_send -l`, byte-exact (FNV-64). \
         Connection rate: the Fig. 5 fork-per-connection `concurrent_server` in `N-a` (msock: \
         {MSOCK_ADDR}, kernel: {KERNEL_A}), `echo_client -r` in `N-b`, {CONNS} sequential \
         connections after {CONN_WARMUP}, each connect, {CONN_REQUEST} B echoed, close; the \
         kernel has no SO_CONCURRENT_SERVER, so both rate rows compare with one kernel run. \
         Ratio: below 1 is better for latency, above 1 for throughput and rate.\n\n{}{}",
        table.to_markdown(),
        if failed {
            "\nA `failed (…)` cell: the msock run did not complete (deadline, error, or a \
             connection not served by msock); only the kernel figure was measured.\n"
        } else {
            ""
        }
    );
    support::write_section_markdown("preload_tcp", &body, COMMAND)
        .map_err(|e| format!("BENCHMARKS.md: {e}"))?;
    Ok(())
}
