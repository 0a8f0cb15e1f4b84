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
//! With `--impair SPEC` ([`up_with`], [`UpOptions::impair`]) a third namespace `N-m` sits in
//! the middle and `N-a0`/`N-b0` keep their names, addresses and settings, so nothing else
//! changes:
//!
//! ```text
//!   N-a                     N-m (link emulator)                   N-b
//!   N-a0  <-veth->  N-ma  [msock testnet emulate]  N-mb  <-veth->  N-b0
//! ```
//!
//! `N-ma`/`N-mb` have no addresses, no IPv6, offloads off like the outer ends, and are
//! promiscuous; the emulator ([`emulator`]: an AF_PACKET socket per side, a seeded
//! [`impair::LinkModel`] per direction) forwards every frame, ARP included, applying loss,
//! delay, jitter, reordering, duplication, corruption and a rate limit reproducibly. It runs as
//! a daemon (`msock testnet emulate`, started by `up`, ended by `down`) with its pid, log and
//! counters in [`run_dir`] (`/run/msock-testnet-N/`); [`emulator_stats`] asks it for fresh
//! counters. `--nft-drop P%` ([`UpOptions::nft_drop`]) adds an independent, unseeded source of
//! loss: an nftables table `ip msock_testnet` in `N-b` drops that share of the IPv4 packets
//! arriving on `N-b0` (`numgen random mod 1000 < X`), counted ([`nft_dropped`]).
//!
//! Configuration runs iproute2's `ip`, `sysctl` (procps), `ethtool` and `nft` as child
//! processes; everything needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN for links).
#![forbid(unsafe_code)]

pub mod emulator;
pub mod impair;
mod veth;
pub use emulator::EmulatorStats;
pub use impair::{ImpairSpec, Probability};
pub use veth::VethPair;

use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// How long `up` waits for the emulator to open its sockets.
const EMULATOR_START: Duration = Duration::from_secs(10);

/// The nftables table `--nft-drop` installs in `N-b`.
pub const NFT_TABLE: &str = "msock_testnet";

const USAGE: &str = "\
usage: msock testnet up|down --name N [--impair SPEC] [--nft-drop P%]
       msock testnet stats --name N
  N             1-10 characters of [a-z0-9]: namespaces N-a (msock host), N-b (kernel peer)
  --impair SPEC a seeded link emulator in namespace N-m between N-a0 and N-b0; SPEC is
                KEY=VALUE,... with every key optional, or `none` (transparent):
                loss=2%,delay=5ms,jitter=1ms,reorder=5%,dup=1%,corrupt=0.1%,
                rate=100mbit,limit=10000,seed=S  (same seed, same traffic: same fate)
  --nft-drop P% nftables in N-b drops P% (steps of 0.1%) of IPv4 arriving on N-b0
  stats         the emulator's counters per direction (/run/msock-testnet-N/emulator.stats)";

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
    /// The link emulator between them, with `--impair`.
    pub middle: Option<Middle>,
    /// With `--nft-drop`: the share of IPv4 packets arriving on `N-b0` that `N-b` drops.
    pub nft_drop: Option<Probability>,
}

/// The link emulator of an impaired testnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Middle {
    /// Its namespace, `N-m`.
    pub ns: String,
    /// veth end facing `N-a0` (`N-ma`) and the one facing `N-b0` (`N-mb`).
    pub iface_a: String,
    pub iface_b: String,
    pub spec: ImpairSpec,
    /// The emulator process.
    pub pid: u32,
    /// Its pid, log and stats files ([`run_dir`]).
    pub run_dir: PathBuf,
}

/// How to build a testnet; `Default` is the plain two-namespace one.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Put a link emulator with these impairments between `N-a` and `N-b`.
    pub impair: Option<ImpairSpec>,
    /// Drop this share (a multiple of 0.1 %) of IPv4 packets arriving on `N-b0` with nftables.
    pub nft_drop: Option<Probability>,
    /// The `msock` binary to run the emulator with (`msock testnet emulate`); default: the
    /// running executable, which is right for the `msock` command but not for a test binary.
    pub msock_bin: Option<PathBuf>,
}

