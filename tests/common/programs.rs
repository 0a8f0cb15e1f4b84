//! The harness for `tests/programs.rs`: unmodified programs (nc, socat, python3 http.server,
//! curl, openbsd-inetd, tcpserver, nginx, wrk, redis, iperf3) on `N-a`, either under
//! `msock run` ([`Mode::Msock`], the issue 5 must-show) or straight on `N-a`'s kernel stack
//! ([`Mode::Kernel`], which validates the harness itself), with kernel peers in `N-b`.
//!
//! Contract:
//! - [`Host::new`] checks that the programs are installed (missing ones skip the test with a
//!   reason, or fail it under CI), builds a private [`TestNet`] and, in msock mode, starts the
//!   netserver. [`Host::addr_a`] is the address `N-a`'s programs use: `MSOCK_ADDR` (owned by
//!   the netserver, unknown to `N-a`'s kernel) under msock, `KERNEL_ADDR` in kernel mode.
//! - [`Host::spawn_a`] runs a shell command line in `N-a` whose last `exec` target is the
//!   program: under msock the line is `exec msock run --lib libmsock.so -- PROG ARGS
//!   REDIRECTIONS`, so exactly the program (and what it forks or execs) is preloaded and the
//!   shell redirections apply to it.
//! - Proof that msock carried the traffic (so a test cannot pass by falling back to the
//!   kernel): [`Host::await_listener`] requires a `LISTEN` endpoint in `msock stat --json` and
//!   no kernel listener in `N-a`; [`Host::assert_listener_completed`] requires the netserver's
//!   listener to have completed at least the handshakes the test made; for clients the kernel
//!   server in `N-b` must have seen [`Host::addr_a`] as the source (the kernel of `N-a` only
//!   has `KERNEL_ADDR`), and [`Host::assert_clients_grew`] requires new netserver clients
//!   besides `msock stat` itself.
//! - Everything has a timeout; the [`TestNet`] drop kills what is left and removes the
//!   namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use super::streams::sh;
use super::{
    KERNEL_ADDR, MSOCK_ADDR, PEER_ADDR, Proc, READY_TIMEOUT, TempDir, TestNet, exec_timeout,
    find_tool, libmsock, msock_bin, stderr_of, stdout_of, under_ci, wait_until,
};

/// Set (to anything but empty/`0`) to run the `_msock` tests on `N-a`'s kernel stack instead.
pub const KERNEL_ENV: &str = "MSOCK_PROGRAMS_KERNEL";

/// Where the `N-a` side of a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain `ip netns exec` on `N-a`'s kernel stack (validates the harness).
    Kernel,
    /// Under `msock run` with `libmsock.so`, against the netserver on `N-a0`.
    Msock,
}

impl Mode {
    /// [`Mode::Msock`], unless [`KERNEL_ENV`] asks for the kernel stack.
    pub fn msock_unless_env() -> Mode {
        match std::env::var(KERNEL_ENV) {
            Ok(v) if !v.is_empty() && v != "0" => {
                eprintln!("{KERNEL_ENV}={v}: running the N-a side on the kernel stack");
                Mode::Kernel
            }
            _ => Mode::Msock,
        }
    }

    /// The address programs on `N-a` bind to or are reached at.
    pub fn addr_a(self) -> Ipv4Addr {
        match self {
            Mode::Kernel => KERNEL_ADDR,
            Mode::Msock => MSOCK_ADDR,
        }
    }
}

/// Whether every `(program, Debian package)` is installed. A missing one fails the test under
/// CI; otherwise the test is skipped (false) after printing why.
pub fn require(test: &str, tools: &[(&str, &str)]) -> bool {
    for (tool, package) in tools {
        if find_tool(tool).is_none() {
            let why = format!("{tool} not installed (package {package})");
            assert!(!under_ci(), "{test}: {why}; CI must run it");
            eprintln!("skipped {test}: {why}");
            return false;
        }
    }
    true
}

/// A testnet plus a scratch directory, set up for one scenario in one [`Mode`].
pub struct Host {
    pub mode: Mode,
    // Drop order: the netserver, then the testnet (killing what is left), then the files.
    netserver: Option<Proc>,
    pub net: TestNet,
    pub dir: TempDir,
}

