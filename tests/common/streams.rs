//! Byte-stream helpers shared by the TCP tests: shell commands in a namespace, random files and
//! their SHA-256, waiting for a kernel listener.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    MSOCK_ADDR, PEER_ADDR, READY_TIMEOUT, TempDir, TestNet, have, msock_bin, stdout_of, under_ci,
    wait_until,
};

/// `bash -c script` in namespace `ns`.
pub fn sh(net: &TestNet, ns: &str, script: &str) -> Command {
    net.command_in(ns, &["bash", "-c", script])
}

pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    stdout_of(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A file of `megabytes` MiB of random bytes in `dir`.
pub fn random_file(dir: &TempDir, name: &str, megabytes: usize) -> PathBuf {
    let path = dir.path().join(name);
    let status = Command::new("head")
        .args(["-c", &format!("{}", megabytes << 20), "/dev/urandom"])
        .stdout(std::fs::File::create(&path).expect("create"))
        .status()
        .expect("head");
    assert!(status.success());
    path
}

/// Waits until a kernel socket listens on TCP `port` in `ns`.
pub fn wait_listening(net: &TestNet, ns: &str, port: &str) {
    let ok = wait_until(READY_TIMEOUT, || {
        let out = net.exec(net.command_in(ns, &["ss", "-Hltn", &format!("sport = :{port}")]));
        stdout_of(&out).contains(port)
    });
    assert!(ok, "nothing listening on {port} in {ns}");
}

/// A testnet for a test that drives raw-socket Python scripts in N-b (`None`: skipped, only
/// outside CI, when python3 is missing or the testnet cannot be built).
pub fn python_testnet(prefix: &str) -> Option<TestNet> {
    if !have("python3") {
        assert!(!under_ci(), "python3 missing under CI");
        eprintln!("skipped: python3 not installed");
        return None;
    }
    TestNet::new(prefix)
}

/// Waits (up to [`READY_TIMEOUT`]) until `proc` has printed `needle`; panics with its log
/// otherwise.
pub fn await_log(proc: &super::Proc, needle: &str) {
    assert!(
        wait_until(READY_TIMEOUT, || proc.log().contains(needle)),
        "{} never printed '{needle}': {}",
        proc.label(),
        proc.log()
    );
}

/// msock (`extra` options) sends `megabytes` to a kernel listener on `port` and receives
/// `megabytes` from a kernel client; both arrive byte-exact. Returns msock's `--info` lines.
pub fn both_ways(
    net: &TestNet,
    port: &str,
    megabytes: usize,
    extra: &str,
    timeout: std::time::Duration,
) -> (String, String) {
    let msock = msock_bin();
    let msock = msock.to_str().expect("utf-8 path");
    let dir = TempDir::new("tcp-both-ways");
    let up = random_file(&dir, "up.bin", megabytes);
    let down = random_file(&dir, "down.bin", megabytes);
    let up_out = dir.path().join("up.out");
    let down_out = dir.path().join("down.out");

    let mut sink = net.spawn(
        "kernel-sink",
        sh(
            net,
            net.ns_b(),
            &format!(
                "exec socat -u TCP4-LISTEN:{port},reuseaddr,bind={PEER_ADDR} CREATE:{}",
                up_out.display()
            ),
        ),
    );
    wait_listening(net, net.ns_b(), port);
    let mut sender = net.spawn(
        "msock-connect",
        sh(
            net,
            net.ns_a(),
            &format!(
                "exec {msock} tcp connect {PEER_ADDR}:{port} --info {extra} < {} > /dev/null",
                up.display()
            ),
        ),
    );
    let status = sender
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("msock tcp connect did not finish: {}", sender.log()));
    assert!(
        status.success(),
        "msock tcp connect failed: {}",
        sender.log()
    );
    assert!(
        sink.wait_timeout(std::time::Duration::from_secs(10))
            .is_some(),
        "kernel sink still running"
    );
    assert_eq!(sha256(&up), sha256(&up_out), "msock → kernel differs");

    let mut receiver = net.spawn(
        "msock-listen",
        sh(
            net,
            net.ns_a(),
            &format!(
                "exec {msock} tcp listen {port} --info {extra} < /dev/null > {}",
                down_out.display()
            ),
        ),
    );
    await_log(&receiver, "listening");
    let mut source = net.spawn(
        "kernel-source",
        sh(
            net,
            net.ns_b(),
            &format!(
                "exec socat -u FILE:{} TCP4:{MSOCK_ADDR}:{port},bind={PEER_ADDR},retry=20,interval=0.2",
                down.display()
            ),
        ),
    );
    let status = receiver
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("msock tcp listen did not finish: {}", receiver.log()));
    assert!(
        status.success(),
        "msock tcp listen failed: {}",
        receiver.log()
    );
    assert!(
        source
            .wait_timeout(std::time::Duration::from_secs(10))
            .is_some()
    );
    assert_eq!(sha256(&down), sha256(&down_out), "kernel → msock differs");
    (sender.log(), receiver.log())
}
