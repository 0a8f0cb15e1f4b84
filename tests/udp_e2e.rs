//! End to end: unmodified programs under `msock run` in `N-a` exchanging UDP with the kernel
//! stack in `N-b` through the real netserver and packet channels (issue 2 "must show").
//!
//! Needs root (network namespaces), socat, python3 and ping; tests skip with a message otherwise.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestNet;

/// A seeded xorshift generator: reproducible datagram sizes and contents.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_without(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            eprintln!("skipped: {t} not installed");
            return true;
        }
    }
    false
}

/// Bridges a Unix datagram socket in a temp dir (the test's end) to a socat whose other
/// address is UDP; datagram boundaries are kept on both sides.
struct Bridge {
    test: UnixDatagram,
    peer: PathBuf,
    _dir: common::TempDir,
}

impl Bridge {
    fn new(tag: &str) -> (Bridge, String) {
        let dir = common::TempDir::new(tag);
        let test_path = dir.path().join("test.sock");
        let peer = dir.path().join("socat.sock");
        let test = UnixDatagram::bind(&test_path).expect("bind unix dgram");
        test.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let addr = format!(
            "UNIX-SENDTO:{},bind={}",
            test_path.display(),
            peer.display()
        );
        (
            Bridge {
                test,
                peer,
                _dir: dir,
            },
            addr,
        )
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.peer.exists() {
            assert!(
                Instant::now() < deadline,
                "socat did not create {}",
                self.peer.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends each datagram and checks its echo arrives byte-exact; returns the count.
    fn echo_all(&self, datagrams: &[Vec<u8>]) -> usize {
        let mut buf = vec![0u8; 70000];
        for (i, d) in datagrams.iter().enumerate() {
            self.test.send_to(d, &self.peer).expect("send to socat");
            let n = match self.test.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => panic!("datagram {i} ({} B): no echo: {e}", d.len()),
            };
            assert_eq!(n, d.len(), "datagram {i}: echoed length");
            assert!(buf[..n] == d[..], "datagram {i}: echoed bytes differ");
        }
        datagrams.len()
    }
}

/// Waits until a kernel UDP socket is bound to `port` in `N-b` (a datagram sent before would
/// draw a port unreachable, and a connected client would give up).
fn wait_udp_bound_b(net: &TestNet, port: u16) {
    let filter = format!("sport = :{port}");
    let bound = common::wait_until(Duration::from_secs(10), || {
        let out = net.exec_b(&["ss", "-Hunl", &filter]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
    assert!(bound, "nothing bound to UDP port {port} in N-b");
}

fn workload(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut v: Vec<Vec<u8>> = (0..1000)
        .map(|_| {
            let n = 1 + (rng.next() % 1472) as usize;
            rng.bytes(n)
        })
        .collect();
    v.extend((0..100).map(|_| rng.bytes(8000)));
    v
}

#[test]
fn ping_and_arp_answered_by_netserver() {
    let Some(net) = TestNet::new("png") else {
        return;
    };
    if skip_without(&["ping"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let out = net.exec_b(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"]);
    assert!(
        out.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 received"), "{text}");
    let mac = net.mac_a0();
    let neigh = net.exec_b(&["ip", "neigh", "show", "198.18.0.2"]);
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
    assert!(
        neigh.contains(&mac),
        "ip neigh in N-b: {neigh} (want {mac})"
    );
    let stat = net.stat_json();
    assert!(stat.contains("\"echo_replies\":3"), "{stat}");
}

#[test]
fn socat_under_msock_to_kernel_echo() {
    let Some(net) = TestNet::new("ucl") else {
        return;
    };
    if skip_without(&["socat"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let _echo = net.spawn_b(&["socat", "-b", "65536", "UDP4-LISTEN:7001,reuseaddr", "PIPE"]);
    wait_udp_bound_b(&net, 7001);
    let (bridge, unix) = Bridge::new("ucl");
    let _client = net.spawn_a_msock(&["socat", "-b", "65536", &unix, "UDP4:198.18.0.1:7001"]);
    bridge.wait_ready();
    let n = bridge.echo_all(&workload(0x5eed_0001));
    assert_eq!(n, 1100);
    let stat = net.stat_json();
    assert!(stat.contains("\"state\":\"CACHED\""), "{stat}");
}

#[test]
fn kernel_client_to_echo_server_under_msock() {
    let Some(net) = TestNet::new("usv") else {
        return;
    };
    if skip_without(&["socat"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let _echo = net.spawn_a_msock(&["socat", "-b", "65536", "UDP4-LISTEN:7002,reuseaddr", "PIPE"]);
    net.wait_for_endpoint(":7002");
    let (bridge, unix) = Bridge::new("usv");
    let _client = net.spawn_b(&["socat", "-b", "65536", &unix, "UDP4:198.18.0.2:7002"]);
    bridge.wait_ready();
    let n = bridge.echo_all(&workload(0x5eed_0002));
    assert_eq!(n, 1100);
}

/// The number of control requests that named the endpoint bound to `port`.
fn endpoint_requests(stat: &str, port: u16) -> Option<u64> {
    let key = format!(":{port}\"");
    let start = stat.find(&key)?;
    let obj_start = stat[..start].rfind('{')?;
    let obj = &stat[obj_start..];
    let obj = &obj[..obj.find('}')?];
    let field = obj
        .split(',')
        .find_map(|kv| kv.strip_prefix("\"requests\":"))?;
    field.parse().ok()
}

#[test]
fn cached_socket_data_path_makes_no_netserver_request() {
    let Some(net) = TestNet::new("nrq") else {
        return;
    };
    if skip_without(&["socat", "strace"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let _echo = net.spawn_b(&["socat", "-b", "65536", "UDP4-LISTEN:7003,reuseaddr", "PIPE"]);
    wait_udp_bound_b(&net, 7003);
    let (bridge, unix) = Bridge::new("nrq");
    let trace = bridge._dir.path().join("strace.out");
    let trace_arg = trace.display().to_string();
    let _client = net.spawn_a_msock(&[
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=connect,sendmsg,recvmsg",
        "-o",
        &trace_arg,
        "socat",
        "-b",
        "65536",
        &unix,
        "UDP4:198.18.0.1:7003,sourceport=7103",
    ]);
    bridge.wait_ready();
    let mut rng = Rng(7);
    // Warm up: bind, connect and neighbour resolution happen here.
    bridge.echo_all(&[rng.bytes(100)]);
    let before = endpoint_requests(&net.stat_json(), 7103).expect("endpoint 7103 in msock stat");
    let trace_before = std::fs::read_to_string(&trace).unwrap_or_default();
    let small: Vec<Vec<u8>> = (0..200).map(|i| rng.bytes(1 + i * 7)).collect();
    bridge.echo_all(&small);
    let after = endpoint_requests(&net.stat_json(), 7103).expect("endpoint 7103 in msock stat");
    assert_eq!(before, after, "requests grew during the data path");
    // strace: no sendmsg/recvmsg on the control socket after warm-up.
    std::thread::sleep(Duration::from_millis(200));
    let full = std::fs::read_to_string(&trace).expect("strace output");
    let control_fd = full
        .lines()
        .find(|l| l.contains("connect(") && l.contains("msock/control"))
        .and_then(|l| l.split("connect(").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|fd| fd.trim().parse::<i32>().ok())
        .expect("control connect in strace output");
    let tail = &full[trace_before.len().min(full.len())..];
    let calls = tail
        .lines()
        .filter(|l| {
            l.contains(&format!("sendmsg({control_fd},"))
                || l.contains(&format!("recvmsg({control_fd},"))
        })
        .count();
    assert_eq!(calls, 0, "control socket used on the data path:\n{tail}");
}

/// Off-link destinations go through the gateway of the routing region: the netserver holds
/// 198.18.0.2/25 with gateway .1, and .200 (outside the /25, on `N-b`'s loopback) is reached
/// by sending to the gateway's MAC. Everything stays inside 198.18.0.0/24.
#[test]
fn off_link_destination_goes_through_the_gateway() {
    let Some(net) = TestNet::new("gw") else {
        return;
    };
    if skip_without(&["socat"]) {
        return;
    }
    let out = net.exec_b(&["ip", "addr", "add", "198.18.0.200/32", "dev", "lo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ns = net.start_netserver_with("198.18.0.2/25", &["--gateway", "198.18.0.1"], &[]);
    let route = net.exec(net.command_msock_cli(&["route"]));
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(route.contains("route default via 198.18.0.1"), "{route}");
    assert!(route.contains("route 198.18.0.0/25 scope link"), "{route}");
    let _echo = net.spawn_b(&[
        "socat",
        "-b",
        "65536",
        "UDP4-LISTEN:7300,bind=198.18.0.200,reuseaddr",
        "PIPE",
    ]);
    wait_udp_bound_b(&net, 7300);
    let (bridge, unix) = Bridge::new("gw");
    let _client = net.spawn_a_msock(&["socat", "-b", "65536", &unix, "UDP4:198.18.0.200:7300"]);
    bridge.wait_ready();
    let mut rng = Rng(0x6a7e);
    let datagrams: Vec<Vec<u8>> = (0..50).map(|i| rng.bytes(1 + i * 97)).collect();
    assert_eq!(bridge.echo_all(&datagrams), 50);
    // The gateway's MAC was resolved once and published; the endpoint is cached.
    let stat = net.stat_json();
    assert!(stat.contains("\"ip\":\"198.18.0.1\""), "{stat}");
    assert!(stat.contains("\"remote\":\"198.18.0.200:7300\""), "{stat}");
}

/// The receiver under msock waits with epoll (level- and edge-triggered), poll and select on its
/// placeholder descriptor, non-blocking; a kernel sender in `N-b` sends `COUNT` datagrams per
/// mode in bursts. Every datagram must be seen, and an edge-triggered wait must not miss one.
const READINESS_RECEIVER: &str = r#"
import select, socket, sys
COUNT = 200
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 7400))
s.setblocking(False)
def drain():
    n = 0
    while True:
        try:
            data, _ = s.recvfrom(2048)
        except BlockingIOError:
            return n
        n += 1
def run(wait):
    got = 0
    while got < COUNT:
        if not wait():
            print('timeout after', got, flush=True); sys.exit(1)
        got += drain()
    return got
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN)
print('ready', flush=True)
results = [run(lambda: ep.poll(5))]
ep.modify(s.fileno(), select.EPOLLIN | select.EPOLLET)
print('ready', flush=True)
results.append(run(lambda: ep.poll(5)))
ep.close()
p = select.poll(); p.register(s.fileno(), select.POLLIN)
print('ready', flush=True)
results.append(run(lambda: p.poll(5000)))
print('ready', flush=True)
results.append(run(lambda: select.select([s], [], [], 5)[0]))
print('done', *results, flush=True)
"#;

const READINESS_SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for burst in range(20):
    for i in range(10):
        s.sendto(b'x' * (1 + burst * 10 + i), ('198.18.0.2', 7400))
    time.sleep(0.005)
"#;

#[test]
fn epoll_poll_and_select_see_every_datagram() {
    let Some(net) = TestNet::new("rdy") else {
        return;
    };
    if skip_without(&["python3"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let receiver = net.spawn_a_msock(&["python3", "-c", READINESS_RECEIVER]);
    for round in 1..=4 {
        let ready = common::wait_until(Duration::from_secs(10), || {
            receiver.log().matches("ready").count() >= round
        });
        assert!(
            ready,
            "receiver not ready for round {round}:\n{}",
            receiver.log()
        );
        let out = net.exec_b(&["python3", "-c", READINESS_SENDER]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let done = common::wait_until(Duration::from_secs(10), || receiver.log().contains("done"));
    assert!(done, "receiver did not finish:\n{}", receiver.log());
    assert!(
        receiver.log().contains("done 200 200 200 200"),
        "{}",
        receiver.log()
    );
}

/// Linux delivers a subnet broadcast to sockets bound to the wildcard address, not to ones
/// bound to the unicast address.
const BROADCAST_RECEIVER: &str = r#"
import socket, sys
wild = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
wild.bind(('0.0.0.0', 7500))
spec = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
spec.bind(('198.18.0.2', 7501))
wild.settimeout(5); spec.settimeout(1)
print('ready', flush=True)
got = sorted(wild.recvfrom(100)[0] for _ in range(2))
try:
    extra = spec.recvfrom(100)[0]
except socket.timeout:
    extra = b'none'
print('got', b','.join(got).decode(), extra.decode(), flush=True)
"#;

const BROADCAST_SENDER: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(b'unicast', ('198.18.0.2', 7500))
s.sendto(b'broadcast', ('198.18.0.255', 7500))
s.sendto(b'broadcast-to-specific', ('198.18.0.255', 7501))
"#;

#[test]
fn wildcard_socket_receives_subnet_broadcast() {
    let Some(net) = TestNet::new("bca") else {
        return;
    };
    if skip_without(&["python3"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let receiver = net.spawn_a_msock(&["python3", "-c", BROADCAST_RECEIVER]);
    let ready = common::wait_until(Duration::from_secs(10), || receiver.log().contains("ready"));
    assert!(ready, "receiver not ready:\n{}", receiver.log());
    net.wait_for_endpoint(":7501");
    let out = net.exec_b(&["python3", "-c", BROADCAST_SENDER]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = common::wait_until(Duration::from_secs(10), || receiver.log().contains("got"));
    assert!(done, "{}", receiver.log());
    assert!(
        receiver.log().contains("got broadcast,unicast none"),
        "{}",
        receiver.log()
    );
}

/// One unmodified program mixing sockets: AF_INET6 on `::` (served by msock over IPv4 with
/// v4-mapped addresses), AF_INET6 with IPV6_V6ONLY (native IPv6: the kernel's), loopback UDP
/// (the kernel's), and a blocking receive that must sleep, not spin.
const MIXED_PROGRAM: &str = r#"
import resource, socket, time
out = []
# AF_INET6 bound to :: without V6ONLY: msock's; talks to the kernel peer's echo via v4-mapped.
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s6.bind(('::', 7601))
s6.settimeout(5)
s6.sendto(b'via-v6-socket', ('::ffff:198.18.0.1', 7600))
data, src = s6.recvfrom(100)
out.append('v6 %s %s' % (data.decode(), src[0]))
# V6ONLY on ::: native IPv6, left to the kernel (it binds, msock does not see it).
only6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
only6.bind(('::', 7602))
# Loopback: the kernel's, in the same program.
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(('127.0.0.1', 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(('127.0.0.1', 0))
a.sendto(b'loop', b.getsockname())
out.append('loop %s' % b.recv(10).decode())
# A blocking receive with nothing to read sleeps in the kernel: ~no CPU for 1 s.
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.bind(('0.0.0.0', 7603))
s4.settimeout(1.0)
before = resource.getrusage(resource.RUSAGE_SELF)
t = time.monotonic()
try:
    s4.recv(10); out.append('unexpected data')
except socket.timeout:
    pass
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
out.append('blocked %.2fs cpu %.3fs' % (time.monotonic() - t, cpu))
print('|'.join(out), flush=True)
time.sleep(3)
"#;

#[test]
fn one_program_mixes_msock_v6_mapped_and_kernel_sockets() {
    let Some(net) = TestNet::new("mix") else {
        return;
    };
    if skip_without(&["python3", "socat"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let _echo = net.spawn_b(&["socat", "-b", "65536", "UDP4-LISTEN:7600,reuseaddr", "PIPE"]);
    wait_udp_bound_b(&net, 7600);
    let program = net.spawn_a_msock(&["python3", "-c", MIXED_PROGRAM]);
    let done = common::wait_until(Duration::from_secs(15), || {
        program.log().contains("blocked")
    });
    assert!(done, "{}", program.log());
    let log = program.log();
    println!("{}", log.trim());
    assert!(log.contains("v6 via-v6-socket ::ffff:198.18.0.1"), "{log}");
    assert!(log.contains("loop loop"), "{log}");
    let cpu: f64 = log
        .split("cpu ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|v| v.parse().ok())
        .expect("cpu figure");
    assert!(
        cpu < 0.2,
        "a blocked receive used {cpu} s of CPU in 1 s: busy-waiting? {log}"
    );
    // msock holds the v6 socket (as udp6) and the v4 one; not the V6ONLY or loopback ones.
    let stat = net.stat_json();
    assert!(
        stat.contains("\"proto\":\"udp6\",\"local\":\"0.0.0.0:7601\""),
        "{stat}"
    );
    assert!(stat.contains(":7603\""), "{stat}");
    assert!(!stat.contains(":7602\""), "{stat}");
    assert_eq!(stat.matches("\"id\":").count(), 2, "{stat}");
}

#[test]
fn second_bind_of_same_port_gets_eaddrinuse() {
    let Some(net) = TestNet::new("inu") else {
        return;
    };
    if skip_without(&["python3"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let holder = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7200))\nprint('bound',flush=True)\ntime.sleep(30)";
    let _h = net.spawn_a_msock(&["python3", "-c", holder]);
    net.wait_for_endpoint(":7200");
    let probe = "import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ntry:\n  s.bind(('0.0.0.0',7200)); print('bound')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])";
    let out = net.exec_a_msock(&["python3", "-c", probe]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EADDRINUSE");
    let probe2 = "import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7201)); print('bound')";
    let out = net.exec_a_msock(&["python3", "-c", probe2]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bound");
}

#[test]
fn no_netserver_gives_enetdown_without_hanging() {
    let Some(net) = TestNet::new("nod") else {
        return;
    };
    if skip_without(&["python3"]) {
        return;
    }
    let probe = "import socket,errno\ntry:\n  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); print('created')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])";
    let start = Instant::now();
    let out = net.exec_a_msock(&["python3", "-c", probe]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ENETDOWN");
    // Non-IP sockets are untouched.
    let unix = "import socket\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); print('ok')";
    let out = net.exec_a_msock(&["python3", "-c", unix]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Writes hex frames to a file and sends them raw on `N-b0` from `N-b` (python AF_PACKET).
fn inject(net: &TestNet, frames: &[Vec<u8>]) {
    let dir = common::TempDir::new("inj");
    let file = dir.path().join("frames.hex");
    let text: String = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    std::fs::write(&file, text).expect("write frames");
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('{}',0))\n\
         for line in open('{}'):\n  s.send(bytes.fromhex(line.strip()))\n",
        net.iface_b(),
        file.display()
    );
    let out = net.exec_b(&["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drop_count(stat: &str, reason: &str) -> u64 {
    let key = format!("\"{reason}\":");
    let Some(drops) = stat.split("\"drops\":{").nth(1) else {
        return 0;
    };
    let drops = &drops[..drops.find('}').unwrap_or(drops.len())];
    drops
        .split(',')
        .find_map(|kv| kv.strip_prefix(&key))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bad_frames_on_the_wire_are_dropped_and_counted() {
    let Some(net) = TestNet::new("bad") else {
        return;
    };
    if skip_without(&["python3", "ping"]) {
        return;
    }
    let _ns = net.start_netserver(&[("MSOCK_FRAG_TIMEOUT_MS", "500")]);
    let dst = common::parse_mac(&net.mac_a0());
    let src = common::parse_mac(&net.mac_b0());
    let frames = support::bad_frames(dst, src);
    inject(
        &net,
        &frames.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
    );
    // An ARP flood for addresses that are not ours must not grow the neighbour table.
    inject(&net, &support::arp_flood(src, 5000));
    std::thread::sleep(Duration::from_millis(1500));
    let stat = net.stat_json();
    for (reason, _) in &frames {
        assert!(
            drop_count(&stat, reason) > 0,
            "no drop counted as {reason}: {stat}"
        );
    }
    assert!(drop_count(&stat, "arp-not-for-us") >= 5000, "{stat}");
    let neighbors = stat.split("\"neighbors\":[").nth(1).unwrap_or("");
    assert!(
        neighbors.matches("\"ip\"").count() <= 1,
        "neighbour table grew: {neighbors}"
    );
    // Still alive and answering.
    let out = net.exec_b(&["ping", "-c", "1", "-W", "2", "198.18.0.2"]);
    assert!(
        out.status.success(),
        "netserver stopped answering after bad input"
    );
}

#[path = "support/frames.rs"]
mod support;