impl Host {
    /// `None` when the test is skipped (programs or namespaces unavailable, outside CI).
    pub fn new(test: &str, mode: Mode, tools: &[(&str, &str)]) -> Option<Host> {
        if !require(test, tools) {
            return None;
        }
        let net = TestNet::new(test)?;
        let netserver = (mode == Mode::Msock).then(|| {
            // Fail early with a clear message when the preload library is not built.
            let _ = libmsock();
            net.start_netserver(&[])
        });
        Some(Host {
            mode,
            netserver,
            net,
            dir: TempDir::new(test),
        })
    }

    pub fn addr_a(&self) -> Ipv4Addr {
        self.mode.addr_a()
    }

    /// A path in the scratch directory, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        path_string(&self.dir.path().join(name))
    }

    /// The shell line that runs `command` (a program, its arguments and redirections) in
    /// `N-a` in this mode.
    pub fn line_a(&self, command: &str) -> String {
        match self.mode {
            Mode::Kernel => format!("exec {command}"),
            Mode::Msock => format!(
                "exec {} run --lib {} -- {command}",
                path_string(&msock_bin()),
                path_string(&libmsock())
            ),
        }
    }

    /// Starts `command` in `N-a` (see [`Host::line_a`]).
    pub fn spawn_a(&self, label: &str, command: &str) -> Proc {
        self.net
            .spawn(label, sh(&self.net, self.net.ns_a(), &self.line_a(command)))
    }

    /// Runs `command` in `N-a` to completion; fails the test after `timeout`.
    pub fn exec_a(&self, command: &str, timeout: Duration) -> Output {
        exec_timeout(
            sh(&self.net, self.net.ns_a(), &self.line_a(command)),
            timeout,
        )
    }

    /// Starts the shell line `script` on the kernel stack of `N-b`.
    pub fn spawn_b(&self, label: &str, script: &str) -> Proc {
        self.net
            .spawn(label, sh(&self.net, self.net.ns_b(), script))
    }

    /// Runs the shell line `script` in `N-b` to completion; fails the test after `timeout`.
    pub fn exec_b(&self, script: &str, timeout: Duration) -> Output {
        exec_timeout(sh(&self.net, self.net.ns_b(), script), timeout)
    }

    /// As [`Host::exec_b`], and fails the test (with its output) unless it succeeds.
    pub fn exec_b_ok(&self, script: &str, timeout: Duration) -> Output {
        let out = self.exec_b(script, timeout);
        assert!(
            out.status.success(),
            "N-b `{script}` failed ({}):\n{}\n{}",
            out.status,
            stdout_of(&out),
            stderr_of(&out)
        );
        out
    }

    /// Waits until the server `proc` in `N-a` listens on TCP `port`. Under msock that must be
    /// a `LISTEN` endpoint of the netserver while `N-a`'s kernel has no listener on the port.
    pub fn await_listener(&self, proc: &mut Proc, port: u16) {
        let mut last = String::new();
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(status) = proc.try_status() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    proc.label(),
                    proc.log()
                );
            }
            match self.mode {
                Mode::Kernel => kernel_listening(&self.net, self.net.ns_a(), port),
                Mode::Msock => {
                    last = self.net.try_stat_json().unwrap_or_default();
                    msock_listening(&last, port)
                }
            }
        });
        assert!(
            ready,
            "{} not listening on {port} after {READY_TIMEOUT:?} ({:?} mode); msock stat: {last}\nlog:\n{}",
            proc.label(),
            self.mode,
            proc.log()
        );
        if self.mode == Mode::Msock {
            assert!(
                !kernel_listening(&self.net, self.net.ns_a(), port),
                "{} listens on {port} on N-a's kernel stack: msock fell back to the kernel",
                proc.label()
            );
        }
    }

    /// The netserver's `control.clients_accepted` (0 in kernel mode).
    pub fn clients_accepted(&self) -> u64 {
        match self.mode {
            Mode::Kernel => 0,
            Mode::Msock => {
                json_u64(&self.net.stat_json(), "\"control\":{", "clients_accepted").unwrap_or(0)
            }
        }
    }

    /// Under msock: a process other than `msock stat` connected to the netserver since
    /// `before` was read (with no `msock stat` call in between: each one is a client too, so
    /// the reading here adds one).
    pub fn assert_clients_grew(&self, before: u64, what: &str) {
        if self.mode == Mode::Msock {
            let after = self.clients_accepted();
            assert!(
                after >= before + 2,
                "{what}: no msock client besides `msock stat` on the netserver ({before} -> {after})"
            );
        }
    }

    /// Under msock: the netserver's listener on `port` completed at least `n` handshakes
    /// (read while the server still listens).
    pub fn assert_listener_completed(&self, port: u16, n: u64) {
        if self.mode == Mode::Msock {
            let stat = self.net.stat_json();
            let completed = listener_completed(&stat, port);
            assert!(
                completed.is_some_and(|c| c >= n),
                "msock listener {port} completed {completed:?} handshakes, want >= {n}: {stat}"
            );
        }
    }

    /// Waits for `proc` to exit successfully within `timeout`.
    pub fn finish(&self, proc: &mut Proc, timeout: Duration) {
        let status = proc.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "{} still running after {timeout:?}:\n{}",
                proc.label(),
                proc.log()
            )
        });
        assert!(
            status.success(),
            "{} failed ({status}):\n{}",
            proc.label(),
            proc.log()
        );
    }

    /// Writes `text` to `name` in the scratch directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path_string(&path)
    }
}