/// Namespace and interface names of testnet `name` (no validation).
struct Names {
    ns_a: String,
    ns_b: String,
    ns_m: String,
    iface_a: String,
    iface_b: String,
    iface_ma: String,
    iface_mb: String,
}

impl Names {
    fn of(name: &str) -> Names {
        Names {
            ns_a: format!("{name}-a"),
            ns_b: format!("{name}-b"),
            ns_m: format!("{name}-m"),
            iface_a: format!("{name}-a0"),
            iface_b: format!("{name}-b0"),
            iface_ma: format!("{name}-ma"),
            iface_mb: format!("{name}-mb"),
        }
    }
}

/// `/run/msock-testnet-N`: the emulator's pid file, log and stats of testnet `name`.
pub fn run_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/msock-testnet-{name}"))
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
        if let Some(m) = &self.middle {
            writeln!(
                f,
                "  {:<14} link emulator {} <-> {}  impair {}  pid {}  stats {}",
                m.ns,
                m.iface_a,
                m.iface_b,
                m.spec,
                m.pid,
                m.run_dir.join(emulator::STATS_FILE).display()
            )?;
        }
        if let Some(p) = self.nft_drop {
            writeln!(
                f,
                "  {:<14} nftables table ip {NFT_TABLE} drops {p} of IPv4 arriving on {}",
                self.ns_b, self.iface_b
            )?;
        }
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
    up_with(name, &UpOptions::default())
}

/// [`up`] with a link emulator (`impair`) and/or nftables drops in `N-b` (`nft_drop`). Fails
/// like [`up`], also when `N-m` exists, when `nft_drop` is not a multiple of 0.1 % in
/// (0, 100 %], or when the emulator does not start (its log is quoted); in every failure
/// everything created is removed again, the emulator included.
pub fn up_with(name: &str, options: &UpOptions) -> io::Result<Topology> {
    validate_name(name)?;
    if let Some(p) = options.nft_drop {
        nft_per_mille(p)?;
    }
    require_root()?;
    let _serial = serialize();
    let names = Names::of(name);
    let existing = list_namespaces()?;
    let mut wanted = vec![&names.ns_a, &names.ns_b];
    if options.impair.is_some() {
        wanted.push(&names.ns_m);
    }
    for ns in &wanted {
        if existing.iter().any(|e| e == *ns) {
            return Err(already_exists(name, ns));
        }
    }
    let mut created = Vec::new();
    for ns in &wanted {
        if let Err(e) = add_namespace(name, ns) {
            // The run directory may be another process's that won the race for the name.
            let _ = remove(name, &created, false);
            return Err(e);
        }
        created.push((*ns).clone());
    }
    match configure(name, &names, options) {
        Ok(topology) => Ok(topology),
        Err(e) => {
            let _ = remove(name, &created, true);
            Err(io::Error::new(
                e.kind(),
                format!("testnet {name}: {e} (removed again)"),
            ))
        }
    }
}

/// Removes testnet `name`: ends processes left in its namespaces (the emulator first, which
/// writes its last counters on SIGTERM) and deletes them (the veth pairs go with them) and its
/// [`run_dir`]. Removing a testnet that does not exist succeeds.
pub fn down(name: &str) -> io::Result<()> {
    validate_name(name)?;
    require_root()?;
    let _serial = serialize();
    let names = Names::of(name);
    let existing = list_namespaces()?;
    let present: Vec<String> = [&names.ns_m, &names.ns_a, &names.ns_b]
        .into_iter()
        .filter(|ns| existing.iter().any(|e| e == *ns))
        .cloned()
        .collect();
    remove(name, &present, true)
}

