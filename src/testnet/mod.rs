//! `msock testnet`: the two-namespace test topology used by tests, demos and benchmarks.
//!
//! `up(N)` builds network namespaces `N-a` (the msock host) and `N-b` (the kernel peer) joined
//! by a veth pair `N-a0` (in `N-a`) / `N-b0` (in `N-b`):
//!
//! ```text
//!   N-a                                         N-b
//!   N-a0  198.18.0.3/24 (kernel-owned)  <-veth->  N-b0  198.18.0.1/24
//!         198.18.0.2    (msock netserver, not assigned to the kernel)
//! ```
//!
//! Contract (design card "Testing topology"; RFC 2544 reserves 198.18.0.0/15 for benchmarks):
//! - The kernel of `N-a` never answers for [`MSOCK_ADDR`]: it does not own the address, so it
//!   sends no ARP reply for it; forwarding is off (`net.ipv4.ip_forward=0`, set explicitly
//!   because new namespaces inherit IPv4 settings from the initial one), so a datagram or
//!   segment to .2 that reaches `N-a`'s IP layer is dropped silently and counted in
//!   `/proc/net/snmp` `Ip: InAddrErrors`, with no ICMP and no RST. Verified with tcpdump on
//!   `N-a0` and a static neighbour entry for .2 in `N-b` (kernel 6.18): an ICMP echo, a UDP
//!   datagram, a 3000 B fragmented UDP datagram and a TCP SYN to .2 drew no reply at all;
//!   `Icmp: OutMsgs` and `Tcp: OutRsts` stayed 0 while `InAddrErrors` rose by 7. An nftables
//!   drop rule is therefore not needed and not installed (one less moving part); the
//!   `tests/testnet.rs` test `kernel_of_a_never_answers_for_msock_address` keeps checking this.
//!   For hygiene `N-a0` also has `arp_ignore=1` (answer only for addresses on the interface),
//!   `arp_announce=2` (ARP requests use the best local source, .3) and proxy ARP off.
//! - IPv6 is disabled on both veths so captures hold only what msock and the peer send.
//! - Checksum and segmentation offloads are off on both veths (`ethtool -K tx off tso off gso
//!   off gro off`). Otherwise the peer kernel hands veth frames with *partial* checksums
//!   (CHECKSUM_PARTIAL: tcpdump shows "bad udp cksum") and 64 KiB TSO super-segments, which an
//!   AF_PACKET receiver in `N-a` sees as-is; with offloads off, frames are what a real wire
//!   carries.
//! - `up` fails cleanly (nothing changed, [`io::ErrorKind::AlreadyExists`]) if either
//!   namespace exists, and removes whatever it created if a later step fails. `down` terminates
//!   processes still running in the namespaces (SIGTERM, SIGKILL after 1 s), deletes both
//!   (the veth pair goes with them) and is idempotent.
//! - Names: `N` is 1..=[`MAX_NAME_LEN`] characters of `[a-z0-9]`, so `N-a0` fits IFNAMSIZ.
//!
//! Configuration runs iproute2's `ip`, `sysctl` (procps) and `ethtool` as child processes;
//! everything needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN for links).
#![forbid(unsafe_code)]

mod veth;
pub use veth::VethPair;

use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::wire::EthernetAddress;

/// The kernel peer's address, on `N-b0`.
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The address the msock netserver in `N-a` takes; never assigned to `N-a`'s kernel.
pub const MSOCK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The kernel-owned address on `N-a0`, for running the same programs on the kernel stack.
pub const KERNEL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Prefix length of the test subnet 198.18.0.0/24.
pub const PREFIX_LEN: u8 = 24;
/// Longest testnet name: `N-a0` must fit IFNAMSIZ (16 bytes with the NUL).
pub const MAX_NAME_LEN: usize = 10;

/// How long `down` waits for processes in a namespace to exit after SIGTERM, then SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(1);

const USAGE: &str = "usage: msock testnet up|down --name N   (N: 1-10 characters of [a-z0-9])";