/// Whether a kernel socket in `ns` listens on TCP `port`.
pub fn kernel_listening(net: &TestNet, ns: &str, port: u16) -> bool {
    let out = net.exec(net.command_in(ns, &["ss", "-Hltn", &format!("sport = :{port}")]));
    stdout_of(&out).contains(&format!(":{port}"))
}

/// Waits until a kernel program in `N-b` listens on `port`, failing if `proc` exits first.
pub fn await_kernel_listener(net: &TestNet, proc: &mut Proc, port: u16) {
    let ready = wait_until(READY_TIMEOUT, || {
        if let Some(status) = proc.try_status() {
            panic!(
                "{} exited ({status}) before listening:\n{}",
                proc.label(),
                proc.log()
            );
        }
        kernel_listening(net, net.ns_b(), port)
    });
    assert!(
        ready,
        "{} not listening on {port}:\n{}",
        proc.label(),
        proc.log()
    );
}

fn path_string(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_string()
}

/// The JSON objects of `msock stat --json`'s array `key` (flat objects only).
fn json_objects<'a>(stat: &'a str, key: &str) -> Vec<&'a str> {
    let Some(start) = stat.find(&format!("\"{key}\":[")) else {
        return Vec::new();
    };
    let rest = &stat[start..];
    let end = rest.find(']').unwrap_or(rest.len());
    rest[..end].split('{').skip(1).collect()
}

/// Whether `msock stat --json` shows a TCP endpoint listening on `port`.
pub fn msock_listening(stat: &str, port: u16) -> bool {
    json_objects(stat, "endpoints").iter().any(|o| {
        o.contains("\"state\":\"LISTEN\"")
            && o.contains("\"proto\":\"tcp")
            && o.contains(&format!(":{port}\""))
    })
}

/// `completed` of the netserver's listener on `port` in `msock stat --json`.
pub fn listener_completed(stat: &str, port: u16) -> Option<u64> {
    let needle = format!("\"port\":{port},");
    json_objects(stat, "tcp_listeners")
        .into_iter()
        .find(|o| o.starts_with(&needle))
        .and_then(|o| json_u64(o, "", "completed"))
}

/// The number after `"key":` that follows `anchor` in `text`.
pub fn json_u64(text: &str, anchor: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(anchor)? + anchor.len()..];
    let field = format!("\"{key}\":");
    let rest = &rest[rest.find(&field)? + field.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The totals of a `wrk` run.
#[derive(Debug, PartialEq, Eq)]
pub struct WrkResult {
    pub requests: u64,
    /// The `Socket errors:` counts (connect, read, write, timeout); wrk prints the line only
    /// when one is non-zero.
    pub socket_errors: u64,
    /// `Non-2xx or 3xx responses:`.
    pub non_2xx: u64,
}

/// Parses wrk's text report; `None` if it has no `N requests in` line.
pub fn parse_wrk(out: &str) -> Option<WrkResult> {
    let requests = out.lines().find_map(|l| {
        let (n, rest) = l.trim().split_once(' ')?;
        rest.starts_with("requests in").then(|| n.parse().ok())?
    })?;
    let numbers = |l: &str| -> u64 {
        l.split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse::<u64>().ok())
            .sum()
    };
    let socket_errors = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:").map(numbers))
        .unwrap_or(0);
    let non_2xx = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Non-2xx or 3xx responses:")
                .map(numbers)
        })
        .unwrap_or(0);
    Some(WrkResult {
        requests,
        socket_errors,
        non_2xx,
    })
}

