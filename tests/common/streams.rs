//! Byte-stream helpers shared by the TCP tests: shell commands in a namespace, random files and
//! their SHA-256, waiting for a kernel listener.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{READY_TIMEOUT, TempDir, TestNet, have, stdout_of, under_ci, wait_until};

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