/// A testnet that is up: names and link-layer addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub name: String,
    /// Namespace of the msock host (`N-a`).
    pub ns_a: String,
    /// Namespace of the kernel peer (`N-b`).
    pub ns_b: String,
    /// veth end in `N-a` (`N-a0`): the netserver's `--iface`.
    pub iface_a: String,
    /// veth end in `N-b` (`N-b0`).
    pub iface_b: String,
    /// MAC of `N-a0`: what the netserver answers ARP for [`MSOCK_ADDR`] with.
    pub mac_a: EthernetAddress,
    /// MAC of `N-b0`.
    pub mac_b: EthernetAddress,
}

/// Namespace and interface names of testnet `name` (no validation).
struct Names {
    ns_a: String,
    ns_b: String,
    iface_a: String,
    iface_b: String,
}

impl Names {
    fn of(name: &str) -> Names {
        Names {
            ns_a: format!("{name}-a"),
            ns_b: format!("{name}-b"),
            iface_a: format!("{name}-a0"),
            iface_b: format!("{name}-b0"),
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "testnet {} is up", self.name)?;
        writeln!(
            f,
            "  {:<14} msock host   {:<14} mac {}  kernel {}/{}  msock {} (netserver)",
            self.ns_a, self.iface_a, self.mac_a, KERNEL_ADDR, PREFIX_LEN, MSOCK_ADDR
        )?;
        writeln!(
            f,
            "  {:<14} kernel peer  {:<14} mac {}  kernel {}/{}",
            self.ns_b, self.iface_b, self.mac_b, PEER_ADDR, PREFIX_LEN
        )?;
        write!(
            f,
            "next: ip netns exec {} msock netserver --iface {} --addr {}/{}",
            self.ns_a, self.iface_a, MSOCK_ADDR, PREFIX_LEN
        )
    }
}

/// Checks a testnet name: 1..=[`MAX_NAME_LEN`] characters of `[a-z0-9]`.
pub fn validate_name(name: &str) -> io::Result<()> {
    let bad_char = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9'));
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "is {} characters long; at most {MAX_NAME_LEN} fit (interface {name}-a0 must fit IFNAMSIZ)",
            name.len()
        ))
    } else {
        bad_char.map(|c| format!("contains {c:?}; only a-z and 0-9 are allowed"))
    };
    match problem {
        Some(p) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad testnet name {name:?}: it {p}"),
        )),
        None => Ok(()),
    }
}

/// Builds testnet `name`; see the module documentation for what exists afterwards.
///
/// Errors: [`io::ErrorKind::InvalidInput`] for a bad name, [`io::ErrorKind::PermissionDenied`]
/// when not root, [`io::ErrorKind::AlreadyExists`] when `N-a` or `N-b` exists (left untouched),
/// otherwise the failing command and its message (everything created is removed again).
pub fn up(name: &str) -> io::Result<Topology> {
    validate_name(name)?;
    require_root()?;
    let _serial = serialize();
    let names = Names::of(name);
    let existing = list_namespaces()?;
    for ns in [&names.ns_a, &names.ns_b] {
        if existing.iter().any(|e| e == ns) {
            return Err(already_exists(name, ns));
        }
    }
    add_namespace(name, &names.ns_a)?;
    if let Err(e) = add_namespace(name, &names.ns_b) {
        let _ = delete_namespace(&names.ns_a);
        return Err(e);
    }
    match configure(name, &names) {
        Ok(topology) => Ok(topology),
        Err(e) => {
            for ns in [&names.ns_a, &names.ns_b] {
                let _ = delete_namespace(ns);
            }
            Err(io::Error::new(
                e.kind(),
                format!("testnet {name}: {e} (removed again)"),
            ))
        }
    }
}

