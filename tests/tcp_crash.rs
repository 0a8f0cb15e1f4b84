//! `kill -9` of a process holding a cached TCP connection (issue 4, "Lifetime beyond the
//! process"; docs/notes/tcp-ownership.md "Crash record"): the netserver closes it as Linux
//! closes the socket of a process that exits. With nothing unread, every byte the process had
//! written is still delivered (unsent and unacknowledged ones, from the crash record's send
//! ring) and a FIN follows, the netserver holding FIN_WAIT/TIME_WAIT (`msock stat`: `netsrv`)
//! until it ends; with received data left unread, the peer is reset. Both for a connection the
//! process opened and for one the netserver's listener accepted. The kernel peer in N-b keeps
//! a small receive buffer and reads nothing until after the kill, so data is queued and in
//! flight at the moment of death. Needs root and python3.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::streams::*;
use common::*;

/// The kernel peer: listens or connects, optionally sends `send` bytes, then waits for the
/// `go` file before reading everything into `out`; reports "eof T" or "reset T" (T: the wall
/// clock when the stream ended).
const PEER: &str = r#"
import os, socket, sys, time
mode, addr, port, rcvbuf, send, go, out = sys.argv[1:8]
port, rcvbuf, send = int(port), int(rcvbuf), int(send)
def small(s):
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
if mode == "listen":
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    small(l)
    l.bind((addr, port))
    l.listen(1)
    print("ready", flush=True)
    c, peer = l.accept()
    print("accepted %s:%d" % peer, flush=True)
else:
    c = socket.socket()
    small(c)
    c.connect((addr, port))
    print("connected %s:%d" % c.getsockname(), flush=True)
if send:
    c.sendall(b"u" * send)
    print("sent", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
f = open(out, "wb")
try:
    while True:
        b = c.recv(65536)
        if not b:
            break
        f.write(b)
    f.close()
    print("eof %.6f" % time.time(), flush=True)
except ConnectionResetError:
    f.close()
    print("reset %.6f" % time.time(), flush=True)
"#;

/// Bytes the process writes before it is killed (all taken into its send buffer: with
/// `--sndbuf` larger, `msock tcp` reads its whole stdin at once).
const WRITTEN_KIB: usize = 512;
const SNDBUF: &str = "1048576";
/// TIME_WAIT of the connection (carried in the crash record).
const TIME_WAIT_MS: u64 = 1500;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn stat(net: &TestNet) -> String {
    stdout_of(&net.exec(net.command_msock_cli(&["stat"])))
}

/// The pid `msock stat` lists for the endpoint on `port` (the msock process).
fn holder_pid(net: &TestNet, port: u16) -> String {
    let mut pid = String::new();
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(5), || {
        last = stat(net);
        pid = last
            .lines()
            .find(|l| {
                // A connected endpoint may be listed with its wildcard bind address.
                l.contains(&format!(":{port} "))
                    && l.contains(&format!("{PEER_ADDR}:"))
                    && l.contains("CACHED")
            })
            .and_then(|l| l.split_whitespace().nth(5))
            .unwrap_or_default()
            .to_string();
        !pid.is_empty()
    });
    assert!(ok, "no cached endpoint on port {port}: {last}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim(),
        "msock",
        "{last}"
    );
    pid
}

fn kill9(pid: &str) -> f64 {
    let at = now_secs();
    let status = std::process::Command::new("kill")
        .args(["-9", pid])
        .status()
        .expect("kill");
    assert!(status.success());
    at
}

/// The time in the peer's "eof T"/"reset T" line, once it came.
fn ended(peer: &Proc, word: &str, timeout: Duration) -> Option<f64> {
    let mut at = None;
    wait_until(timeout, || {
        at = peer
            .log()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{word} ")))
            .and_then(|t| t.trim().parse::<f64>().ok());
        at.is_some()
    });
    at
}

