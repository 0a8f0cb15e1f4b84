//! End to end: unmodified programs (python3 scripts, socat) under `msock run` in `N-a` using
//! TCP sockets of libmsock against kernel peers in `N-b` (issue 5): blocking and non-blocking
//! clients, a server (bind/listen/accept), errno semantics (ECONNREFUSED, EPIPE/SIGPIPE,
//! SO_RCVTIMEO, RST on close with unread data), epoll edge-triggered reading, the cached data
//! path (no netserver request), a recall mid-transfer, the netserver killed mid-transfer and
//! no netserver at all.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn skip_without(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            eprintln!("skipped: {t} not installed");
            return true;
        }
    }
    false
}

fn out_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A kernel echo server on `port` in `N-b`.
fn echo_b(net: &TestNet, port: u16) -> Proc {
    let listen = format!("TCP4-LISTEN:{port},reuseaddr,fork");
    let p = net.spawn_b(&["socat", &listen, "PIPE"]);
    wait_tcp_listen_b(net, port);
    p
}

fn wait_tcp_listen_b(net: &TestNet, port: u16) {
    let needle = format!(":{port} ");
    let ok = wait_until(Duration::from_secs(5), || {
        let o = net.exec_b(&["ss", "-Htln"]);
        String::from_utf8_lossy(&o.stdout).contains(&needle)
    });
    assert!(ok, "nothing listening on {port} in N-b");
}

/// A kernel echo server on `port` in `N-b` that never stops reading while its writes wait
/// (socat's PIPE can deadlock on its own pipe under back-pressure).
fn threaded_echo_b(net: &TestNet, port: u16) -> Proc {
    let script = format!(
        "import socket, threading, queue
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', {port})); s.listen(8)
def serve(c):
    q = queue.Queue()
    def wr():
        while True:
            b = q.get()
            if b is None: break
            c.sendall(b)
        c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=wr); t.start()
    while True:
        b = c.recv(1 << 16)
        if not b: break
        q.put(b)
    q.put(None); t.join(); c.close()
while True:
    c, a = s.accept(); threading.Thread(target=serve, args=(c,)).start()"
    );
    let p = net.spawn_b(&["python3", "-c", &script]);
    wait_tcp_listen_b(net, port);
    p
}

/// Python prelude of the client scripts.
const PRELUDE: &str = "import socket, os, sys, hashlib, errno, select, signal, time, threading\n";