/// Removes testnet `name`: ends processes left in its namespaces and deletes them (the veth
/// pair goes with them). Removing a testnet that does not exist succeeds.
pub fn down(name: &str) -> io::Result<()> {
    validate_name(name)?;
    require_root()?;
    let _serial = serialize();
    let names = Names::of(name);
    let existing = list_namespaces()?;
    for ns in [&names.ns_a, &names.ns_b] {
        if existing.iter().any(|e| e == ns) {
            terminate_processes(ns)?;
            if let Err(e) = delete_namespace(ns) {
                // Someone else may have removed it meanwhile; only a namespace still listed
                // is a failure.
                if list_namespaces()?.iter().any(|e| e == ns) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Whether either namespace of testnet `name` exists.
pub fn exists(name: &str) -> io::Result<bool> {
    validate_name(name)?;
    let names = Names::of(name);
    let existing = list_namespaces()?;
    Ok(existing
        .iter()
        .any(|e| *e == names.ns_a || *e == names.ns_b))
}

/// `msock testnet up|down --name N`; `args` are the arguments after `testnet`.
/// Exit status: 0 done, 1 operation failed, 2 usage error.
pub fn command(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let (action, name) = match parse_args(args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("msock testnet: {e}\n{USAGE}");
            return 2;
        }
    };
    if let Err(e) = validate_name(&name) {
        eprintln!("msock testnet: {e}");
        return 2;
    }
    let result = match action {
        Action::Up => up(&name).map(|topology| println!("{topology}")),
        Action::Down => down(&name).map(|()| println!("testnet {name} is down")),
    };
    match result {
        Ok(()) => {
            let _ = io::stdout().flush();
            0
        }
        Err(e) => {
            eprintln!("msock testnet {}: {e}", action.word());
            1
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Up,
    Down,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Up => "up",
            Action::Down => "down",
        }
    }
}

fn parse_args(args: &[String]) -> Result<(Action, String), String> {
    let (flags, positional) = crate::cli::parse_flags(args, &["name"], &[])?;
    if let Some(dash) = positional.iter().find(|p| p.starts_with('-')) {
        return Err(format!("unknown option {dash}"));
    }
    let action = match positional.as_slice() {
        [one] if one == "up" => Action::Up,
        [one] if one == "down" => Action::Down,
        [] => return Err("say up or down".into()),
        [one] => return Err(format!("unknown action '{one}' (up or down)")),
        [_, extra, ..] => return Err(format!("unexpected argument '{extra}'")),
    };
    let mut names = flags
        .into_iter()
        .filter(|(n, _)| n == "name")
        .map(|(_, v)| v);
    let name = names.next().ok_or("--name N is required")?;
    if names.next().is_some() {
        return Err("--name given more than once".into());
    }
    Ok((action, name))
}

/// Serializes `up`/`down` within this process: parallel tests would otherwise run many `ip
/// netns add` at once, which can race on iproute2's first bind mount of /run/netns.
fn serialize() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A panic while holding the lock leaves nothing inconsistent behind: the guard protects
    // no data.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require_root() -> io::Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "testnet needs root (network namespaces and veth links)",
        ))
    }
}

fn already_exists(name: &str, ns: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "testnet {name} already exists (namespace {ns}); remove it with `msock testnet down --name {name}`"
        ),
    )
}

fn configure(name: &str, n: &Names) -> io::Result<Topology> {
    // Create each end directly in its namespace: the host's interfaces are never involved and
    // a host interface with the same name cannot collide.
    run(
        "ip",
        &[
            "link", "add", &n.iface_a, "netns", &n.ns_a, "type", "veth", "peer", "name",
            &n.iface_b, "netns", &n.ns_b,
        ],
    )?;
    // Before the links come up, so no IPv6 router solicitation or MLD report is ever sent.
    let mut a_sysctls = vec![
        "net.ipv4.ip_forward=0".to_string(),
        "net.ipv4.conf.all.proxy_arp=0".to_string(),
        format!("net.ipv4.conf.{}.proxy_arp=0", n.iface_a),
        format!("net.ipv4.conf.{}.arp_ignore=1", n.iface_a),
        format!("net.ipv4.conf.{}.arp_announce=2", n.iface_a),
    ];
    let mut b_sysctls = Vec::new();
    if Path::new("/proc/sys/net/ipv6").exists() {
        a_sysctls.push(format!("net.ipv6.conf.{}.disable_ipv6=1", n.iface_a));
        b_sysctls.push(format!("net.ipv6.conf.{}.disable_ipv6=1", n.iface_b));
    }
    sysctl(&n.ns_a, &a_sysctls)?;
    if !b_sysctls.is_empty() {
        sysctl(&n.ns_b, &b_sysctls)?;
    }
    for (ns, iface) in [(&n.ns_a, &n.iface_a), (&n.ns_b, &n.iface_b)] {
        in_namespace(
            ns,
            "ethtool",
            &[
                "-K", iface, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ],
        )?;
    }
    let a_addr = format!("{KERNEL_ADDR}/{PREFIX_LEN}");
    let b_addr = format!("{PEER_ADDR}/{PREFIX_LEN}");
    for (ns, iface, addr) in [
        (&n.ns_a, &n.iface_a, &a_addr),
        (&n.ns_b, &n.iface_b, &b_addr),
    ] {
        let batch = format!("link set lo up\naddr add {addr} dev {iface}\nlink set {iface} up\n");
        run_with_input("ip", &["-n", ns, "-batch", "-"], &batch)?;
    }
    Ok(Topology {
        name: name.to_string(),
        ns_a: n.ns_a.clone(),
        ns_b: n.ns_b.clone(),
        iface_a: n.iface_a.clone(),
        iface_b: n.iface_b.clone(),
        mac_a: link_mac(&n.ns_a, &n.iface_a)?,
        mac_b: link_mac(&n.ns_b, &n.iface_b)?,
    })
}