/// Checks `redis-benchmark --csv` output: a row with a positive rate for each of `tests`
/// (upper case, e.g. `SET`). Returns the rates in order, or what is wrong.
pub fn parse_redis_csv(out: &str, tests: &[&str]) -> Result<Vec<f64>, String> {
    tests
        .iter()
        .map(|test| {
            let row = out
                .lines()
                .find(|l| l.starts_with(&format!("\"{test}\",")))
                .ok_or_else(|| format!("no row for {test}"))?;
            let rps: f64 = row
                .split(',')
                .nth(1)
                .map(|f| f.trim_matches('"'))
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("malformed row {row:?}"))?;
            if rps > 0.0 {
                Ok(rps)
            } else {
                Err(format!("{test}: rate {rps}"))
            }
        })
        .collect()
}

/// A kernel client for fork-per-connection echo services: `SEQ` sequential connections, then
/// `CONC` at once (all connected before any sends), each sending `SIZE + i` random bytes,
/// shutting down its write side and requiring exactly those bytes back.
/// argv: ADDR PORT SEQ CONC SIZE.
pub const ECHO_CLIENTS: &str = r#"
import os, socket, sys, threading
addr, port, seq, conc, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def exchange(s, i):
    payload = os.urandom(size + i)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    if got != payload:
        raise SystemExit("client %d: sent %d bytes, got back %d that differ" % (i, len(payload), len(got)))
for i in range(seq):
    exchange(socket.create_connection((addr, port), timeout=20), i)
print("sequential ok %d" % seq, flush=True)
barrier = threading.Barrier(conc, timeout=20)
errors = []
def worker(i):
    try:
        s = socket.create_connection((addr, port), timeout=20)
        barrier.wait()
        exchange(s, i)
    except BaseException as e:
        errors.append("client %d: %r" % (i, e))
        barrier.abort()
threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    raise SystemExit("; ".join(errors[:5]))
print("concurrent ok %d" % conc, flush=True)
"#;

/// A kernel client for a digest service (a shell pipeline whose last program writes through
/// glibc's stdio): `N` connections, each sending `SIZE` random bytes and shutting down its
/// write side, requiring their SHA-256 back. argv: ADDR PORT N SIZE.
pub const DIGEST_CLIENTS: &str = r#"
import hashlib, os, socket, sys
addr, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    payload = os.urandom(size)
    s = socket.create_connection((addr, port), timeout=20)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    want = hashlib.sha256(payload).hexdigest()
    if got.decode(errors="replace").split()[:1] != [want]:
        raise SystemExit("client %d: digest %r, want %s" % (i, bytes(got), want))
print("digest ok %d" % n, flush=True)
"#;

/// Reads an iperf3 `-J` report (argv[1]) and prints `SENT RECEIVED REMOTE_HOST`; exits non-zero
/// if the report has an `error` or is not JSON.
pub const IPERF_REPORT: &str = r#"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit("not an iperf3 JSON report: %r" % e)
if "error" in r:
    sys.exit("iperf3 error: %s" % r["error"])
end = r["end"]
conns = r["start"]["connected"]
print(end["sum_sent"]["bytes"], end["sum_received"]["bytes"], conns[0]["remote_host"] if conns else "-")
"#;

/// A file of `bytes` random bytes at `path`.
pub fn random_bytes(path: &PathBuf, bytes: usize) {
    let status = std::process::Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}")))
        .status()
        .expect("head");
    assert!(status.success(), "head -c {bytes} /dev/urandom failed");
}

/// `PEER_ADDR` as a string, for command lines.
pub fn peer() -> String {
    PEER_ADDR.to_string()
}
