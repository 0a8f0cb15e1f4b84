//! Flushed TCP connections (paper §3.1) against the kernel's TCP over the testnet: a connection
//! flushed into the netserver moves its bytes through send/recv requests, one alternating
//! between cached and flushed every 10 ms arrives byte-exact both ways, and the connections of
//! a client killed with SIGKILL are closed as Linux closes a dead process's sockets — queued
//! data and a FIN, or a reset where received data was left unread — with no endpoint left over.
//! Needs root, socat and python3.

mod common;

use std::time::Duration;

use common::streams::*;
use common::*;

/// The value of `key=` in an `--info` line.
fn info_value(log: &str, key: &str) -> Option<u64> {
    log.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[test]
fn flushed_connection_moves_bytes_through_the_netserver() {
    let Some(net) = TestNet::new("tf-flush") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let (up, down) = both_ways(&net, "5101", 8, "--flush", Duration::from_secs(120));
    for log in [&up, &down] {
        assert!(log.contains("flushes=1"), "{log}");
        assert!(log.contains("closed_flushed=1"), "{log}");
    }
    let stat = stdout_of(&net.exec(net.command_msock_cli(&["stat"])));
    assert!(
        !stat.contains("FLUSHED"),
        "leftover flushed endpoint: {stat}"
    );
}

#[test]
fn hundred_megabytes_alternating_cached_and_flushed_every_10ms_are_byte_exact() {
    let Some(net) = TestNet::new("tf-migrate") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let (up, down) = both_ways(
        &net,
        "5102",
        100,
        "--migrate-every 10",
        Duration::from_secs(120),
    );
    eprintln!("active: {}\npassive: {}", up.trim(), down.trim());
    for log in [&up, &down] {
        let flushes = info_value(log, "flushes").unwrap_or(0);
        assert!(flushes >= 5, "too few migrations: {log}");
    }
}

/// A kernel peer for the kill tests. `recv` mode: a small receive buffer, reads nothing until
/// the file `argv[3]` exists, then reads to the end and prints "eof BYTES SHA256" or "reset".
/// `send` mode: sends `argv[3]` bytes, then reads, and prints "eof" or "reset".
const KILL_PEER: &str = r#"
import hashlib, os, socket, sys, time
addr, port, mode, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if mode == "recv":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.bind((addr, port))
s.listen(1)
print("ready", flush=True)
c, peer = s.accept()
print("accepted %s:%d" % peer, flush=True)
try:
    if mode == "recv":
        while not os.path.exists(arg):
            time.sleep(0.01)
        h, n = hashlib.sha256(), 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
        print("eof %d %s %.3f" % (n, h.hexdigest(), time.time()), flush=True)
    else:
        c.sendall(b"u" * int(arg))
        print("sent", flush=True)
        while c.recv(65536):
            pass
        print("eof %.3f" % time.time(), flush=True)
except (ConnectionResetError, BrokenPipeError):
    print("reset %.3f" % time.time(), flush=True)
"#;

/// The pid `msock stat` lists for the endpoint in `state` whose remote is `remote`.
fn holder_pid(net: &TestNet, state: &str, remote: &str) -> Option<u32> {
    let stat = stdout_of(&net.exec(net.command_msock_cli(&["stat"])));
    stat.lines()
        .find(|l| l.contains(state) && l.contains(remote))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|p| p.parse().ok())
}

fn start_peer(net: &TestNet, port: &str, mode: &str, arg: &str) -> Proc {
    let peer = net.spawn(
        "kernel-peer",
        net.command_in(
            net.ns_b(),
            &[
                "python3",
                "-c",
                KILL_PEER,
                &PEER_ADDR.to_string(),
                port,
                mode,
                arg,
            ],
        ),
    );
    await_log(&peer, "ready");
    peer
}

