//! TCP port uniqueness, side by side with the Linux kernel (issue 4: "two processes cannot bind
//! or connect the same 4-tuple; SO_REUSEADDR/SO_REUSEPORT behave as on Linux").
//!
//! Each scenario is a sequence of socket calls made by two processes (the second one as uid
//! 65534 where the scenario says so). It runs twice: once on real kernel sockets in `N-a`
//! (bound to the kernel's own address there, connecting to kernel listeners in `N-b`), once
//! against the msock netserver through the control protocol (Socket, Bind, Listen, Connect,
//! Close, HandOver for TIME_WAIT). The errno of every step must be the same on both, and the
//! kernel's must be the one the scenario names (so a scenario cannot pass by failing for an
//! unrelated reason on both sides). The table is printed.
//!
//! The processes are this test binary started again as an "agent" (the ignored test
//! `agent_entry`, selected by `MSOCK_PORT_RULES_AGENT`) inside `N-a` with `ip netns exec`; it
//! reads one command per line and answers `@@ <errno> <local port>`. A kernel TIME_WAIT is
//! real (active close, the peer's FIN); msock's is a connection image driven to TIME_WAIT
//! in memory and handed to the netserver, which then holds it like any closed connection.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const AGENT_ENV: &str = "MSOCK_PORT_RULES_AGENT";
const UID_ENV: &str = "MSOCK_PORT_RULES_UID";
const PEER_PORTS: [u16; 3] = [7001, 7002, 7003];
const NOT_OURS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
const NOBODY: u32 = 65534;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    Any,
    Own,
    NotOurs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The scenario's base port plus this.
    Base(u16),
    /// Port 0: ephemeral.
    Zero,
    Fixed(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Socket,
    ReuseAddr,
    ReusePort,
    Bind(Addr, Port),
    Listen,
    /// Connect to the kernel peer's listener number n.
    Connect(usize),
    Close,
    /// Active close of a connected socket, until it is in TIME_WAIT.
    TimeWait,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    process: usize,
    socket: usize,
    op: Op,
    /// The kernel's answer (0 = success).
    expect: i32,
}

struct Scenario {
    name: &'static str,
    /// uid of process 1 (process 0 is root).
    uid1: u32,
    /// `ip_local_port_range` for the scenario (both sides read it).
    ephemeral: Option<(u16, u16)>,
    steps: Vec<Step>,
}

const fn s(process: usize, socket: usize, op: Op, expect: i32) -> Step {
    Step {
        process,
        socket,
        op,
        expect,
    }
}

const OK: i32 = 0;
const INUSE: i32 = libc::EADDRINUSE;
const NOTAVAIL: i32 = libc::EADDRNOTAVAIL;

