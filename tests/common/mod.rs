//! The harness shared by msock's integration tests: `mod common;` at the top of a
//! `tests/*.rs` file.
//!
//! - [`TestNet::new`] builds a private testnet (`msock::testnet::up`) under a unique short name
//!   and removes it in `Drop`, after killing every process it spawned; it returns `None` (the
//!   test should `return`) when namespaces cannot be used here, after printing why. Under CI
//!   (`CI` set and not `false`/`0`) that is a failure instead, so CI never passes vacuously.
//! - Commands run inside a namespace through `ip netns exec`: [`TestNet::exec_a`] /
//!   [`TestNet::exec_b`] wait for the output (with a timeout, never hanging a test run);
//!   [`TestNet::spawn_a`] / [`TestNet::spawn_b`] return a [`Proc`] guard whose output goes to a
//!   log file and which is stopped when dropped (its log is printed if the test is failing).
//!   The `*_msock` variants run the program under `msock run` with the built `libmsock.so`.
//! - [`TestNet::start_netserver`] starts `msock netserver` on `N-a0` with 198.18.0.2/24 and
//!   waits until `msock stat` answers; [`TestNet::stat_json`] and
//!   [`TestNet::wait_for_endpoint`] read the netserver's state.
//! - [`msock_bin`] and [`libmsock`] find the built artifacts: the `msock` binary cargo built for
//!   this test's profile, and `libmsock.so` beside it (else `$CARGO_TARGET_DIR/release`, else
//!   `target/release`; `MSOCK_LIB` overrides). `make test` builds both before running tests.
//! - [`wait_until`], [`TempDir`], [`parse_mac`] are small utilities.
//!
//! Every network test must use its own `TestNet` (addresses are always 198.18.0.0/24, names
//! differ) and nothing else on the host.
#![allow(dead_code, unused_imports)]

pub mod programs;
pub mod streams;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use msock::testnet::{KERNEL_ADDR, MSOCK_ADDR, PEER_ADDR, PREFIX_LEN, Topology};

/// Longest a command run with [`TestNet::exec`] may take before the test fails.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a [`Proc`] gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long [`TestNet::start_netserver`] and [`TestNet::wait_for_endpoint`] wait.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Polls `cond` until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether we run under CI, where a skipped namespace test must fail instead.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Why namespace tests cannot run here, if they cannot.
pub fn netns_unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("ethtool", "ethtool"),
    ] {
        if find_tool(tool).is_none() {
            return Some(format!("{tool} not installed (package {package})"));
        }
    }
    None
}

/// Prints why a namespace test is skipped and returns true, or returns false when it can run.
/// Panics under CI instead of skipping.
pub fn skip_without_netns(test: &str) -> bool {
    match netns_unavailable() {
        None => false,
        Some(why) if under_ci() => panic!("{test}: {why}; CI must run namespace tests"),
        Some(why) => {
            eprintln!("skipped {test}: {why}");
            true
        }
    }
}

/// A unique testnet name: `prefix` (first 3 characters, `[a-z0-9]`), this process's pid in
/// base 36 padded to 5 digits, and a per-process counter in 2 base-36 digits. The fixed-width
/// fields keep names of different prefixes distinct, and the total fits
/// `msock::testnet::MAX_NAME_LEN` (10).
pub fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(3)
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % (36 * 36);
    format!("{prefix}{}{}", base36(std::process::id(), 5), base36(n, 2))
}

fn base36(mut v: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while v > 0 || out.is_empty() {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The `msock` binary built for this test's profile (`target/release/msock` under `make test`).
pub fn msock_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_msock") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("release/msock");
    assert!(p.is_file(), "{} not built: run `make` first", p.display());
    p
}

/// `$CARGO_TARGET_DIR` (relative to the workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// `libmsock.so`: `MSOCK_LIB`, else beside [`msock_bin`], else `<target>/release`.
/// Panics with the command to run when it has not been built.
pub fn libmsock() -> PathBuf {
    if let Some(p) = std::env::var_os("MSOCK_LIB") {
        return PathBuf::from(p);
    }
    let beside = msock_bin().with_file_name("libmsock.so");
    let release = target_dir().join("release/libmsock.so");
    [beside, release.clone()]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} not built: run `make` (cargo build --release --workspace) first",
                release.display()
            )
        })
}

/// Finds a tool in PATH or the sbin directories.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Whether `tool` is installed.
pub fn have(tool: &str) -> bool {
    find_tool(tool).is_some()
}

/// `aa:bb:cc:dd:ee:ff` → bytes; panics on anything else (test input).
pub fn parse_mac(text: &str) -> [u8; 6] {
    match text.trim().parse::<msock::wire::EthernetAddress>() {
        Ok(mac) => mac.0,
        Err(_) => panic!("not a MAC address: {text:?}"),
    }
}