/// Ends the processes in `namespaces` (in order), deletes them, reaps an emulator this process
/// started and removes the run directory if `run_dir_too`.
fn remove(name: &str, namespaces: &[String], run_dir_too: bool) -> io::Result<()> {
    let mut result = Ok(());
    for ns in namespaces {
        let step = terminate_processes(ns).and_then(|()| match delete_namespace(ns) {
            Ok(()) => Ok(()),
            // Someone else may have removed it meanwhile; only a namespace still listed is a
            // failure.
            Err(e) if list_namespaces()?.iter().any(|e| e == ns) => Err(e),
            Err(_) => Ok(()),
        });
        if result.is_ok() {
            result = step;
        }
    }
    reap_emulators(name);
    if !run_dir_too {
        return result;
    }
    match std::fs::remove_dir_all(run_dir(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound && result.is_ok() => Err(e),
        _ => result,
    }
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

/// Fresh counters of testnet `name`'s link emulator: it is asked (SIGUSR1) to write its stats
/// file, which is then read. After the emulator has exited (but before `down`), its last
/// counters.
pub fn emulator_stats(name: &str) -> io::Result<EmulatorStats> {
    validate_name(name)?;
    emulator::fresh_stats(&run_dir(name), Duration::from_secs(5))
}

/// Packets the `--nft-drop` rule of testnet `name` has dropped so far.
pub fn nft_dropped(name: &str) -> io::Result<u64> {
    validate_name(name)?;
    let names = Names::of(name);
    let out = in_namespace(&names.ns_b, "nft", &["list", "table", "ip", NFT_TABLE])?;
    parse_nft_counter(&out)
        .ok_or_else(|| io::Error::other(format!("no counter in nft output: {out}")))
}

fn parse_nft_counter(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "counter")?;
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

/// `--nft-drop` as the `X` of `numgen random mod 1000 < X`.
fn nft_per_mille(p: Probability) -> io::Result<u32> {
    let step = Probability::SCALE / 1000;
    if p.is_zero() || !p.ppb().is_multiple_of(step) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--nft-drop {p}: must be a multiple of 0.1% in 0.1%..100%"),
        ));
    }
    Ok(p.ppb() / step)
}