fn scenarios() -> Vec<Scenario> {
    use Addr::*;
    use Op::*;
    use Port::*;
    let bind = |a, p| Bind(a, p);
    vec![
        Scenario {
            name: "two processes bind one port",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(1, 0, Socket, OK),
                s(1, 0, bind(Any, Base(0)), INUSE),
                s(1, 0, bind(Own, Base(0)), INUSE),
            ],
        },
        Scenario {
            name: "wildcard and specific address overlap",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, bind(Own, Base(0)), OK),
                s(1, 0, Socket, OK),
                s(1, 0, bind(Any, Base(0)), INUSE),
                s(1, 1, Socket, OK),
                s(1, 1, bind(Own, Base(1)), OK),
                s(0, 1, Socket, OK),
                s(0, 1, bind(Any, Base(1)), INUSE),
            ],
        },
        Scenario {
            name: "address not ours, privileged port, bind twice",
            uid1: NOBODY,
            ephemeral: None,
            steps: vec![
                s(1, 0, Socket, OK),
                s(1, 0, bind(NotOurs, Base(0)), NOTAVAIL),
                s(1, 0, bind(Any, Fixed(80)), libc::EACCES),
                s(0, 0, Socket, OK),
                s(0, 0, bind(Any, Fixed(80)), OK),
                s(1, 0, bind(Any, Base(0)), OK),
                s(1, 0, bind(Any, Base(1)), libc::EINVAL),
            ],
        },
        Scenario {
            name: "SO_REUSEADDR on both, nobody listening",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReuseAddr, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReuseAddr, OK),
                s(1, 0, bind(Own, Base(0)), OK),
                s(1, 1, Socket, OK),
                s(1, 1, bind(Own, Base(0)), INUSE),
            ],
        },
        Scenario {
            name: "SO_REUSEADDR: the second listen fails",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReuseAddr, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReuseAddr, OK),
                s(1, 0, bind(Any, Base(0)), OK),
                s(0, 0, Listen, OK),
                s(1, 0, Listen, INUSE),
            ],
        },
        Scenario {
            name: "SO_REUSEADDR never binds over a listener",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReuseAddr, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(0, 0, Listen, OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReuseAddr, OK),
                s(1, 0, bind(Own, Base(0)), INUSE),
                s(0, 0, Close, OK),
                s(1, 0, bind(Own, Base(0)), OK),
            ],
        },
        Scenario {
            name: "SO_REUSEADDR needs both sockets",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReuseAddr, OK),
                s(1, 0, bind(Any, Base(0)), INUSE),
                s(0, 1, Socket, OK),
                s(0, 1, ReuseAddr, OK),
                s(0, 1, bind(Any, Base(1)), OK),
                s(1, 1, Socket, OK),
                s(1, 1, bind(Any, Base(1)), INUSE),
            ],
        },
        Scenario {
            name: "SO_REUSEPORT, one uid: listeners share",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReusePort, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(0, 0, Listen, OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReusePort, OK),
                s(1, 0, bind(Any, Base(0)), OK),
                s(1, 0, Listen, OK),
                s(1, 1, Socket, OK),
                s(1, 1, ReuseAddr, OK),
                s(1, 1, bind(Any, Base(0)), INUSE),
            ],
        },
        Scenario {
            name: "SO_REUSEPORT, another uid",
            uid1: NOBODY,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReusePort, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReusePort, OK),
                s(1, 0, bind(Any, Base(0)), INUSE),
                s(1, 0, bind(Own, Base(0)), INUSE),
            ],
        },
        Scenario {
            name: "two processes connect one 4-tuple",
            uid1: NOBODY,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReuseAddr, OK),
                s(0, 0, bind(Own, Base(0)), OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReuseAddr, OK),
                s(1, 0, bind(Any, Base(0)), OK),
                s(0, 0, Connect(0), OK),
                s(1, 0, Connect(0), NOTAVAIL),
                s(1, 0, Connect(1), OK),
                s(1, 0, Connect(2), libc::EISCONN),
            ],
        },
        Scenario {
            name: "connect a listening socket",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, bind(Any, Base(0)), OK),
                s(0, 0, Listen, OK),
                s(0, 0, Connect(0), libc::EISCONN),
                s(0, 0, Close, OK),
                s(1, 0, Socket, OK),
                s(1, 0, bind(Any, Base(0)), OK),
            ],
        },
        Scenario {
            name: "connect without bind: a 4-tuple once per port",
            uid1: 0,
            ephemeral: Some((40000, 40001)),
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, Connect(0), OK),
                s(1, 0, Socket, OK),
                s(1, 0, Connect(0), OK),
                s(0, 1, Socket, OK),
                s(0, 1, Connect(0), NOTAVAIL),
                s(0, 2, Socket, OK),
                s(0, 2, Connect(1), OK),
                s(1, 1, Socket, OK),
                s(1, 1, Connect(1), OK),
            ],
        },
        Scenario {
            name: "bind(0) takes only unused ports, connect none of them",
            uid1: NOBODY,
            ephemeral: Some((40010, 40011)),
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, bind(Any, Zero), OK),
                s(1, 0, Socket, OK),
                s(1, 0, bind(Any, Zero), OK),
                s(0, 1, Socket, OK),
                s(0, 1, ReuseAddr, OK),
                s(0, 1, bind(Any, Zero), INUSE),
                s(0, 2, Socket, OK),
                s(0, 2, Connect(0), NOTAVAIL),
            ],
        },
        Scenario {
            name: "ports chosen by connect are not given to bind(0)",
            uid1: 0,
            ephemeral: Some((40020, 40021)),
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, Connect(0), OK),
                s(1, 0, Socket, OK),
                s(1, 0, Connect(1), OK),
                s(0, 1, Socket, OK),
                s(0, 1, bind(Own, Zero), OK),
                s(1, 1, Socket, OK),
                s(1, 1, bind(Any, Zero), INUSE),
            ],
        },
        Scenario {
            name: "listen without bind takes an ephemeral port",
            uid1: 0,
            ephemeral: Some((40030, 40031)),
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, Listen, OK),
                s(1, 0, Socket, OK),
                s(1, 0, Listen, OK),
                s(0, 1, Socket, OK),
                s(0, 1, Listen, INUSE),
            ],
        },
        Scenario {
            name: "TIME_WAIT of a SO_REUSEADDR socket",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReuseAddr, OK),
                s(0, 0, bind(Own, Base(0)), OK),
                s(0, 0, Connect(0), OK),
                s(0, 0, TimeWait, OK),
                s(1, 0, Socket, OK),
                s(1, 0, bind(Own, Base(0)), INUSE),
                s(1, 1, Socket, OK),
                s(1, 1, ReuseAddr, OK),
                s(1, 1, bind(Own, Base(0)), OK),
                s(1, 1, Listen, OK),
                s(1, 1, Close, OK),
                s(1, 2, Socket, OK),
                s(1, 2, ReuseAddr, OK),
                s(1, 2, bind(Any, Base(0)), OK),
                // Timestamps were on: the new connection takes the TIME_WAIT 4-tuple over.
                s(1, 2, Connect(0), OK),
            ],
        },
        Scenario {
            name: "TIME_WAIT of a plain socket",
            uid1: 0,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, bind(Own, Base(0)), OK),
                s(0, 0, Connect(0), OK),
                s(0, 0, TimeWait, OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReuseAddr, OK),
                s(1, 0, bind(Own, Base(0)), INUSE),
                s(1, 1, Socket, OK),
                s(1, 1, bind(Any, Base(0)), INUSE),
            ],
        },
        Scenario {
            name: "SO_REUSEPORT over TIME_WAIT ignores the uid",
            uid1: NOBODY,
            ephemeral: None,
            steps: vec![
                s(0, 0, Socket, OK),
                s(0, 0, ReusePort, OK),
                s(0, 0, bind(Own, Base(0)), OK),
                s(0, 0, Connect(0), OK),
                s(1, 0, Socket, OK),
                s(1, 0, ReusePort, OK),
                s(1, 0, bind(Own, Base(0)), INUSE),
                s(0, 0, TimeWait, OK),
                s(1, 0, bind(Own, Base(0)), OK),
                s(1, 0, Listen, OK),
            ],
        },
    ]
}