/// A client killed with SIGKILL while its flushed connection still has data queued at the
/// netserver: the peer gets every byte the socket took, then a FIN (Linux closes a dead
/// process's sockets gracefully when nothing was left unread); the endpoint is gone.
#[test]
fn killed_client_flushed_connection_delivers_its_queued_data_then_fin() {
    let Some(net) = python_testnet("tf-kfin") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let msock = msock_bin();
    let msock = msock.to_str().expect("utf-8 path");
    let dir = TempDir::new("tcp-flush-kill");
    let go = dir.path().join("go");
    // 200 KB fit in the netserver's send buffer (256 KiB) whatever the peer's window.
    let data = dir.path().join("data.bin");
    std::fs::write(
        &data,
        (0..200_000u32)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .expect("write");
    let port = "5103";
    let peer = start_peer(&net, port, "recv", go.to_str().expect("utf-8"));
    let _client = net.spawn(
        "msock-connect",
        sh(
            &net,
            net.ns_a(),
            &format!(
                "(cat {}; sleep 60) | exec {msock} tcp connect {PEER_ADDR}:{port} --flush",
                data.display()
            ),
        ),
    );
    let remote = format!("{PEER_ADDR}:{port}");
    let mut pid = None;
    assert!(
        wait_until(READY_TIMEOUT, || {
            pid = holder_pid(&net, "FLUSHED", &remote);
            pid.is_some()
        }),
        "no flushed endpoint"
    );
    // Let the client hand its 200 KB to the netserver (the peer reads nothing yet).
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::time::Instant::now();
    let pid = pid.expect("pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill")
            .success()
    );
    assert!(
        wait_until(Duration::from_secs(2), || holder_pid(
            &net, "FLUSHED", &remote
        )
        .is_none()),
        "flushed endpoint not reclaimed"
    );
    let reclaimed = killed.elapsed();
    std::fs::write(&go, b"").expect("go");
    assert!(
        wait_until(Duration::from_secs(10), || peer.log().contains("eof")
            || peer.log().contains("reset")),
        "{}",
        peer.log()
    );
    let expected = format!("eof 200000 {}", sha256(&data));
    assert!(
        peer.log().contains(&expected),
        "want '{expected}': {}",
        peer.log()
    );
    // The netserver runs the close to its end: only its TIME-WAIT is left (as `ss` would show
    // the kernel's), no endpoint.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let stat = stdout_of(&net.exec(net.command_msock_cli(&["stat"])));
            stat.lines()
                .filter(|l| l.contains(&remote))
                .all(|l| l.contains("TIME-WAIT") && l.contains("netsrv"))
        }),
        "leftover: {}",
        stdout_of(&net.exec(net.command_msock_cli(&["stat"])))
    );
    eprintln!("flushed endpoint reclaimed {reclaimed:?} after kill -9");
}

/// A client killed while its flushed connection holds received data it never read: the peer
/// is reset, as Linux resets a socket closed with unread data.
#[test]
fn killed_client_flushed_connection_with_unread_data_is_reset() {
    let Some(net) = python_testnet("tf-krst") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let msock = msock_bin();
    let msock = msock.to_str().expect("utf-8 path");
    let port = "5104";
    let peer = start_peer(&net, port, "send", "1000000");
    // Nobody reads msock's stdout: it stops reading the connection once the pipe is full.
    let _client = net.spawn(
        "msock-connect",
        sh(
            &net,
            net.ns_a(),
            &format!("sleep 60 | {msock} tcp connect {PEER_ADDR}:{port} --flush | sleep 60"),
        ),
    );
    let remote = format!("{PEER_ADDR}:{port}");
    let mut pid = None;
    assert!(
        wait_until(READY_TIMEOUT, || {
            pid = holder_pid(&net, "FLUSHED", &remote);
            pid.is_some()
        }),
        "no flushed endpoint"
    );
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::time::Instant::now();
    let pid = pid.expect("pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill")
            .success()
    );
    assert!(
        wait_until(Duration::from_secs(3), || peer.log().contains("reset")),
        "peer not reset: {}",
        peer.log()
    );
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2), "reset took {took:?}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            !stdout_of(&net.exec(net.command_msock_cli(&["stat"]))).contains(&remote)
        }),
        "leftover: {}",
        stdout_of(&net.exec(net.command_msock_cli(&["stat"])))
    );
    eprintln!("peer reset {took:?} after kill -9");
}