/// `msock testnet up|down|stats|emulate ...`; `args` are the arguments after `testnet`.
/// Exit status: 0 done, 1 operation failed, 2 usage error.
pub fn command(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let parsed = match parse_args(args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("msock testnet: {e}\n{USAGE}");
            return 2;
        }
    };
    let name = parsed.name.clone();
    if let Err(e) = validate_name(&name) {
        eprintln!("msock testnet: {e}");
        return 2;
    }
    let result = match parsed.action {
        Action::Up => {
            let options = UpOptions {
                impair: parsed.impair,
                nft_drop: parsed.nft_drop,
                msock_bin: None,
            };
            up_with(&name, &options).map(|topology| println!("{topology}"))
        }
        Action::Down => down(&name).map(|()| println!("testnet {name} is down")),
        Action::Stats => emulator_stats(&name).map(|s| print!("{}", s.to_text())),
        Action::Emulate => {
            let names = Names::of(&name);
            let config = emulator::ServeConfig {
                name: name.clone(),
                iface_a: names.iface_ma,
                iface_b: names.iface_mb,
                spec: parsed.impair.unwrap_or_default(),
                run_dir: run_dir(&name),
            };
            emulator::serve(&config).map(drop)
        }
    };
    match result {
        Ok(()) => {
            let _ = io::stdout().flush();
            0
        }
        Err(e) => {
            eprintln!("msock testnet {}: {e}", parsed.action.word());
            1
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Up,
    Down,
    Stats,
    /// Hidden: the emulator daemon `up --impair` starts in `N-m`.
    Emulate,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Up => "up",
            Action::Down => "down",
            Action::Stats => "stats",
            Action::Emulate => "emulate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    action: Action,
    name: String,
    impair: Option<ImpairSpec>,
    nft_drop: Option<Probability>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let (flags, positional) = crate::cli::parse_flags(args, &["name", "impair", "nft-drop"], &[])?;
    if let Some(dash) = positional.iter().find(|p| p.starts_with('-')) {
        return Err(format!("unknown option {dash}"));
    }
    let action = match positional.as_slice() {
        [one] if one == "up" => Action::Up,
        [one] if one == "down" => Action::Down,
        [one] if one == "stats" => Action::Stats,
        [one] if one == "emulate" => Action::Emulate,
        [] => return Err("say up, down or stats".into()),
        [one] => return Err(format!("unknown action '{one}' (up, down or stats)")),
        [_, extra, ..] => return Err(format!("unexpected argument '{extra}'")),
    };
    let once = |flag: &str| -> Result<Option<String>, String> {
        let mut values = flags.iter().filter(|(n, _)| n == flag).map(|(_, v)| v);
        let first = values.next().cloned();
        if values.next().is_some() {
            return Err(format!("--{flag} given more than once"));
        }
        Ok(first)
    };
    let name = once("name")?.ok_or("--name N is required")?;
    let impair = once("impair")?
        .map(|s| s.parse::<ImpairSpec>().map_err(|e| e.to_string()))
        .transpose()?;
    let nft_drop = once("nft-drop")?
        .map(|s| Probability::parse_percent(&s).map_err(|e| format!("--nft-drop: {e}")))
        .transpose()?;
    if let Some(p) = nft_drop {
        nft_per_mille(p).map_err(|e| e.to_string())?;
    }
    match action {
        Action::Up => {}
        Action::Emulate if impair.is_none() => return Err("emulate needs --impair".into()),
        Action::Emulate if nft_drop.is_some() => {
            return Err("--nft-drop goes with up, not emulate".into());
        }
        Action::Emulate => {}
        Action::Down | Action::Stats if impair.is_some() || nft_drop.is_some() => {
            return Err(format!(
                "--impair and --nft-drop go with up, not {}",
                action.word()
            ));
        }
        Action::Down | Action::Stats => {}
    }
    Ok(Args {
        action,
        name,
        impair,
        nft_drop,
    })
}

/// Serializes `up`/`down` within this process: parallel tests would otherwise run many `ip
/// netns add` at once, which can race on iproute2's first bind mount of /run/netns.
fn serialize() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A panic while holding the lock leaves nothing inconsistent behind: the guard protects
    // no data.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Emulators this process started, by testnet name: `down` reaps them so no zombie is left
/// (a process started by the `msock` command is reparented to init when it exits).
fn emulators() -> MutexGuard<'static, Vec<(String, Child)>> {
    static CHILDREN: Mutex<Vec<(String, Child)>> = Mutex::new(Vec::new());
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reaps the emulators of testnet `name` this process started (they were ended by
/// `terminate_processes`; SIGKILL in case one was not).
fn reap_emulators(name: &str) {
    let mine: Vec<Child> = {
        let mut all = emulators();
        let (mine, others) = std::mem::take(&mut *all)
            .into_iter()
            .partition::<Vec<_>, _>(|(n, _)| n == name);
        *all = others;
        mine.into_iter().map(|(_, c)| c).collect()
    };
    for mut child in mine {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
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

const OFFLOADS_OFF: [&str; 8] = ["tx", "off", "tso", "off", "gso", "off", "gro", "off"];

fn configure(name: &str, n: &Names, options: &UpOptions) -> io::Result<Topology> {
    // Create each end directly in its namespace: the host's interfaces are never involved and
    // a host interface with the same name cannot collide.
    let (peer_a, peer_b) = match options.impair {
        None => ((&n.iface_b, &n.ns_b), (&n.iface_b, &n.ns_b)),
        Some(_) => ((&n.iface_ma, &n.ns_m), (&n.iface_mb, &n.ns_m)),
    };
    run(
        "ip",
        &[
            "link", "add", &n.iface_a, "netns", &n.ns_a, "type", "veth", "peer", "name", peer_a.0,
            "netns", peer_a.1,
        ],
    )?;
    if options.impair.is_some() {
        run(
            "ip",
            &[
                "link", "add", peer_b.0, "netns", peer_b.1, "type", "veth", "peer", "name",
                &n.iface_b, "netns", &n.ns_b,
            ],
        )?;
    }
    // Before the links come up, so no IPv6 router solicitation or MLD report is ever sent.
    let mut a_sysctls = vec![
        "net.ipv4.ip_forward=0".to_string(),
        "net.ipv4.conf.all.proxy_arp=0".to_string(),
        format!("net.ipv4.conf.{}.proxy_arp=0", n.iface_a),
        format!("net.ipv4.conf.{}.arp_ignore=1", n.iface_a),
        format!("net.ipv4.conf.{}.arp_announce=2", n.iface_a),
    ];
    let mut b_sysctls = Vec::new();
    let mut m_sysctls = vec!["net.ipv4.ip_forward=0".to_string()];
    if Path::new("/proc/sys/net/ipv6").exists() {
        a_sysctls.push(format!("net.ipv6.conf.{}.disable_ipv6=1", n.iface_a));
        b_sysctls.push(format!("net.ipv6.conf.{}.disable_ipv6=1", n.iface_b));
        m_sysctls.push(format!("net.ipv6.conf.{}.disable_ipv6=1", n.iface_ma));
        m_sysctls.push(format!("net.ipv6.conf.{}.disable_ipv6=1", n.iface_mb));
    }
    sysctl(&n.ns_a, &a_sysctls)?;
    if !b_sysctls.is_empty() {
        sysctl(&n.ns_b, &b_sysctls)?;
    }
    let mut ends = vec![(&n.ns_a, &n.iface_a), (&n.ns_b, &n.iface_b)];
    if options.impair.is_some() {
        sysctl(&n.ns_m, &m_sysctls)?;
        ends.extend([(&n.ns_m, &n.iface_ma), (&n.ns_m, &n.iface_mb)]);
    }
    // Offloads off on every end: otherwise the emulator's packet sockets would see 64 KiB
    // GSO/GRO super-frames and frames with partial checksums.
    for (ns, iface) in ends {
        let mut args = vec!["-K", iface.as_str()];
        args.extend(OFFLOADS_OFF);
        in_namespace(ns, "ethtool", &args)?;
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
    let middle = match &options.impair {
        None => None,
        Some(spec) => {
            // No addresses: the middle kernel neither answers nor forwards anything.
            let batch = format!(
                "link set lo up\nlink set {0} promisc on\nlink set {0} up\n\
                 link set {1} promisc on\nlink set {1} up\n",
                n.iface_ma, n.iface_mb
            );
            run_with_input("ip", &["-n", &n.ns_m, "-batch", "-"], &batch)?;
            let pid = start_emulator(name, n, spec, options.msock_bin.as_deref())?;
            Some(Middle {
                ns: n.ns_m.clone(),
                iface_a: n.iface_ma.clone(),
                iface_b: n.iface_mb.clone(),
                spec: *spec,
                pid,
                run_dir: run_dir(name),
            })
        }
    };
    if let Some(p) = options.nft_drop {
        install_nft_drop(n, p)?;
    }
    Ok(Topology {
        name: name.to_string(),
        ns_a: n.ns_a.clone(),
        ns_b: n.ns_b.clone(),
        iface_a: n.iface_a.clone(),
        iface_b: n.iface_b.clone(),
        mac_a: link_mac(&n.ns_a, &n.iface_a)?,
        mac_b: link_mac(&n.ns_b, &n.iface_b)?,
        middle,
        nft_drop: options.nft_drop,
    })
}

/// The nftables ruleset `--nft-drop` loads into `N-b`.
fn nft_ruleset(iface_b: &str, per_mille: u32) -> String {
    format!(
        "table ip {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tiifname \"{iface_b}\" numgen random mod 1000 < {per_mille} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

fn install_nft_drop(n: &Names, p: Probability) -> io::Result<()> {
    let nft = find_tool("nft")?;
    let nft = nft.to_string_lossy();
    run_with_input(
        "ip",
        &["netns", "exec", &n.ns_b, &nft, "-f", "-"],
        &nft_ruleset(&n.iface_b, nft_per_mille(p)?),
    )
    .map(drop)
}

/// Starts `msock testnet emulate` in `N-m` (a new process group, output to the log file) and
/// waits until it has written its pid file, i.e. opened both sockets.
fn start_emulator(
    name: &str,
    n: &Names,
    spec: &ImpairSpec,
    msock_bin: Option<&Path>,
) -> io::Result<u32> {
    let exe = match msock_bin {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?,
    };
    let dir = run_dir(name);
    std::fs::create_dir_all(&dir)?;
    for stale in [emulator::PID_FILE, emulator::STATS_FILE] {
        match std::fs::remove_file(dir.join(stale)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let log_path = dir.join(emulator::LOG_FILE);
    let log = std::fs::File::create(&log_path)?;
    let spec_text = spec.to_string();
    let mut child = Command::new(find_tool("ip")?)
        .args(["netns", "exec", &n.ns_m])
        .arg(&exe)
        .args(["testnet", "emulate", "--name", name, "--impair", &spec_text])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", exe.display())))?;
    let log_tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    };
    let deadline = Instant::now() + EMULATOR_START;
    loop {
        if let Some(pid) = emulator::running_pid(&dir) {
            emulators().push((name.to_string(), child));
            return Ok(pid as u32);
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "link emulator exited ({status}) during start-up: {}",
                log_tail()
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "link emulator not ready after {EMULATOR_START:?}: {}",
                    log_tail()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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
                "nft" => "nftables",
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
        let plain = |action, name: &str| Args {
            action,
            name: name.into(),
            impair: None,
            nft_drop: None,
        };
        assert_eq!(
            parse_args(&args(&["up", "--name", "x1"])).unwrap(),
            plain(Action::Up, "x1")
        );
        assert_eq!(
            parse_args(&args(&["--name=x1", "down"])).unwrap(),
            plain(Action::Down, "x1")
        );
        assert_eq!(
            parse_args(&args(&["stats", "--name", "x1"])).unwrap(),
            plain(Action::Stats, "x1")
        );
        let full = parse_args(&args(&[
            "up",
            "--name",
            "x",
            "--impair",
            "loss=2%,delay=5ms,seed=3",
            "--nft-drop=1.5%",
        ]))
        .unwrap();
        assert_eq!(full.impair.unwrap().to_string(), "loss=2%,delay=5ms,seed=3");
        assert_eq!(full.nft_drop.unwrap().ppb(), 15_000_000);
        let emulate = parse_args(&args(&["emulate", "--name", "x", "--impair", "none"])).unwrap();
        assert_eq!(emulate.action, Action::Emulate);
        assert_eq!(emulate.impair, Some(ImpairSpec::default()));
        for bad in [
            &["up"][..],
            &["--name", "x"],
            &["sideways", "--name", "x"],
            &["up", "down", "--name", "x"],
            &["up", "--name", "x", "--impair", "loss=1"],
            &["up", "--name", "x", "--impair", "lose=1%"],
            &["up", "--name", "x", "--impair", "none", "--impair", "none"],
            &["up", "--name", "x", "--nft-drop", "50"],
            &["up", "--name", "x", "--nft-drop", "0.05%"],
            &["up", "--name", "x", "--nft-drop", "0%"],
            &["up", "--name", "x", "--nft-drop", "101%"],
            &["down", "--name", "x", "--impair", "none"],
            &["stats", "--name", "x", "--nft-drop", "1%"],
            &["emulate", "--name", "x"],
            &[
                "emulate",
                "--name",
                "x",
                "--impair",
                "none",
                "--nft-drop",
                "1%",
            ],
            &["up", "--name", "x", "-v"],
            &["up", "--name", "x", "--name", "y"],
            &["up", "--name"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
        let e = parse_args(&args(&["up", "--name", "x", "--impair", "loss=1"])).unwrap_err();
        assert!(e.contains("bad impairment: loss:"), "{e}");
    }

    #[test]
    fn command_usage_errors_exit_2() {
        assert_eq!(command(&args(&[])), 2);
        assert_eq!(command(&args(&["up", "--name", "NOPE"])), 2);
        assert_eq!(command(&args(&["up", "--name", "x", "--impair"])), 2);
        assert_eq!(command(&args(&["up", "--name", "x", "--impair", "x=1"])), 2);
        assert_eq!(command(&args(&["--help"])), 0);
    }

    #[test]
    fn nft_drop_rule_and_counter() {
        let p = |t: &str| Probability::parse_percent(t).unwrap();
        assert_eq!(nft_per_mille(p("1%")).unwrap(), 10);
        assert_eq!(nft_per_mille(p("0.1%")).unwrap(), 1);
        assert_eq!(nft_per_mille(p("100%")).unwrap(), 1000);
        assert!(nft_per_mille(p("0.15%")).is_err());
        assert!(nft_per_mille(Probability::ZERO).is_err());
        let rules = nft_ruleset("t1-b0", 500);
        assert!(rules.contains("table ip msock_testnet {"), "{rules}");
        assert!(
            rules.contains("iifname \"t1-b0\" numgen random mod 1000 < 500 counter drop"),
            "{rules}"
        );
        assert!(rules.contains("hook prerouting"), "{rules}");
        let listed = "table ip msock_testnet {\n\tchain prerouting {\n\t\ttype filter hook \
                      prerouting priority raw; policy accept;\n\t\tiifname \"t1-b0\" numgen \
                      random mod 1000 < 500 counter packets 97 bytes 8148 drop\n\t}\n}\n";
        assert_eq!(parse_nft_counter(listed), Some(97));
        assert_eq!(parse_nft_counter("table ip x {}"), None);
    }

    #[test]
    fn usage_documents_every_option() {
        for needle in [
            "--impair SPEC",
            "--nft-drop P%",
            "loss=2%,delay=5ms,jitter=1ms,reorder=5%,dup=1%,corrupt=0.1%",
            "rate=100mbit",
            "seed=S",
            "stats",
        ] {
            assert!(USAGE.contains(needle), "{needle}");
        }
        assert!(!USAGE.contains("emulate"), "emulate is internal");
    }

    #[test]
    fn run_dir_is_per_testnet() {
        assert_eq!(run_dir("t1"), PathBuf::from("/run/msock-testnet-t1"));
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
            middle: None,
            nft_drop: None,
        };
        let text = t.to_string();
        assert!(!text.contains("emulator"), "{text}");
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
    fn impaired_topology_display_names_the_emulator() {
        let t = Topology {
            name: "t1".into(),
            ns_a: "t1-a".into(),
            ns_b: "t1-b".into(),
            iface_a: "t1-a0".into(),
            iface_b: "t1-b0".into(),
            mac_a: EthernetAddress([2, 0, 0, 0, 0, 0xa]),
            mac_b: EthernetAddress([2, 0, 0, 0, 0, 0xb]),
            middle: Some(Middle {
                ns: "t1-m".into(),
                iface_a: "t1-ma".into(),
                iface_b: "t1-mb".into(),
                spec: "loss=2%,seed=9".parse().unwrap(),
                pid: 4242,
                run_dir: run_dir("t1"),
            }),
            nft_drop: Some(Probability::parse_percent("1%").unwrap()),
        };
        let text = t.to_string();
        for needle in [
            "t1-m ",
            "t1-ma <-> t1-mb",
            "impair loss=2%,seed=9",
            "pid 4242",
            "/run/msock-testnet-t1/emulator.stats",
            "drops 1% of IPv4 arriving on t1-b0",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(text.ends_with("--addr 198.18.0.2/24"), "{text}");
    }

    #[test]
    fn missing_tool_is_a_clear_error() {
        let e = find_tool("msock-no-such-tool").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("not found"));
    }
}