#[test]
fn blocking_client_echoes_10mb_exactly() {
    let Some(net) = TestNet::new("tbc") else {
        return;
    };
    if skip_without(&["socat", "python3", "ss"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    // Not socat's PIPE: under back-pressure it can stop reading its socket while its own pipe
    // is full (its Recv-Q grows, its Send-Q stays empty: socat waits on itself).
    let _echo = threaded_echo_b(&net, 9301);
    let script = format!(
        "{PRELUDE}s = socket.socket()\ns.connect(('198.18.0.1', 9301))
data = os.urandom(10_000_000)
got = bytearray()
def rd():
    while len(got) < len(data):
        b = s.recv(1 << 16)
        if not b: break
        got.extend(b)
t = threading.Thread(target=rd); t.start(); s.sendall(data); t.join()
print(hashlib.sha256(data).hexdigest() == hashlib.sha256(got).hexdigest(), len(got))
s.close()"
    );
    let out = net.exec_a_msock(&["python3", "-c", &script]);
    assert_eq!(out_of(&out), "True 10000000", "{}", stderr_of(&out));
}

#[test]
fn nonblocking_connect_poll_and_refused() {
    let Some(net) = TestNet::new("tnb") else {
        return;
    };
    if skip_without(&["socat", "python3", "ss"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let _echo = echo_b(&net, 9302);
    let script = format!(
        "{PRELUDE}s = socket.socket(); s.setblocking(False)
r = s.connect_ex(('198.18.0.1', 9302)); print(errno.errorcode.get(r, r))
r2 = s.connect_ex(('198.18.0.1', 9302)); print(errno.errorcode.get(r2, r2))
p = select.poll(); p.register(s, select.POLLOUT); print(bool(p.poll(5000)))
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
r3 = s.connect_ex(('198.18.0.1', 9302))
r4 = s.connect_ex(('198.18.0.1', 9302))
print('EISCONN' if r3 in (0, errno.EISCONN) and r4 == errno.EISCONN else (r3, r4))
s.setblocking(True); s.sendall(b'ping'); print(s.recv(4))
c = socket.socket()
try:
    c.connect(('198.18.0.1', 9399)); print('connected?')
except OSError as e:
    print(errno.errorcode[e.errno])"
    );
    let out = net.exec_a_msock(&["python3", "-c", &script]);
    let text = out_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"EINPROGRESS"),
        "{text}\n{}",
        stderr_of(&out)
    );
    assert!(
        matches!(
            lines.get(1),
            Some(&"EALREADY") | Some(&"EISCONN") | Some(&"0")
        ),
        "{text}"
    );
    assert_eq!(
        &lines[2..],
        ["True", "0", "EISCONN", "b'ping'", "ECONNREFUSED"],
        "{text}"
    );
}

#[test]
fn server_under_msock_serves_kernel_clients() {
    let Some(net) = TestNet::new("tsv") else {
        return;
    };
    if skip_without(&["socat", "python3"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let server =
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9303)); s.listen(8)
for _ in range(3):
    c, a = s.accept()
    while True:
        b = c.recv(65536)
        if not b: break
        c.sendall(b)
    c.close()";
    let _srv = net.spawn_a_msock(&["python3", "-c", server]);
    net.wait_for_endpoint(":9303");
    let dir = TempDir::new("tsv");
    let input = dir.path().join("in");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| ((i * 7919) >> 3) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    for _ in 0..3 {
        let cmd = format!(
            "socat -t 20 - TCP4:198.18.0.2:9303 < {} | sha256sum",
            input.display()
        );
        let out = net.exec_b(&["sh", "-c", &cmd]);
        let want = net.exec_b(&["sh", "-c", &format!("sha256sum < {}", input.display())]);
        assert_eq!(out_of(&out), out_of(&want), "{}", stderr_of(&out));
    }
}

#[test]
fn epoll_edge_triggered_reader_gets_every_byte() {
    let Some(net) = TestNet::new("tet") else {
        return;
    };
    if skip_without(&["socat", "python3", "ss"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let dir = TempDir::new("tet");
    let input = dir.path().join("in");
    let data: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i * 31 + (i >> 9)) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    let listen = format!("OPEN:{}", input.display());
    let _src = net.spawn_b(&["socat", "-u", &listen, "TCP4-LISTEN:9304,reuseaddr"]);
    wait_tcp_listen_b(&net, 9304);
    let script = format!(
        "{PRELUDE}s = socket.create_connection(('198.18.0.1', 9304)); s.setblocking(False)
ep = select.epoll(); ep.register(s.fileno(), select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP)
h = hashlib.sha256(); n = 0; done = False
while not done:
    for fd, ev in ep.poll(10):
        while True:
            try:
                b = s.recv(1 << 16)
            except BlockingIOError:
                break
            if not b:
                done = True; break
            h.update(b); n += len(b)
print(n, h.hexdigest())"
    );
    let out = net.exec_a_msock(&["python3", "-c", &script]);
    let want = net.exec_b(&["sh", "-c", &format!("sha256sum < {}", input.display())]);
    let want_hash = out_of(&want)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        out_of(&out),
        format!("10000000 {want_hash}"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn errno_semantics_epipe_sigpipe_rcvtimeo_shutdown_and_rst() {
    let Some(net) = TestNet::new("ter") else {
        return;
    };
    if skip_without(&["socat", "python3", "ss"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let _echo = echo_b(&net, 9305);
    // Peer that closes at once (after reading nothing): writes then fail with EPIPE/ECONNRESET.
    let _closer = net.spawn_b(&["socat", "TCP4-LISTEN:9306,reuseaddr,fork", "EXEC:true"]);
    wait_tcp_listen_b(&net, 9306);
    let script = format!(
        "{PRELUDE}s = socket.create_connection(('198.18.0.1', 9305))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, (1).to_bytes(8, 'little') + (200000).to_bytes(8, 'little'))
t0 = time.time()
try:
    s.recv(10); print('data?')
except OSError as e:
    print(errno.errorcode[e.errno], round(time.time() - t0, 1) >= 1.1)
s.sendall(b'abc'); s.shutdown(socket.SHUT_WR)
got = b''
while True:
    b = s.recv(10)
    if not b: break
    got += b
print(got)
try:
    s.send(b'x'); print('sent after SHUT_WR?')
except BrokenPipeError:
    print('EPIPE')
signal.signal(signal.SIGPIPE, lambda *a: print('SIGPIPE'))
c = socket.create_connection(('198.18.0.1', 9306)); time.sleep(0.5)
errs = set()
for i in range(50):
    try:
        c.send(b'y' * 1000, socket.MSG_NOSIGNAL if i % 2 else 0)
    except OSError as e:
        errs.add(errno.errorcode[e.errno])
    time.sleep(0.01)
print(sorted(errs))"
    );
    let out = net.exec_a_msock(&["python3", "-c", &script]);
    let text = out_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"EAGAIN True"),
        "{text}\n{}",
        stderr_of(&out)
    );
    assert_eq!(lines.get(1), Some(&"b'abc'"), "{text}");
    assert_eq!(lines.get(2), Some(&"EPIPE"), "{text}");
    assert!(
        text.contains("SIGPIPE"),
        "SIGPIPE raised without MSG_NOSIGNAL: {text}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.contains("EPIPE") || last.contains("ECONNRESET"),
        "{text}"
    );
}

#[test]
fn close_with_unread_data_resets_the_peer() {
    let Some(net) = TestNet::new("trs") else {
        return;
    };
    if skip_without(&["python3"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let peer = "import socket, time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9307)); s.listen(1); c, a = s.accept(); c.sendall(b'unread data'); time.sleep(1)
try:
    print(repr(c.recv(10)))
except ConnectionResetError:
    print('ECONNRESET')";
    let mut srv = net.spawn_b(&["python3", "-c", peer]);
    std::thread::sleep(Duration::from_millis(400));
    let script = format!(
        "{PRELUDE}s = socket.create_connection(('198.18.0.1', 9307)); time.sleep(0.3); s.close(); time.sleep(0.2); print('closed')"
    );
    let out = net.exec_a_msock(&["python3", "-c", &script]);
    assert_eq!(out_of(&out), "closed", "{}", stderr_of(&out));
    srv.wait_timeout(Duration::from_secs(5));
    assert!(srv.log().contains("ECONNRESET"), "peer saw: {}", srv.log());
}

#[test]
fn cached_connection_makes_no_requests_and_survives_a_recall() {
    let Some(net) = TestNet::new("tca") else {
        return;
    };
    if skip_without(&["socat", "python3", "ss"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let _echo = threaded_echo_b(&net, 9308);
    // 40 MB echoed in 64 KiB steps, slowly enough for a recall in the middle.
    let script = format!(
        "{PRELUDE}s = socket.socket(); s.bind(('0.0.0.0', 9408)); s.connect(('198.18.0.1', 9308))
print('connected', flush=True)
data = os.urandom(40_000_000); got = bytearray()
def rd():
    while len(got) < len(data):
        b = s.recv(1 << 16)
        if not b: break
        got.extend(b)
t = threading.Thread(target=rd); t.start()
for i in range(0, len(data), 1 << 16):
    s.sendall(data[i:i + (1 << 16)])
    if i % (1 << 22) == 0: time.sleep(0.05)
t.join()
print(hashlib.sha256(data).hexdigest() == hashlib.sha256(got).hexdigest(), len(got), flush=True)"
    );
    let mut client = net.spawn_a_msock(&["python3", "-c", &script]);
    net.wait_for_endpoint(":9408");
    let stat = net.stat_json();
    assert!(stat.contains("CACHED"), "{stat}");
    // The id of the endpoint on port 9408.
    let key = ":9408\"";
    let at = stat.find(key).expect("endpoint 9408");
    let obj = &stat[stat[..at].rfind('{').unwrap_or(0)..];
    let id: String = obj
        .split("\"id\":")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let recall = net.exec(net.command_msock_cli(&["recall", &id]));
    assert!(
        recall.status.success(),
        "recall {id}: {}",
        stderr_of(&recall)
    );
    let status = client.wait_timeout(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{}", client.log());
    assert!(client.log().contains("True 40000000"), "{}", client.log());
}

#[test]
fn netserver_killed_mid_transfer_gives_errors_not_hangs() {
    let Some(net) = TestNet::new("tkl") else {
        return;
    };
    if skip_without(&["socat", "python3", "ss"]) {
        return;
    }
    let mut ns = net.start_netserver(&[]);
    let _echo = echo_b(&net, 9309);
    let script = format!(
        "{PRELUDE}s = socket.create_connection(('198.18.0.1', 9309)); print('connected', flush=True)
r, w = os.pipe(); err = None
t0 = time.time()
while time.time() - t0 < 20:
    try:
        s.sendall(b'z' * 4096); s.recv(4096)
    except OSError as e:
        err = errno.errorcode[e.errno]; break
os.write(w, b'pipe ok'); print(err, os.read(r, 7).decode(), flush=True)"
    );
    let mut client = net.spawn_a_msock(&["python3", "-c", &script]);
    assert!(
        wait_until(Duration::from_secs(5), || client
            .log()
            .contains("connected")),
        "{}",
        client.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    ns.stop();
    let status = client.wait_timeout(Duration::from_secs(15));
    assert!(status.is_some(), "client hung: {}", client.log());
    let log = client.log();
    assert!(
        log.contains("ECONNRESET pipe ok") || log.contains("EPIPE pipe ok"),
        "{log}"
    );
}

#[test]
fn no_netserver_gives_enetdown_without_hanging() {
    let Some(net) = TestNet::new("tnd") else {
        return;
    };
    if skip_without(&["python3"]) {
        return;
    }
    let probe = "import socket,errno\ntry:\n  s=socket.socket(); s.connect(('198.18.0.1', 80)); print('connected?')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])";
    let start = Instant::now();
    let out = net.exec_a_msock(&["python3", "-c", probe]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out_of(&out), "ENETDOWN", "{}", stderr_of(&out));
}

/// A blocking recv interrupted by SIGALRM: with SA_RESTART the call goes on (Python runs its
/// handler only once recv returns, at the data), without it the call fails with EINTR at once
/// (Python runs the handler, then retries, PEP 475). msock decides per the handler that ran.
#[test]
fn blocking_recv_restarts_or_fails_per_the_handlers_sa_restart() {
    let Some(net) = TestNet::new("tsg") else {
        return;
    };
    if skip_without(&["python3", "ss"]) {
        return;
    }
    let _ns = net.start_netserver(&[]);
    let server = "import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9310)); s.listen(4)
while True:
    c, _ = s.accept(); time.sleep(1.5); c.send(b'x'); c.close()";
    let _peer = net.spawn_b(&["python3", "-c", server]);
    wait_tcp_listen_b(&net, 9310);
    for (mode, expect_early) in [("restart", false), ("intr", true)] {
        let script = format!(
            "{PRELUDE}t0 = time.time(); seen = []
signal.signal(signal.SIGALRM, lambda *a: seen.append(time.time() - t0))
signal.siginterrupt(signal.SIGALRM, {interrupt})
s = socket.create_connection(('198.18.0.1', 9310))
signal.setitimer(signal.ITIMER_REAL, 0.3)
data = s.recv(10)
print(data, 'early' if seen and seen[0] < 1.0 else 'late')",
            interrupt = if mode == "intr" { "True" } else { "False" },
        );
        let out = net.exec_a_msock(&["python3", "-c", &script]);
        let text = out_of(&out);
        let want = if expect_early {
            "b'x' early"
        } else {
            "b'x' late"
        };
        assert_eq!(text, want, "{mode}: {}", stderr_of(&out));
    }
}