/// Child side of [`killed_client_cached_and_flushed_connections_close_as_linux`]: one client
/// (one control connection) holding two connections to `MSOCK_TEST_PEER` ports `PORT_A` and
/// `PORT_B`, each sent `MSOCK_TEST_BYTES` pattern bytes; B is flushed into the netserver, A
/// stays cached and is driven here until the process is killed.
#[test]
#[ignore = "child process of a kill test"]
fn child_holds_cached_and_flushed_connections() {
    use msock::client::tcp_session::TcpSession;
    use msock::stack::tcp::connection::{InitialSequence, State, TcpConfig, TcpConnection};
    use msock::stack::tcp::isn::IsnGenerator;
    let Ok(peer) = std::env::var("MSOCK_TEST_PEER") else {
        return;
    };
    let peer: std::net::Ipv4Addr = peer.parse().expect("peer address");
    let port = |k: &str| -> u16 {
        std::env::var(k)
            .expect("port")
            .parse()
            .expect("port number")
    };
    let bytes: usize = std::env::var("MSOCK_TEST_BYTES")
        .expect("bytes")
        .parse()
        .expect("bytes");
    let payload: Vec<u8> = (0..bytes as u32).map(|i| (i * 31 % 251) as u8).collect();
    let isn = IsnGenerator::new(*b"msock-test-isn-k");
    let mut a = TcpSession::open(0).expect("session A");
    let mut b = a.sibling(0).expect("session B");
    let mut conns = Vec::new();
    for (session, p) in [(&mut a, port("PORT_A")), (&mut b, port("PORT_B"))] {
        let remote = std::net::SocketAddrV4::new(peer, p);
        session.resolve(peer).expect("resolve");
        session.connected(remote).expect("connected");
        let now = session.now();
        let local = session.local();
        let initial = InitialSequence {
            iss: isn.initial_sequence(local, remote, now),
            ts_offset: isn.timestamp_offset(local, remote),
        };
        let mut conn = TcpConnection::connect(TcpConfig::default(), local, remote, initial, now);
        while conn.state() != State::Established {
            let now = session.now();
            session
                .receive(|_, seg| {
                    conn.process(now, seg);
                })
                .expect("receive");
            session.transmit(&mut conn, now).expect("transmit");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(conn.send(&payload), Ok(bytes), "send buffer too small");
        session
            .transmit(&mut conn, session.now())
            .expect("transmit");
        conns.push(conn);
    }
    let mut cached = conns.remove(0);
    let mut flushed = conns.remove(0);
    b.flush(&mut flushed, b.now()).expect("flush");
    // Socket calls on the flushed connection go through the netserver, with Linux's answers.
    let int = |v: Vec<u8>| i32::from_ne_bytes(v[..4].try_into().expect("int"));
    b.flushed_set_option(libc::IPPROTO_TCP, libc::TCP_NODELAY, &1i32.to_ne_bytes())
        .expect("TCP_NODELAY");
    let nodelay = int(b
        .flushed_get_option(libc::IPPROTO_TCP, libc::TCP_NODELAY)
        .expect("get"));
    b.flushed_set_option(libc::SOL_SOCKET, libc::SO_SNDBUF, &100_000i32.to_ne_bytes())
        .expect("SO_SNDBUF");
    let sndbuf = int(b
        .flushed_get_option(libc::SOL_SOCKET, libc::SO_SNDBUF)
        .expect("get"));
    let bad = b
        .flushed_set_option(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, &1000i32.to_ne_bytes())
        .err()
        .and_then(|e| e.raw_os_error());
    let info = b
        .flushed_get_option(libc::IPPROTO_TCP, libc::TCP_INFO)
        .expect("TCP_INFO");
    let (local, remote) = b.names().expect("names");
    let cached_option = a
        .flushed_get_option(libc::IPPROTO_TCP, libc::TCP_NODELAY)
        .err()
        .and_then(|e| e.raw_os_error());
    println!(
        "options nodelay={nodelay} sndbuf={sndbuf} keepcnt1000={bad:?} info_len={} tcpi_state={} local={local} remote={remote:?} cached={cached_option:?}",
        info.len(),
        info[0]
    );
    println!("holding",);
    loop {
        let now = a.now();
        a.receive(|_, seg| {
            cached.process(now, seg);
        })
        .expect("receive");
        a.transmit(&mut cached, now).expect("transmit");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `kill -9` of a client holding a cached and a flushed connection, neither with unread data
/// and both with data the peer has not taken yet: within a second the netserver has reclaimed
/// both (no endpoint left in `msock stat`), and each peer then receives every byte followed by
/// a FIN, as from a Linux process killed the same way.
#[test]
fn killed_client_cached_and_flushed_connections_close_as_linux() {
    let Some(net) = python_testnet("tf-kboth") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let dir = TempDir::new("tcp-flush-both");
    let bytes = 100_000usize;
    let expected: Vec<u8> = (0..bytes as u32).map(|i| (i * 31 % 251) as u8).collect();
    let data = dir.path().join("expected.bin");
    std::fs::write(&data, &expected).expect("write");
    let go = dir.path().join("go");
    let go = go.to_str().expect("utf-8");
    let (port_a, port_b) = ("5105", "5106");
    let peer_a = start_peer(&net, port_a, "recv", go);
    let peer_b = start_peer(&net, port_b, "recv", go);
    let exe = std::env::current_exe().expect("test binary");
    let mut child = net.command_in(
        net.ns_a(),
        &[
            exe.to_str().expect("utf-8"),
            "--ignored",
            "--exact",
            "child_holds_cached_and_flushed_connections",
            "--nocapture",
        ],
    );
    child
        .env("MSOCK_TEST_PEER", PEER_ADDR.to_string())
        .env("PORT_A", port_a)
        .env("PORT_B", port_b)
        .env("MSOCK_TEST_BYTES", bytes.to_string());
    let child = net.spawn("msock-client", child);
    await_log(&child, "holding");
    let options = child
        .log()
        .lines()
        .find(|l| l.starts_with("options"))
        .unwrap_or_default()
        .to_string();
    let want_options = format!(
        "options nodelay=1 sndbuf=200000 keepcnt1000=Some({}) info_len=280 tcpi_state=1 local={MSOCK_ADDR}:",
        libc::EINVAL
    );
    assert!(options.starts_with(&want_options), "{options}");
    assert!(
        options.contains(&format!(
            "remote=Some({PEER_ADDR}:{port_b}) cached=Some({})",
            libc::ENOTCONN
        )),
        "{options}"
    );
    let (remote_a, remote_b) = (
        format!("{PEER_ADDR}:{port_a}"),
        format!("{PEER_ADDR}:{port_b}"),
    );
    let pid_a = holder_pid(&net, "CACHED", &remote_a).expect("cached endpoint");
    let pid_b = holder_pid(&net, "FLUSHED", &remote_b).expect("flushed endpoint");
    assert_eq!(pid_a, pid_b, "one client holds both");
    let killed = std::time::Instant::now();
    let pid = pid_a.to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill")
            .success()
    );
    assert!(
        wait_until(Duration::from_secs(2), || {
            holder_pid(&net, "CACHED", &remote_a).is_none()
                && holder_pid(&net, "FLUSHED", &remote_b).is_none()
        }),
        "endpoints not reclaimed: {}",
        stdout_of(&net.exec(net.command_msock_cli(&["stat"])))
    );
    let reclaimed = killed.elapsed();
    std::fs::write(go, b"").expect("go");
    let want = format!("eof {bytes} {}", sha256(&data));
    for peer in [&peer_a, &peer_b] {
        assert!(
            wait_until(Duration::from_secs(10), || peer.log().contains("eof")
                || peer.log().contains("reset")),
            "{}",
            peer.log()
        );
        assert!(peer.log().contains(&want), "want '{want}': {}", peer.log());
    }
    eprintln!("both endpoints reclaimed {reclaimed:?} after kill -9");
}

/// The id `msock stat` lists for the endpoint in `state` whose remote is `remote`.
fn endpoint_id(net: &TestNet, state: &str, remote: &str) -> Option<u64> {
    let stat = stdout_of(&net.exec(net.command_msock_cli(&["stat"])));
    stat.lines()
        .find(|l| l.contains(state) && l.contains(remote))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

/// `msock recall ID` (paper §3.1, recall): the netserver asks the process holding a cached
/// connection to flush it; the process does so and goes on serving it through the netserver,
/// and the stream arrives byte-exact. Bad recalls get clear errors.
#[test]
fn recalled_connection_is_flushed_by_its_holder_and_keeps_its_bytes() {
    let Some(net) = TestNet::new("tf-recall") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let msock = msock_bin();
    let msock = msock.to_str().expect("utf-8 path");
    let dir = TempDir::new("tcp-recall");
    let first = random_file(&dir, "first.bin", 4);
    let second = random_file(&dir, "second.bin", 4);
    let both = dir.path().join("both.bin");
    let mut joined = std::fs::read(&first).expect("first");
    joined.extend(std::fs::read(&second).expect("second"));
    std::fs::write(&both, joined).expect("both");
    let out = dir.path().join("out.bin");
    let release = dir.path().join("release");
    let port = "5107";
    let mut sink = net.spawn(
        "kernel-sink",
        sh(
            &net,
            net.ns_b(),
            &format!(
                "exec socat -u TCP4-LISTEN:{port},reuseaddr,bind={PEER_ADDR} CREATE:{}",
                out.display()
            ),
        ),
    );
    wait_listening(&net, net.ns_b(), port);
    // The first half goes while cached; the second only after the recall.
    let mut client = net.spawn(
        "msock-connect",
        sh(
            &net,
            net.ns_a(),
            &format!(
                "(cat {}; while [ ! -e {} ]; do sleep 0.05; done; cat {}) | exec {msock} tcp connect {PEER_ADDR}:{port} --info",
                first.display(),
                release.display(),
                second.display()
            ),
        ),
    );
    let remote = format!("{PEER_ADDR}:{port}");
    let mut id = None;
    assert!(
        wait_until(READY_TIMEOUT, || {
            id = endpoint_id(&net, "CACHED", &remote);
            id.is_some()
        }),
        "no cached endpoint"
    );
    let id = id.expect("id").to_string();
    // Clear refusals first: no such endpoint, and another user's connection.
    let none = net.exec(net.command_msock_cli(&["recall", "999999"]));
    assert!(!none.status.success());
    assert!(
        stderr_of(&none).contains("no such endpoint"),
        "{}",
        stderr_of(&none)
    );
    if have("setpriv") {
        let mut other = net.command_in(
            net.ns_a(),
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                msock,
                "recall",
                &id,
            ],
        );
        other.env("MSOCK_CONTROL", "@msock/control");
        let other = net.exec(other);
        assert!(
            stderr_of(&other).contains("only root or the holder"),
            "{}",
            stderr_of(&other)
        );
    }
    let recall = net.exec(net.command_msock_cli(&["recall", &id]));
    assert!(recall.status.success(), "{}", stderr_of(&recall));
    assert!(
        wait_until(READY_TIMEOUT, || endpoint_id(&net, "FLUSHED", &remote)
            .is_some()),
        "not flushed after the recall: {}",
        stdout_of(&net.exec(net.command_msock_cli(&["stat"])))
    );
    let stat = stdout_of(&net.exec(net.command_msock_cli(&["stat"])));
    assert!(stat.contains("recalls 1"), "{stat}");
    std::fs::write(&release, b"").expect("release");
    let status = client
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("msock tcp connect did not finish: {}", client.log()));
    assert!(status.success(), "{}", client.log());
    assert!(client.log().contains("flushes=1"), "{}", client.log());
    assert!(sink.wait_timeout(Duration::from_secs(10)).is_some());
    assert_eq!(sha256(&both), sha256(&out), "stream differs");
}