fn add_namespace(name: &str, ns: &str) -> io::Result<()> {
    match run("ip", &["netns", "add", ns]) {
        Ok(_) => Ok(()),
        // Lost a race with another process creating the same name.
        Err(e) if e.to_string().contains("File exists") => Err(already_exists(name, ns)),
        Err(e) => Err(e),
    }
}

fn delete_namespace(ns: &str) -> io::Result<()> {
    run("ip", &["netns", "delete", ns]).map(|_| ())
}

/// Names of the namespaces `ip netns list` shows (lines are `name` or `name (id: N)`).
fn list_namespaces() -> io::Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    Ok(parse_netns_list(&out))
}

fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Ends every process in `ns` except this one and its parent (SIGTERM, then SIGKILL).
fn terminate_processes(ns: &str) -> io::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let me = [
        nix::unistd::getpid().as_raw(),
        nix::unistd::getppid().as_raw(),
    ];
    let pids = |ns: &str| -> io::Result<Vec<i32>> {
        let out = run("ip", &["netns", "pids", ns])?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| !me.contains(p))
            .collect())
    };
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        // A namespace whose processes cannot be listed (e.g. a stale /run/netns entry left by
        // a crash) has none we could signal: let the caller delete it.
        let Ok(victims) = pids(ns) else { return Ok(()) };
        if victims.is_empty() {
            return Ok(());
        }
        for pid in &victims {
            // ESRCH: it exited meanwhile, which is what we want.
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline {
            // An exited (even unreaped) process no longer has a network namespace, so
            // `ip netns pids` stops listing it.
            if pids(ns)?.is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let left = pids(ns)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "processes {left:?} in {ns} survived SIGKILL"
        )))
    }
}

/// MAC address of `iface` in `ns`, from `ip -o link show`.
fn link_mac(ns: &str, iface: &str) -> io::Result<EthernetAddress> {
    let out = run("ip", &["-n", ns, "-o", "link", "show", "dev", iface])?;
    parse_link_mac(&out)
        .ok_or_else(|| io::Error::other(format!("no link/ether address for {iface} in: {out}")))
}

fn parse_link_mac(text: &str) -> Option<EthernetAddress> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    words.next()?.parse().ok()
}

fn sysctl(ns: &str, settings: &[String]) -> io::Result<()> {
    let mut args = vec!["-q", "-w"];
    args.extend(settings.iter().map(String::as_str));
    in_namespace(ns, "sysctl", &args).map(|_| ())
}