/// Lossy UTF-8 of a command's stdout.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lossy UTF-8 of a command's stderr.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("msock-{tag}-{}-{n}", std::process::id()));
        // A leftover from a crashed run of a process with the same pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Pids of processes a [`TestNet`] spawned that have not been reaped yet. A pid is removed
/// before its child is reaped, so a pid in here can never belong to an unrelated process.
type Registry = Arc<Mutex<Vec<u32>>>;

fn lock(registry: &Registry) -> std::sync::MutexGuard<'_, Vec<u32>> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process spawned by a [`TestNet`]: stdout and stderr go to a log file; dropping the guard
/// stops it (SIGTERM, SIGKILL after [`STOP_GRACE`]) and, if the test is panicking, prints the
/// end of its log.
pub struct Proc {
    child: Child,
    label: String,
    log_path: PathBuf,
    registry: Registry,
    /// Keeps the log directory alive as long as any process writes into it.
    _logs: Arc<TempDir>,
    stopped: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Everything the process wrote so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process's stdin, if it was spawned with `Stdio::piped()` (first call only).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.stopped.is_some() {
            return self.stopped;
        }
        // Deregister before reaping: once reaped the pid may be reused.
        let pid = self.pid();
        let mut reg = lock(&self.registry);
        match self.child.try_wait() {
            Ok(Some(status)) => {
                reg.retain(|p| *p != pid);
                self.stopped = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_status();
            status.is_some()
        });
        status
    }

    /// Stops the process (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        // The child is not reaped yet, so the pid is still ours.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(STOP_GRACE) {
            return status;
        }
        let _ = self.child.kill();
        let pid_u32 = self.pid();
        let mut reg = lock(&self.registry);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.label));
        reg.retain(|p| *p != pid_u32);
        self.stopped = Some(status);
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail = &log[log.len().saturating_sub(4096)..];
            let tail = tail.trim_start_matches(|c: char| !c.is_ascii());
            eprintln!(
                "--- log of {} (pid {}), last 4 KiB ---\n{tail}\n--- end of {} ---",
                self.label,
                self.pid(),
                self.label
            );
        }
    }
}

/// A private testnet (`N-a` msock host, `N-b` kernel peer), removed on drop.
pub struct TestNet {
    topology: Topology,
    registry: Registry,
    logs: Arc<TempDir>,
    ip: PathBuf,
    torn_down: bool,
}