fn errno_name(e: i32) -> String {
    match e {
        0 => "ok".into(),
        libc::EADDRINUSE => "EADDRINUSE".into(),
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".into(),
        libc::EACCES => "EACCES".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EISCONN => "EISCONN".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::EPROTO => "EPROTO".into(),
        other => format!("errno {other}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Kernel,
    Msock,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Kernel => "kernel",
            Side::Msock => "msock",
        }
    }

    fn own(self) -> Ipv4Addr {
        match self {
            Side::Kernel => KERNEL_ADDR,
            Side::Msock => MSOCK_ADDR,
        }
    }
}

/// One agent process; killed on drop.
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn start(net: &TestNet, role: &str, uid: u32) -> Agent {
        let exe = std::env::current_exe().expect("test binary path");
        let exe = exe.to_str().expect("utf-8 path");
        let mut cmd = net.command_a(&[
            exe,
            "--exact",
            "agent_entry",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ]);
        cmd.env(AGENT_ENV, role)
            .env(UID_ENV, uid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn agent");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("agent stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(reply) = line.strip_prefix("@@ ")
                    && tx.send(reply.to_string()).is_err()
                {
                    return;
                }
            }
        });
        Agent {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one command; the agent's errno and local port.
    fn call(&mut self, command: &str) -> (i32, u16) {
        let stdin = self.stdin.as_mut().expect("agent stdin");
        writeln!(stdin, "{command}").expect("write to agent");
        stdin.flush().expect("flush agent");
        let reply = self
            .lines
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|_| panic!("agent did not answer {command:?}"));
        let mut it = reply.split_whitespace();
        let errno = it.next().and_then(|v| v.parse().ok());
        let port = it.next().and_then(|v| v.parse().ok());
        match (errno, port) {
            (Some(e), Some(p)) => (e, p),
            _ => panic!("bad agent reply {reply:?} to {command:?}"),
        }
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The command line for `op` (addresses as `side` sees them).
fn command(side: Side, step: &Step, base: u16) -> String {
    let sock = step.socket;
    match step.op {
        Op::Socket => format!("socket {sock}"),
        Op::ReuseAddr => format!("reuseaddr {sock}"),
        Op::ReusePort => format!("reuseport {sock}"),
        Op::Bind(addr, port) => {
            let ip = match addr {
                Addr::Any => Ipv4Addr::UNSPECIFIED,
                Addr::Own => side.own(),
                Addr::NotOurs => NOT_OURS,
            };
            let port = match port {
                Port::Base(n) => base + n,
                Port::Zero => 0,
                Port::Fixed(p) => p,
            };
            format!("bind {sock} {ip} {port}")
        }
        Op::Listen => format!("listen {sock}"),
        Op::Connect(n) => format!("connect {sock} {PEER_ADDR} {}", PEER_PORTS[n]),
        Op::Close => format!("close {sock}"),
        Op::TimeWait => format!("timewait {sock}"),
    }
}

fn describe(step: &Step) -> String {
    let op = match step.op {
        Op::Socket => "socket".to_string(),
        Op::ReuseAddr => "SO_REUSEADDR".to_string(),
        Op::ReusePort => "SO_REUSEPORT".to_string(),
        Op::Bind(a, p) => format!(
            "bind {}:{}",
            match a {
                Addr::Any => "any",
                Addr::Own => "own",
                Addr::NotOurs => "not-ours",
            },
            match p {
                Port::Base(n) => format!("B+{n}"),
                Port::Zero => "0".to_string(),
                Port::Fixed(p) => p.to_string(),
            }
        ),
        Op::Listen => "listen".to_string(),
        Op::Connect(n) => format!("connect peer:{}", PEER_PORTS[n]),
        Op::Close => "close".to_string(),
        Op::TimeWait => "close into TIME_WAIT".to_string(),
    };
    format!("P{} s{} {op}", step.process, step.socket)
}

/// Whether the step chooses an ephemeral port when it succeeds.
fn chooses_port(step: &Step, bound: &std::collections::HashSet<(usize, usize)>) -> bool {
    match step.op {
        Op::Bind(_, Port::Zero) => true,
        Op::Connect(_) | Op::Listen => !bound.contains(&(step.process, step.socket)),
        _ => false,
    }
}

fn run(net: &TestNet, side: Side, sc: &Scenario, base: u16) -> Vec<(i32, u16)> {
    if let Some((low, high)) = sc.ephemeral {
        let setting = format!("net.ipv4.ip_local_port_range={low} {high}");
        let out = net.exec_a(&["sysctl", "-q", "-w", &setting]);
        assert!(out.status.success(), "sysctl: {}", stderr_of(&out));
    }
    let role = side.name();
    let mut agents = [Agent::start(net, role, 0), Agent::start(net, role, sc.uid1)];
    let mut results = Vec::new();
    let mut bound = std::collections::HashSet::new();
    for step in &sc.steps {
        let (errno, port) = agents[step.process].call(&command(side, step, base));
        if let (Some((low, high)), 0) = (sc.ephemeral, errno)
            && chooses_port(step, &bound)
        {
            assert!(
                (low..=high).contains(&port),
                "{}: {} chose port {port} outside {low}-{high} ({})",
                sc.name,
                side.name(),
                describe(step)
            );
        }
        if errno == 0 && matches!(step.op, Op::Bind(..) | Op::Connect(_) | Op::Listen) {
            bound.insert((step.process, step.socket));
        }
        results.push((errno, port));
    }
    let [a, b] = agents;
    a.finish();
    b.finish();
    results
}

/// The kernel peer: listeners on [`PEER_PORTS`] in N-b that read each connection to its end
/// and close it (so an active close here reaches TIME_WAIT).
fn start_peer(net: &TestNet) -> Proc {
    let exe = std::env::current_exe().expect("test binary path");
    let exe = exe.to_str().expect("utf-8 path");
    let mut cmd = net.command_b(&[
        exe,
        "--exact",
        "agent_entry",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]);
    cmd.env(AGENT_ENV, "peer");
    let peer = net.spawn("peer", cmd);
    assert!(
        wait_until(READY_TIMEOUT, || peer.log().contains("@@ ready")),
        "peer not listening: {}",
        peer.log()
    );
    peer
}

#[test]
fn port_rules_match_the_kernel() {
    let Some(net) = TestNet::new("prl") else {
        return;
    };
    let _peer = start_peer(&net);
    let _netserver = net.start_netserver(&[]);
    let mut table = String::new();
    let mut mismatches = Vec::new();
    for (i, sc) in scenarios().iter().enumerate() {
        let base = 20000 + 10 * i as u16;
        let kernel = run(&net, Side::Kernel, sc, base);
        let msock = run(&net, Side::Msock, sc, base);
        table.push_str(&format!(
            "\n[{}] {} (B = {base}, P1 uid {}{})\n",
            i + 1,
            sc.name,
            sc.uid1,
            sc.ephemeral
                .map(|(l, h)| format!(", ip_local_port_range {l} {h}"))
                .unwrap_or_default()
        ));
        table.push_str(&format!(
            "  {:<34} {:<14} {:<14} {}\n",
            "step", "kernel", "msock", "expected"
        ));
        for ((step, k), m) in sc.steps.iter().zip(&kernel).zip(&msock) {
            let mark = if k.0 == m.0 && k.0 == step.expect {
                ""
            } else {
                "  <-- differs"
            };
            table.push_str(&format!(
                "  {:<34} {:<14} {:<14} {}{mark}\n",
                describe(step),
                errno_name(k.0),
                errno_name(m.0),
                errno_name(step.expect)
            ));
            if !mark.is_empty() {
                mismatches.push(format!(
                    "[{}] {}: {}: kernel {}, msock {}, expected {}",
                    i + 1,
                    sc.name,
                    describe(step),
                    errno_name(k.0),
                    errno_name(m.0),
                    errno_name(step.expect)
                ));
            }
        }
    }
    println!("TCP port rules, kernel vs msock:{table}");
    assert!(
        mismatches.is_empty(),
        "answers differ:\n{}\n{table}",
        mismatches.join("\n")
    );
    drop(_netserver);
    drop(_peer);
    net.teardown().expect("testnet teardown");
}

/// Entry point of the agent processes (see the module documentation); not a test by itself.
#[test]
#[ignore = "agent process of port_rules_match_the_kernel, started by it"]
fn agent_entry() {
    let Ok(role) = std::env::var(AGENT_ENV) else {
        panic!("{AGENT_ENV} not set: this entry only runs as port_rules_match_the_kernel's agent");
    };
    if role == "peer" {
        return agent::peer();
    }
    let uid: u32 = std::env::var(UID_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if uid != 0 {
        let id = nix::unistd::Gid::from_raw(uid);
        nix::unistd::setgroups(&[]).expect("setgroups");
        nix::unistd::setgid(id).expect("setgid");
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).expect("setuid");
    }
    let mut backend: Box<dyn agent::Backend> = match role.as_str() {
        "kernel" => Box::new(agent::Kernel::default()),
        "msock" => Box::new(agent::Msock::connect().expect("netserver")),
        other => panic!("unknown agent role {other}"),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines().map_while(Result::ok) {
        let (errno, port) = agent::execute(backend.as_mut(), &line);
        writeln!(out, "@@ {errno} {port}").expect("stdout");
        out.flush().expect("stdout");
    }
    backend.finish();
}

mod agent {
    use super::*;
    use std::collections::HashMap;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    /// One side's socket calls; each returns an errno (0 = success) and the local port.
    pub trait Backend {
        fn socket(&mut self, s: usize) -> i32;
        fn reuse(&mut self, s: usize, addr: bool) -> i32;
        fn bind(&mut self, s: usize, local: SocketAddrV4) -> i32;
        fn listen(&mut self, s: usize) -> i32;
        fn connect(&mut self, s: usize, remote: SocketAddrV4) -> i32;
        fn close(&mut self, s: usize) -> i32;
        fn time_wait(&mut self, s: usize) -> i32;
        fn port(&self, s: usize) -> u16;
        fn finish(&mut self);
    }

    pub fn execute(b: &mut dyn Backend, line: &str) -> (i32, u16) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let sock = words.get(1).and_then(|w| w.parse::<usize>().ok());
        let addr = || -> Option<SocketAddrV4> {
            Some(SocketAddrV4::new(
                words.get(2)?.parse().ok()?,
                words.get(3)?.parse().ok()?,
            ))
        };
        let Some(s) = sock else {
            return (libc::EPROTO, 0);
        };
        let errno = match (words.first().copied(), addr()) {
            (Some("socket"), _) => b.socket(s),
            (Some("reuseaddr"), _) => b.reuse(s, true),
            (Some("reuseport"), _) => b.reuse(s, false),
            (Some("bind"), Some(a)) => b.bind(s, a),
            (Some("listen"), _) => b.listen(s),
            (Some("connect"), Some(a)) => b.connect(s, a),
            (Some("close"), _) => b.close(s),
            (Some("timewait"), _) => b.time_wait(s),
            _ => libc::EPROTO,
        };
        (errno, b.port(s))
    }

    fn last_errno() -> i32 {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }

    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }

    fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> i32 {
        // SAFETY: setsockopt reads `size_of::<i32>()` bytes from a live local.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 { 0 } else { last_errno() }
    }

    fn local_port(fd: RawFd) -> u16 {
        // SAFETY: an all-zero sockaddr_in is valid; getsockname writes at most `len` bytes.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sa` and `len` are live locals of the sizes given.
        let rc =
            unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) };
        if rc == 0 {
            u16::from_be(sa.sin_port)
        } else {
            0
        }
    }

    /// Real kernel sockets.
    #[derive(Default)]
    pub struct Kernel {
        fds: HashMap<usize, OwnedFd>,
        ports: HashMap<usize, u16>,
    }

    impl Kernel {
        fn fd(&self, s: usize) -> Option<RawFd> {
            self.fds.get(&s).map(|fd| fd.as_raw_fd())
        }
    }

    /// Whether /proc/net/tcp (our namespace) lists local `port` to `remote` in TIME_WAIT.
    fn in_time_wait(port: u16, remote: SocketAddrV4) -> bool {
        let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
            return false;
        };
        let rem = format!(
            "{:08X}:{:04X}",
            u32::from(*remote.ip()).swap_bytes(),
            remote.port()
        );
        text.lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&format!(":{port:04X}")) && f[2] == rem && f[3] == "06"
        })
    }

    impl Backend for Kernel {
        fn socket(&mut self, s: usize) -> i32 {
            // SAFETY: plain socket(2).
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return last_errno();
            }
            // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
            self.fds.insert(s, unsafe { OwnedFd::from_raw_fd(fd) });
            0
        }

        fn reuse(&mut self, s: usize, addr: bool) -> i32 {
            let Some(fd) = self.fd(s) else {
                return libc::EBADF;
            };
            let name = if addr {
                libc::SO_REUSEADDR
            } else {
                libc::SO_REUSEPORT
            };
            set_int(fd, libc::SOL_SOCKET, name, 1)
        }

        fn bind(&mut self, s: usize, local: SocketAddrV4) -> i32 {
            let Some(fd) = self.fd(s) else {
                return libc::EBADF;
            };
            let sa = sockaddr(local);
            // SAFETY: `sa` is a valid sockaddr_in of the length given.
            let rc = unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc == 0 { 0 } else { last_errno() }
        }

        fn listen(&mut self, s: usize) -> i32 {
            let Some(fd) = self.fd(s) else {
                return libc::EBADF;
            };
            // SAFETY: plain listen(2) on a descriptor we own.
            if unsafe { libc::listen(fd, 16) } == 0 {
                0
            } else {
                last_errno()
            }
        }

        fn connect(&mut self, s: usize, remote: SocketAddrV4) -> i32 {
            let Some(fd) = self.fd(s) else {
                return libc::EBADF;
            };
            let sa = sockaddr(remote);
            // SAFETY: `sa` is a valid sockaddr_in of the length given.
            let rc = unsafe {
                libc::connect(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc == 0 { 0 } else { last_errno() }
        }

        fn close(&mut self, s: usize) -> i32 {
            match self.fds.remove(&s) {
                Some(fd) => {
                    self.ports.insert(s, local_port(fd.as_raw_fd()));
                    0
                }
                None => libc::EBADF,
            }
        }

        fn time_wait(&mut self, s: usize) -> i32 {
            let Some(fd) = self.fds.remove(&s) else {
                return libc::EBADF;
            };
            let port = local_port(fd.as_raw_fd());
            self.ports.insert(s, port);
            // SAFETY: an all-zero sockaddr_in is valid; getpeername writes at most `len` bytes.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: `sa` and `len` are live locals of the sizes given.
            let rc = unsafe {
                libc::getpeername(
                    fd.as_raw_fd(),
                    (&mut sa as *mut libc::sockaddr_in).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return last_errno();
            }
            let remote = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            );
            drop(fd);
            if wait_until(Duration::from_secs(5), || in_time_wait(port, remote)) {
                0
            } else {
                libc::ETIMEDOUT
            }
        }

        fn port(&self, s: usize) -> u16 {
            match self.fd(s) {
                Some(fd) => local_port(fd),
                None => self.ports.get(&s).copied().unwrap_or(0),
            }
        }

        /// Leaves no TIME_WAIT behind: what is still open is reset (SO_LINGER 0).
        fn finish(&mut self) {
            for (_, fd) in self.fds.drain() {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live local.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
            }
        }
    }

    use msock::control::transport::{Connection, ControlAddress};
    use msock::control::{EndpointId, Family, Reply, Request, SockKind, VERSION};

    #[derive(Default, Clone, Copy)]
    struct MsockSocket {
        id: EndpointId,
        reuse_addr: bool,
        reuse_port: bool,
        port: u16,
        remote: Option<SocketAddrV4>,
    }

    /// The msock netserver through the control protocol.
    pub struct Msock {
        control: Connection,
        _fds: Vec<OwnedFd>,
        sockets: HashMap<usize, MsockSocket>,
    }

    impl Msock {
        pub fn connect() -> std::io::Result<Msock> {
            let control = Connection::connect(&ControlAddress::from_env())?;
            let hello = Request::Hello {
                version: VERSION,
                pid: std::process::id(),
            };
            match control.call(&hello, &[])? {
                (Reply::Hello { .. }, fds) => Ok(Msock {
                    control,
                    _fds: fds,
                    sockets: HashMap::new(),
                }),
                (other, _) => Err(std::io::Error::other(format!("hello: {other:?}"))),
            }
        }

        fn call(
            &self,
            request: &Request,
            fds: &[std::os::fd::BorrowedFd<'_>],
        ) -> Result<Reply, i32> {
            match self.control.call(request, fds) {
                Ok((Reply::Error { errno }, _)) => Err(errno),
                Ok((reply, _)) => Ok(reply),
                Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
    }

    impl Backend for Msock {
        fn socket(&mut self, s: usize) -> i32 {
            let request = Request::Socket {
                family: Family::Inet,
                kind: SockKind::Stream,
            };
            match self.call(&request, &[]) {
                Ok(Reply::Socket { id }) => {
                    self.sockets.insert(
                        s,
                        MsockSocket {
                            id,
                            ..MsockSocket::default()
                        },
                    );
                    0
                }
                Ok(_) => libc::EPROTO,
                Err(e) => e,
            }
        }

        fn reuse(&mut self, s: usize, addr: bool) -> i32 {
            match self.sockets.get_mut(&s) {
                Some(sock) if addr => sock.reuse_addr = true,
                Some(sock) => sock.reuse_port = true,
                None => return libc::EBADF,
            }
            0
        }

        fn bind(&mut self, s: usize, local: SocketAddrV4) -> i32 {
            let Some(sock) = self.sockets.get(&s).copied() else {
                return libc::EBADF;
            };
            let request = Request::Bind {
                id: sock.id,
                local,
                reuse_addr: sock.reuse_addr,
                reuse_port: sock.reuse_port,
            };
            match self.call(&request, &[]) {
                Ok(Reply::Bound { local, .. }) => {
                    if let Some(sock) = self.sockets.get_mut(&s) {
                        sock.port = local.port();
                    }
                    0
                }
                Ok(_) => libc::EPROTO,
                Err(e) => e,
            }
        }

        fn listen(&mut self, s: usize) -> i32 {
            let Some(sock) = self.sockets.get(&s).copied() else {
                return libc::EBADF;
            };
            match self.call(
                &Request::Listen {
                    id: sock.id,
                    backlog: 16,
                },
                &[],
            ) {
                Ok(Reply::Ok) => {
                    if sock.port == 0 {
                        // Listening without bind: the netserver chose the port.
                        let port = listening_port(&self.control, sock.id);
                        if let Some(sock) = self.sockets.get_mut(&s) {
                            sock.port = port;
                        }
                    }
                    0
                }
                Ok(_) => libc::EPROTO,
                Err(e) => e,
            }
        }

        fn connect(&mut self, s: usize, remote: SocketAddrV4) -> i32 {
            let Some(sock) = self.sockets.get(&s).copied() else {
                return libc::EBADF;
            };
            let request = Request::Connect {
                id: sock.id,
                remote: Some(remote),
            };
            let port = match self.call(&request, &[]) {
                Ok(Reply::Ok) => sock.port,
                // Connect without bind: the netserver chose the port (and sent a channel).
                Ok(Reply::Bound { local, .. }) => local.port(),
                Ok(_) => return libc::EPROTO,
                Err(e) => return e,
            };
            if let Some(sock) = self.sockets.get_mut(&s) {
                sock.port = port;
                sock.remote = Some(remote);
            }
            0
        }

        fn close(&mut self, s: usize) -> i32 {
            let Some(sock) = self.sockets.remove(&s) else {
                return libc::EBADF;
            };
            match self.call(&Request::Close { id: sock.id }, &[]) {
                Ok(_) => 0,
                Err(e) => e,
            }
        }

        fn time_wait(&mut self, s: usize) -> i32 {
            let Some(sock) = self.sockets.remove(&s) else {
                return libc::EBADF;
            };
            let Some(remote) = sock.remote else {
                return libc::ENOTCONN;
            };
            let local = SocketAddrV4::new(MSOCK_ADDR, sock.port);
            let Some(image) = time_wait_image(local, remote) else {
                return libc::EIO;
            };
            let file = match memfd_with(&image) {
                Ok(file) => file,
                Err(e) => return e.raw_os_error().unwrap_or(libc::EIO),
            };
            let request = Request::HandOver {
                id: sock.id,
                len: image.len() as u64,
            };
            self.sockets.insert(s, MsockSocket { id: 0, ..sock });
            match self.call(&request, &[file.as_fd()]) {
                Ok(Reply::Ok) => 0,
                Ok(_) => libc::EPROTO,
                Err(e) => e,
            }
        }

        fn port(&self, s: usize) -> u16 {
            self.sockets.get(&s).map_or(0, |sock| sock.port)
        }

        fn finish(&mut self) {}
    }

    /// The port of listening endpoint `id`, from `msock stat --json`-free means: the netserver
    /// answers a second bind with EINVAL, so ask the stat text for the endpoint instead.
    fn listening_port(control: &Connection, id: EndpointId) -> u16 {
        let Ok((Reply::Stat { text }, _)) = control.call(&Request::Stat { json: true }, &[]) else {
            return 0;
        };
        // Find `"id":<id>` and the first `:port"` of a local address after it.
        let needle = format!("\"id\":{id},");
        let Some(at) = text.find(&needle) else {
            return 0;
        };
        let rest = &text[at..];
        let Some(local) = rest.find("\"local\":\"") else {
            return 0;
        };
        let addr = &rest[local + 9..];
        let end = addr.find('"').unwrap_or(0);
        addr[..end].parse::<SocketAddrV4>().map_or(0, |a| a.port())
    }

    fn memfd_with(bytes: &[u8]) -> std::io::Result<std::fs::File> {
        let fd = nix::sys::memfd::memfd_create(
            c"port-rules-tw",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        Ok(file)
    }

    /// A connection `local` → `remote` driven to TIME_WAIT against an in-memory peer engine
    /// (handshake with the default options, timestamps included; we close first), exported.
    fn time_wait_image(local: SocketAddrV4, remote: SocketAddrV4) -> Option<Vec<u8>> {
        use msock::stack::Instant;
        use msock::stack::tcp::connection::{
            InitialSequence, Outgoing, State, TcpConfig, TcpConnection,
        };
        use msock::wire::TcpRepr;
        use msock::wire::tcp::TcpSeqNumber;

        fn drain(c: &mut TcpConnection, now: Instant) -> Vec<TcpRepr<'static>> {
            let mut out = Vec::new();
            c.dispatch(now, &mut |o: Outgoing<'_>| {
                let r = o.repr;
                out.push(TcpRepr {
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    seq_number: r.seq_number,
                    ack_number: r.ack_number,
                    control: r.control,
                    window_len: r.window_len,
                    urgent_pointer: r.urgent_pointer,
                    options: r.options,
                    payload: &[],
                });
                Ok(())
            });
            out
        }

        let mut now = Instant::from_secs(100);
        let config = TcpConfig::default();
        let mut ours = TcpConnection::connect(
            config.clone(),
            local,
            remote,
            InitialSequence {
                iss: TcpSeqNumber(1_000),
                ts_offset: 0,
            },
            now,
        );
        let mut theirs: Option<TcpConnection> = None;
        let mut closed_ours = false;
        let mut closed_theirs = false;
        for _ in 0..64 {
            now = Instant::from_micros(now.as_micros() + 1_000);
            for seg in drain(&mut ours, now) {
                match theirs.as_mut() {
                    Some(t) => {
                        t.process(now, &seg);
                    }
                    None => {
                        theirs = TcpConnection::accept(
                            config.clone(),
                            remote,
                            local,
                            &seg,
                            InitialSequence {
                                iss: TcpSeqNumber(900_000),
                                ts_offset: 0,
                            },
                            now,
                        )
                        .ok();
                    }
                }
            }
            if let Some(t) = theirs.as_mut() {
                for seg in drain(t, now) {
                    ours.process(now, &seg);
                }
                if ours.state() == State::Established && !closed_ours {
                    ours.close(now);
                    closed_ours = true;
                }
                if t.state() == State::CloseWait && !closed_theirs {
                    t.close(now);
                    closed_theirs = true;
                }
            }
            if ours.state() == State::TimeWait
                && theirs.as_ref().is_some_and(|t| t.state() == State::Closed)
            {
                return Some(ours.export(now));
            }
        }
        None
    }

    /// Listens on [`PEER_PORTS`] of the peer address; every connection is read to its end and
    /// closed. Runs until killed.
    pub fn peer() {
        use std::io::Read;
        let mut listeners = Vec::new();
        for port in PEER_PORTS {
            let listener = std::net::TcpListener::bind(SocketAddrV4::new(PEER_ADDR, port))
                .expect("peer listen");
            listeners.push(listener);
        }
        println!("@@ ready");
        let handles: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                std::thread::spawn(move || {
                    for mut stream in listener.incoming().map_while(Result::ok) {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}