/// Runs `tool args` inside namespace `ns` (`ip netns exec`).
fn in_namespace(ns: &str, tool: &str, args: &[&str]) -> io::Result<String> {
    let tool_path = find_tool(tool)?;
    let tool_path = tool_path.to_string_lossy().into_owned();
    let mut full = vec!["netns", "exec", ns, tool_path.as_str()];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn run(tool: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(find_tool(tool)?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {tool}: {e}")))?;
    check(tool, args, out)
}

fn run_with_input(tool: &str, args: &[&str], input: &str) -> io::Result<String> {
    let mut child = Command::new(find_tool(tool)?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {tool}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    check(tool, args, out)
}

fn check(tool: &str, args: &[&str], out: Output) -> io::Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let detail = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    Err(io::Error::other(format!(
        "`{tool} {}` failed ({}): {detail}",
        args.join(" "),
        out.status
    )))
}

/// Finds `tool` in PATH or the sbin directories (root's tools are often not in a user PATH).
fn find_tool(tool: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let fixed = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(fixed)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let package = match tool {
                "ip" => "iproute2",
                "sysctl" => "procps",
                other => other,
            };
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{tool} not found (install the {package} package)"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "t1", "abcdefghij", "0123456789"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "abcdefghijk",
            "A",
            "a-b",
            "a_b",
            "a b",
            "a/b",
            "é",
            "a\n",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        let long = "x".repeat(MAX_NAME_LEN);
        assert!(
            format!("{long}-a0").len() < 16,
            "fits IFNAMSIZ with the NUL"
        );
    }

    #[test]
    fn invalid_name_fails_before_touching_anything() {
        assert_eq!(up("Bad").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            down("way-too-long-name").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&args(&["up", "--name", "x1"])).unwrap(),
            (Action::Up, "x1".into())
        );
        assert_eq!(
            parse_args(&args(&["--name=x1", "down"])).unwrap(),
            (Action::Down, "x1".into())
        );
        assert!(parse_args(&args(&["up"])).is_err());
        assert!(parse_args(&args(&["--name", "x"])).is_err());
        assert!(parse_args(&args(&["sideways", "--name", "x"])).is_err());
        assert!(parse_args(&args(&["up", "down", "--name", "x"])).is_err());
        assert!(parse_args(&args(&["up", "--name", "x", "--impair", "loss=1"])).is_err());
        assert!(parse_args(&args(&["up", "--name", "x", "-v"])).is_err());
        assert!(parse_args(&args(&["up", "--name", "x", "--name", "y"])).is_err());
        assert!(parse_args(&args(&["up", "--name"])).is_err());
    }

    #[test]
    fn command_usage_errors_exit_2() {
        assert_eq!(command(&args(&[])), 2);
        assert_eq!(command(&args(&["up", "--name", "NOPE"])), 2);
        assert_eq!(command(&args(&["up", "--name", "x", "--impair"])), 2);
        assert_eq!(command(&args(&["--help"])), 0);
    }

    #[test]
    fn netns_list_parsing() {
        let text = "t1-b (id: 1)\nt1-a (id: 0)\nplain\n\n";
        assert_eq!(parse_netns_list(text), vec!["t1-b", "t1-a", "plain"]);
        assert!(parse_netns_list("").is_empty());
    }

    #[test]
    fn link_mac_parsing() {
        let line = "2: t1-a0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP \
                    mode DEFAULT group default qlen 1000\\    link/ether f6:42:ca:22:04:ce brd \
                    ff:ff:ff:ff:ff:ff link-netns t1-b";
        assert_eq!(
            parse_link_mac(line),
            Some(EthernetAddress([0xf6, 0x42, 0xca, 0x22, 0x04, 0xce]))
        );
        assert_eq!(
            parse_link_mac("1: lo: <LOOPBACK> link/loopback 00:00:00:00:00:00"),
            None
        );
        assert_eq!(parse_link_mac("link/ether zz:00"), None);
        assert_eq!(parse_link_mac("link/ether"), None);
    }

    #[test]
    fn topology_display_names_everything() {
        let t = Topology {
            name: "t1".into(),
            ns_a: "t1-a".into(),
            ns_b: "t1-b".into(),
            iface_a: "t1-a0".into(),
            iface_b: "t1-b0".into(),
            mac_a: EthernetAddress([2, 0, 0, 0, 0, 0xa]),
            mac_b: EthernetAddress([2, 0, 0, 0, 0, 0xb]),
        };
        let text = t.to_string();
        for needle in [
            "t1-a0",
            "t1-b0",
            "02:00:00:00:00:0a",
            "02:00:00:00:00:0b",
            "198.18.0.1/24",
            "198.18.0.2",
            "198.18.0.3/24",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn missing_tool_is_a_clear_error() {
        let e = find_tool("msock-no-such-tool").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("not found"));
    }
}