impl TestNet {
    /// Builds a testnet named `prefix` + unique suffix; `None` (after printing why) when
    /// namespaces cannot be used here. Panics if the testnet cannot be built.
    pub fn new(prefix: &str) -> Option<TestNet> {
        if skip_without_netns(prefix) {
            return None;
        }
        let name = unique_name(prefix);
        let topology = match msock::testnet::up(&name) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Names embed our pid and a per-process counter, so an existing one was left
                // by a crashed earlier process that had the same pid.
                eprintln!("testnet {name} left over from an earlier run; removing it");
                msock::testnet::down(&name).unwrap_or_else(|e| panic!("down {name}: {e}"));
                msock::testnet::up(&name).unwrap_or_else(|e| panic!("up {name}: {e}"))
            }
            Err(e) => panic!("testnet up {name}: {e}"),
        };
        let ip = find_tool("ip").unwrap_or_else(|| PathBuf::from("ip"));
        Some(TestNet {
            topology,
            registry: Arc::new(Mutex::new(Vec::new())),
            logs: Arc::new(TempDir::new(&format!("{name}-logs"))),
            ip,
            torn_down: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.topology.name
    }
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
    /// The msock host namespace `N-a`.
    pub fn ns_a(&self) -> &str {
        &self.topology.ns_a
    }
    /// The kernel peer namespace `N-b`.
    pub fn ns_b(&self) -> &str {
        &self.topology.ns_b
    }
    /// `N-a0`, the netserver's interface.
    pub fn iface_a(&self) -> &str {
        &self.topology.iface_a
    }
    /// `N-b0`, the peer's interface.
    pub fn iface_b(&self) -> &str {
        &self.topology.iface_b
    }
    /// MAC of `N-a0`, lowercase `aa:bb:cc:dd:ee:ff` (as `ip neigh` prints it).
    pub fn mac_a0(&self) -> String {
        self.topology.mac_a.to_string()
    }
    /// MAC of `N-b0`.
    pub fn mac_b0(&self) -> String {
        self.topology.mac_b.to_string()
    }

    /// `ip netns exec <ns> argv...`, stdin from /dev/null; add env, stdin etc. before running
    /// it with [`TestNet::exec`] or [`TestNet::spawn`].
    pub fn command_in(&self, ns: &str, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "empty command");
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null());
        c
    }
    pub fn command_a(&self, argv: &[&str]) -> Command {
        self.command_in(self.ns_a(), argv)
    }
    pub fn command_b(&self, argv: &[&str]) -> Command {
        self.command_in(self.ns_b(), argv)
    }
    /// `argv` under `msock run` (with the built libmsock.so) in `N-a`.
    pub fn command_a_msock(&self, argv: &[&str]) -> Command {
        let msock = msock_bin();
        let lib = libmsock();
        let mut full = vec![path_str(&msock), "run", "--lib", path_str(&lib), "--"];
        full.extend_from_slice(argv);
        self.command_a(&full)
    }
    /// `msock <args>` in `N-a` (the binary under test, e.g. `stat --json`).
    pub fn command_msock_cli(&self, args: &[&str]) -> Command {
        let msock = msock_bin();
        let mut full = vec![path_str(&msock)];
        full.extend_from_slice(args);
        self.command_a(&full)
    }

    /// Runs `cmd` to completion, failing the test after [`EXEC_TIMEOUT`].
    pub fn exec(&self, cmd: Command) -> Output {
        exec_timeout(cmd, EXEC_TIMEOUT)
    }
    pub fn exec_a(&self, argv: &[&str]) -> Output {
        self.exec(self.command_a(argv))
    }
    pub fn exec_b(&self, argv: &[&str]) -> Output {
        self.exec(self.command_b(argv))
    }
    pub fn exec_a_msock(&self, argv: &[&str]) -> Output {
        self.exec(self.command_a_msock(argv))
    }

    /// Starts `cmd` with its output in a log file; the guard stops it when dropped and the
    /// testnet kills it on teardown if it is still running.
    pub fn spawn(&self, label: &str, mut cmd: Command) -> Proc {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let log_path = self
            .logs
            .path()
            .join(format!("{n}-{}.log", sanitize(label)));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("dup log: {e}"));
        cmd.stdout(log).stderr(log2);
        let mut reg = lock(&self.registry);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
        reg.push(child.id());
        drop(reg);
        Proc {
            child,
            label: label.to_string(),
            log_path,
            registry: self.registry.clone(),
            _logs: self.logs.clone(),
            stopped: None,
        }
    }
    pub fn spawn_a(&self, argv: &[&str]) -> Proc {
        self.spawn(label_of(argv), self.command_a(argv))
    }
    pub fn spawn_b(&self, argv: &[&str]) -> Proc {
        self.spawn(label_of(argv), self.command_b(argv))
    }
    pub fn spawn_a_msock(&self, argv: &[&str]) -> Proc {
        self.spawn(label_of(argv), self.command_a_msock(argv))
    }

    /// Starts `msock netserver --iface N-a0 --addr 198.18.0.2/24` in `N-a` with extra
    /// environment `env`, and waits until `msock stat` answers. Panics (showing the
    /// netserver's log) if it exits or is not ready within [`READY_TIMEOUT`].
    pub fn start_netserver(&self, env: &[(&str, &str)]) -> Proc {
        self.start_netserver_with(&format!("{MSOCK_ADDR}/{PREFIX_LEN}"), &[], env)
    }

    /// As [`TestNet::start_netserver`] with another `--addr A.B.C.D/N` and extra arguments
    /// (e.g. `--gateway G`).
    pub fn start_netserver_with(&self, addr: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let iface = self.iface_a().to_string();
        let mut args = vec!["netserver", "--iface", &iface, "--addr", addr];
        args.extend_from_slice(extra);
        let mut cmd = self.command_msock_cli(&args);
        cmd.envs(env.iter().copied());
        let mut proc = self.spawn("netserver", cmd);
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(status) = proc.try_status() {
                panic!(
                    "netserver exited ({status}) during start-up:\n{}",
                    proc.log()
                );
            }
            self.try_stat_json().is_some()
        });
        assert!(
            ready,
            "netserver not answering `msock stat` after {READY_TIMEOUT:?}:\n{}",
            proc.log()
        );
        proc
    }

    /// `msock stat --json` in `N-a`, or `None` if it fails (no netserver).
    pub fn try_stat_json(&self) -> Option<String> {
        let out = exec_timeout(
            self.command_msock_cli(&["stat", "--json"]),
            Duration::from_secs(10),
        );
        out.status
            .success()
            .then(|| stdout_of(&out).trim().to_string())
    }

    /// `msock stat --json` in `N-a`; panics if the netserver does not answer.
    pub fn stat_json(&self) -> String {
        let out = exec_timeout(
            self.command_msock_cli(&["stat", "--json"]),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "msock stat --json failed: {}",
            stderr_of(&out)
        );
        stdout_of(&out).trim().to_string()
    }

    /// Waits until `msock stat --json` contains `needle` (e.g. `":7002"` once a socket bound
    /// port 7002); panics with the last output after [`READY_TIMEOUT`].
    pub fn wait_for_endpoint(&self, needle: &str) {
        let mut last = String::new();
        let found = wait_until(READY_TIMEOUT, || {
            last = self.try_stat_json().unwrap_or_default();
            last.contains(needle)
        });
        assert!(
            found,
            "{needle:?} not in msock stat after {READY_TIMEOUT:?}: {last}"
        );
    }

    /// Kills what is left of the spawned processes and removes the testnet, reporting errors
    /// (dropping does the same but can only panic).
    pub fn teardown(mut self) -> io::Result<()> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> io::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        for pid in lock(&self.registry).iter() {
            // Registered pids are unreaped children of ours: never someone else's process.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let result = msock::testnet::down(self.name());
        // Every process is gone; a guard that outlives the testnet finds its log missing.
        let _ = std::fs::remove_dir_all(self.logs.path());
        result
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            let msg = format!("testnet {} not removed: {e}", self.topology.name);
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

fn label_of<'a>(argv: &[&'a str]) -> &'a str {
    argv.first().copied().unwrap_or("empty")
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