/// After the kill: the netserver holds the connection (`netsrv`), the peer — now reading —
/// gets every byte written then EOF, and the netserver's row goes once TIME_WAIT is over.
fn check_delivered(net: &TestNet, peer: &Proc, go: &std::path::Path, port: u16, killed: f64) {
    let row = format!("{MSOCK_ADDR}:{port}");
    let mut held = String::new();
    assert!(
        wait_until(Duration::from_secs(3), || {
            held = stat(net);
            held.lines()
                .any(|l| l.contains(&row) && l.contains("netsrv"))
        }),
        "the netserver does not hold the connection after the kill: {held}"
    );
    assert!(
        !held
            .lines()
            .any(|l| l.contains(&format!(":{port} ")) && l.contains("CACHED")),
        "the dead process's endpoint is still listed: {held}"
    );
    let held_after = now_secs() - killed;
    std::fs::write(go, b"go").expect("go file");
    let go_at = now_secs();
    let eof = ended(peer, "eof", Duration::from_secs(20));
    assert!(
        eof.is_some(),
        "the peer saw no orderly end of stream: {}",
        peer.log()
    );
    let eof = eof.unwrap_or_default();
    eprintln!(
        "kill -9 -> netserver holds it (msock stat) {:.0} ms; peer starts reading -> EOF after \
         all {WRITTEN_KIB} KiB (4 KiB receive buffer) {:.0} ms; kill -> EOF {:.0} ms; msock stat:\n{}",
        held_after * 1000.0,
        (eof - go_at) * 1000.0,
        (eof - killed) * 1000.0,
        held.lines()
            .filter(|l| l.contains(&row))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut after = String::new();
    assert!(
        wait_until(Duration::from_millis(TIME_WAIT_MS * 2 + 3000), || {
            after = stat(net);
            !after.lines().any(|l| l.contains(&format!(":{port} ")))
        }),
        "the connection outlived its TIME_WAIT: {after}"
    );
}

/// (a) Actively opened: `msock tcp connect` writes 512 KiB the peer does not read yet, is
/// killed, and the peer still receives all of it, byte-exact, then EOF.
#[test]
fn killed_connect_delivers_written_data_then_fin() {
    let Some(net) = python_testnet("tc-conn") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let msock = msock_bin();
    let msock = msock.to_str().expect("utf-8 path");
    let dir = TempDir::new("tcp-crash-a");
    let data = random_file(&dir, "data.bin", 1);
    let half = dir.path().join("written.bin");
    let status = std::process::Command::new("head")
        .args(["-c", &format!("{}", WRITTEN_KIB << 10)])
        .stdin(std::fs::File::open(&data).expect("data"))
        .stdout(std::fs::File::create(&half).expect("create"))
        .status()
        .expect("head");
    assert!(status.success());
    let go = dir.path().join("go");
    let out = dir.path().join("received.bin");
    let port = "5021";
    let peer = net.spawn(
        "kernel-peer",
        net.command_in(
            net.ns_b(),
            &[
                "python3",
                "-c",
                PEER,
                "listen",
                &PEER_ADDR.to_string(),
                port,
                "4096",
                "0",
                go.to_str().expect("path"),
                out.to_str().expect("path"),
            ],
        ),
    );
    await_log(&peer, "ready");
    let client = net.spawn(
        "msock-connect",
        sh(
            &net,
            net.ns_a(),
            &format!(
                "(cat {}; echo written >&2; sleep 60) | exec {msock} tcp connect {PEER_ADDR}:{port} --sndbuf {SNDBUF} --time-wait-ms {TIME_WAIT_MS}",
                half.display()
            ),
        ),
    );
    assert!(
        wait_until(READY_TIMEOUT, || peer.log().contains("accepted")
            && client.log().contains("written")),
        "peer: {} client: {}",
        peer.log(),
        client.log()
    );
    let ephemeral: u16 = peer
        .log()
        .lines()
        .find_map(|l| l.strip_prefix("accepted "))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .expect("peer port");
    let pid = holder_pid(&net, ephemeral);
    // msock drains the pipe into its send buffer; the peer's window is long closed.
    std::thread::sleep(Duration::from_millis(700));
    let killed = kill9(&pid);
    check_delivered(&net, &peer, &go, ephemeral, killed);
    assert_eq!(sha256(&half), sha256(&out), "the stream differs");
}

/// (b) Received data left unread (`--stall-read`): the kill resets the peer (ECONNRESET).
#[test]
fn killed_process_with_unread_data_resets_the_peer() {
    let Some(net) = python_testnet("tc-rst") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let msock = msock_bin();
    let msock = msock.to_str().expect("utf-8 path");
    let dir = TempDir::new("tcp-crash-b");
    let go = dir.path().join("go");
    let out = dir.path().join("received.bin");
    // The go file exists from the start: the peer reads (and sees the reset) at once.
    std::fs::write(&go, b"go").expect("go file");
    let port = "5022";
    let peer = net.spawn(
        "kernel-peer",
        net.command_in(
            net.ns_b(),
            &[
                "python3",
                "-c",
                PEER,
                "listen",
                &PEER_ADDR.to_string(),
                port,
                "0",
                "3000",
                go.to_str().expect("path"),
                out.to_str().expect("path"),
            ],
        ),
    );
    await_log(&peer, "ready");
    let mut client = net.spawn(
        "msock-connect",
        sh(
            &net,
            net.ns_a(),
            &format!("sleep 60 | exec {msock} tcp connect {PEER_ADDR}:{port} --stall-read"),
        ),
    );
    await_log(&peer, "sent");
    let ephemeral: u16 = peer
        .log()
        .lines()
        .find_map(|l| l.strip_prefix("accepted "))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .expect("peer port");
    let pid = holder_pid(&net, ephemeral);
    // The 3000 bytes arrive and are acknowledged (in msock's receive queue, unread).
    std::thread::sleep(Duration::from_millis(300));
    let killed = kill9(&pid);
    let reset = ended(&peer, "reset", Duration::from_secs(3));
    assert!(reset.is_some(), "the peer was not reset: {}", peer.log());
    eprintln!(
        "kill -9 with unread data -> peer reset after {:.0} ms",
        (reset.unwrap_or_default() - killed) * 1000.0
    );
    let _ = client.wait_timeout(Duration::from_secs(2));
    let mut after = String::new();
    assert!(
        wait_until(Duration::from_secs(2), || {
            after = stat(&net);
            !after.lines().any(|l| l.contains(&format!(":{ephemeral} ")))
        }),
        "leftover: {after}"
    );
}

/// (c) Passively opened (the netserver's listener accepted it, the process ran it): killed
/// with data queued, the peer receives all of it, then FIN.
#[test]
fn killed_accepted_connection_delivers_written_data_then_fin() {
    let Some(net) = python_testnet("tc-acc") else {
        return;
    };
    let _ns = net.start_netserver(&[]);
    let msock = msock_bin();
    let msock = msock.to_str().expect("utf-8 path");
    let dir = TempDir::new("tcp-crash-c");
    let data = random_file(&dir, "data.bin", 1);
    let half = dir.path().join("written.bin");
    let status = std::process::Command::new("head")
        .args(["-c", &format!("{}", WRITTEN_KIB << 10)])
        .stdin(std::fs::File::open(&data).expect("data"))
        .stdout(std::fs::File::create(&half).expect("create"))
        .status()
        .expect("head");
    assert!(status.success());
    let go = dir.path().join("go");
    let out = dir.path().join("received.bin");
    let port: u16 = 5023;
    // `--sndbuf` applies after accept (setsockopt): the ring in the netserver's record file
    // is sized for it when the process attaches it.
    let server = net.spawn(
        "msock-listen",
        sh(
            &net,
            net.ns_a(),
            &format!(
                "(cat {}; echo written >&2; sleep 60) | exec {msock} tcp listen {port} --sndbuf {SNDBUF} --time-wait-ms {TIME_WAIT_MS}",
                half.display()
            ),
        ),
    );
    await_log(&server, "listening");
    let peer = net.spawn(
        "kernel-peer",
        net.command_in(
            net.ns_b(),
            &[
                "python3",
                "-c",
                PEER,
                "connect",
                &MSOCK_ADDR.to_string(),
                &port.to_string(),
                "4096",
                "0",
                go.to_str().expect("path"),
                out.to_str().expect("path"),
            ],
        ),
    );
    assert!(
        wait_until(READY_TIMEOUT, || peer.log().contains("connected")
            && server.log().contains("written")),
        "peer: {} server: {}",
        peer.log(),
        server.log()
    );
    let pid = holder_pid(&net, port);
    std::thread::sleep(Duration::from_millis(700));
    let killed = kill9(&pid);
    check_delivered(&net, &peer, &go, port, killed);
    assert_eq!(sha256(&half), sha256(&out), "the stream differs");
}