fn sanitize(label: &str) -> String {
    let base = label.rsplit('/').next().unwrap_or(label);
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect()
}

/// Runs `cmd` with stdout and stderr captured; kills it and fails the test after `timeout`.
pub fn exec_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    for (which, pipe) in [
        (
            0,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            1,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            let _ = tx.send((which, buf));
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} still running after {timeout:?}: killed");
            }
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    // A daemon the command left behind may hold the pipes open: do not wait forever for EOF.
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..2 {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((0, b)) => stdout = b,
            Ok((_, b)) => stderr = b,
            Err(_) => break,
        }
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

impl TestNet {
    /// As [`TestNet::new`], with a link emulator between `N-a` and `N-b` (`impair`: an
    /// `--impair` spec such as `"loss=10%,seed=7"` or `"none"`) and/or nftables drops of IPv4
    /// arriving on `N-b0` (`nft_drop`: e.g. `"1%"`). The emulator runs [`msock_bin`]. Panics
    /// on a malformed spec or if the testnet cannot be built.
    pub fn with_options(
        prefix: &str,
        impair: Option<&str>,
        nft_drop: Option<&str>,
    ) -> Option<TestNet> {
        if skip_without_netns(prefix) {
            return None;
        }
        let options = msock::testnet::UpOptions {
            impair: impair.map(|s| s.parse().unwrap_or_else(|e| panic!("--impair {s}: {e}"))),
            nft_drop: nft_drop.map(|s| {
                msock::testnet::Probability::parse_percent(s)
                    .unwrap_or_else(|e| panic!("--nft-drop {s}: {e}"))
            }),
            msock_bin: Some(msock_bin()),
        };
        let name = unique_name(prefix);
        let topology = match msock::testnet::up_with(&name, &options) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                eprintln!("testnet {name} left over from an earlier run; removing it");
                msock::testnet::down(&name).unwrap_or_else(|e| panic!("down {name}: {e}"));
                msock::testnet::up_with(&name, &options)
                    .unwrap_or_else(|e| panic!("up {name}: {e}"))
            }
            Err(e) => panic!("testnet up {name}: {e}"),
        };
        let ip = find_tool("ip").unwrap_or_else(|| PathBuf::from("ip"));
        Some(TestNet {
            topology,
            registry: Arc::new(Mutex::new(Vec::new())),
            logs: Arc::new(TempDir::new(&format!("{name}-logs"))),
            ip,
            torn_down: false,
        })
    }

    /// Fresh counters of the link emulator (panics if there is none or it does not answer).
    pub fn emulator_stats(&self) -> msock::testnet::EmulatorStats {
        msock::testnet::emulator_stats(self.name())
            .unwrap_or_else(|e| panic!("emulator stats of {}: {e}", self.name()))
    }

    /// Permanent neighbour entries for the kernel addresses (.3 in `N-b`, .1 in `N-a`), so
    /// no ARP crosses the link: loss tests then count only their own packets.
    pub fn pin_neighbours(&self) {
        let pairs = [
            (self.ns_b(), KERNEL_ADDR, self.mac_a0(), self.iface_b()),
            (self.ns_a(), PEER_ADDR, self.mac_b0(), self.iface_a()),
        ];
        for (ns, addr, mac, dev) in pairs {
            let addr = addr.to_string();
            let out = exec_timeout(
                self.command_in(
                    ns,
                    &[
                        "ip",
                        "neigh",
                        "replace",
                        &addr,
                        "lladdr",
                        &mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ],
                ),
                Duration::from_secs(10),
            );
            assert!(
                out.status.success(),
                "ip neigh replace: {}",
                stderr_of(&out)
            );
        }
    }
}
