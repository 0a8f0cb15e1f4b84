//! `msock testnet` and the test harness: the topology has the right names, addresses, links
//! and settings; `down` removes everything and is idempotent; names are validated; a second
//! `up` fails without harming the first; the kernels of `N-a` and `N-b` reach each other on
//! .3/.1; and nothing in `N-a` answers for the msock address .2 (no ARP, no ICMP, no RST).
//!
//! Namespace tests need root, iproute2, procps and ethtool; they skip with a message
//! otherwise (and fail under CI).

mod common;

use std::collections::HashMap;
use std::io;
use std::process::{Command, Output};
use std::time::Duration;

use common::{TestNet, stderr_of, stdout_of};
use msock::testnet::{self, KERNEL_ADDR, MSOCK_ADDR, PEER_ADDR};

fn ip(args: &[&str]) -> String {
    let ip = common::find_tool("ip").expect("iproute2 installed");
    let out = Command::new(ip).args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", stderr_of(&out));
    stdout_of(&out)
}

fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn msock(args: &[&str]) -> Output {
    Command::new(common::msock_bin())
        .args(args)
        .output()
        .expect("run msock")
}

/// Removes a testnet on drop: for tests that drive `msock testnet` by hand.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if let Err(e) = testnet::down(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0);
        }
    }
}

fn sysctl(net: &TestNet, ns: &str, key: &str) -> String {
    let out = net.exec(net.command_in(ns, &["sysctl", "-n", key]));
    assert!(out.status.success(), "sysctl {key}: {}", stderr_of(&out));
    stdout_of(&out).trim().to_string()
}

/// `/proc/net/snmp` of a namespace as `"Proto:Field" -> value`.
fn snmp(net: &TestNet, ns: &str) -> HashMap<String, i64> {
    let out = net.exec(net.command_in(ns, &["cat", "/proc/net/snmp"]));
    assert!(out.status.success());
    let text = stdout_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    let mut map = HashMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut names = names.split_whitespace();
        let mut values = values.split_whitespace();
        let (Some(proto), Some(_)) = (names.next(), values.next()) else {
            continue;
        };
        for (n, v) in names.zip(values) {
            if let Ok(v) = v.parse() {
                map.insert(format!("{proto}{n}"), v);
            }
        }
    }
    map
}

fn needs(tools: &[&str], test: &str) -> bool {
    for t in tools {
        if !common::have(t) {
            assert!(!common::under_ci(), "{test}: {t} not installed under CI");
            eprintln!("skipped {test}: {t} not installed");
            return false;
        }
    }
    true
}

#[test]
fn unique_names_are_valid_and_distinct() {
    let a = common::unique_name("png");
    let b = common::unique_name("png");
    let long = common::unique_name("Very-Long_Prefix");
    assert_ne!(a, b);
    for n in [&a, &b, &long] {
        testnet::validate_name(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(n.len(), 10, "{n}");
    }
    assert!(long.starts_with("ver"), "{long}");
    let short = common::unique_name("");
    testnet::validate_name(&short).unwrap_or_else(|e| panic!("{short}: {e}"));
    assert_eq!(short.len(), 7);
}

#[test]
fn bad_names_are_rejected() {
    for bad in [
        "",
        "UPPER",
        "has-dash",
        "has_underscore",
        "has space",
        "elevenchars",
        "a/b",
        "é",
    ] {
        let e = testnet::up(bad).expect_err(bad);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {e}");
        assert_eq!(
            testnet::down(bad).expect_err(bad).kind(),
            io::ErrorKind::InvalidInput
        );
        let out = msock(&["testnet", "up", "--name", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            stderr_of(&out).contains("bad testnet name"),
            "{}",
            stderr_of(&out)
        );
    }
}

#[test]
fn cli_usage_errors() {
    for args in [
        &["testnet"][..],
        &["testnet", "up"],
        &["testnet", "sideways", "--name", "x"],
        &["testnet", "up", "--name", "x", "--impair", "loss=1"],
        &["testnet", "up", "down", "--name", "x"],
        &["testnet", "up", "--name"],
    ] {
        let out = msock(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr_of(&out).contains("usage: msock testnet up|down --name N"),
            "{args:?}: {}",
            stderr_of(&out)
        );
    }
    let out = msock(&["testnet", "--help"]);
    assert!(out.status.success());
    assert!(stdout_of(&out).contains("usage"));
}

#[test]
fn up_builds_the_topology_and_teardown_removes_it() {
    let Some(net) = TestNet::new("top") else {
        return;
    };
    let (ns_a, ns_b) = (net.ns_a().to_string(), net.ns_b().to_string());
    let (if_a, if_b) = (net.iface_a().to_string(), net.iface_b().to_string());
    let name = net.name().to_string();
    assert_eq!(ns_a, format!("{name}-a"));
    assert_eq!(if_b, format!("{name}-b0"));
    let listed = namespaces();
    assert!(
        listed.contains(&ns_a) && listed.contains(&ns_b),
        "{listed:?}"
    );

    // Addresses: .3 on N-a0 (and not .2), .1 on N-b0, no IPv6 on either veth.
    let a4 = ip(&["-n", &ns_a, "-o", "-4", "addr", "show", "dev", &if_a]);
    assert!(a4.contains(&format!("{KERNEL_ADDR}/24")), "{a4}");
    assert!(
        !a4.contains(&format!("{MSOCK_ADDR}/")),
        "kernel must not own .2: {a4}"
    );
    let b4 = ip(&["-n", &ns_b, "-o", "-4", "addr", "show", "dev", &if_b]);
    assert!(b4.contains(&format!("{PEER_ADDR}/24")), "{b4}");
    for (ns, iface) in [(&ns_a, &if_a), (&ns_b, &if_b)] {
        let a6 = ip(&["-n", ns, "-o", "-6", "addr", "show", "dev", iface]);
        assert!(a6.trim().is_empty(), "IPv6 address on {iface}: {a6}");
        let link = ip(&["-n", ns, "-o", "link", "show", "dev", iface]);
        assert!(
            link.contains("state UP") && link.contains("LOWER_UP"),
            "{link}"
        );
        let lo = ip(&["-n", ns, "-o", "link", "show", "dev", "lo"]);
        assert!(lo.contains(",UP"), "{lo}");
    }

    // MACs reported match the links.
    let link_a = ip(&["-n", &ns_a, "-o", "link", "show", "dev", &if_a]);
    assert!(
        link_a.contains(&format!("link/ether {}", net.mac_a0())),
        "{link_a}"
    );
    let link_b = ip(&["-n", &ns_b, "-o", "link", "show", "dev", &if_b]);
    assert!(
        link_b.contains(&format!("link/ether {}", net.mac_b0())),
        "{link_b}"
    );
    assert_eq!(common::parse_mac(&net.mac_a0()), net.topology().mac_a.0);

    // Settings of N-a.
    assert_eq!(sysctl(&net, &ns_a, "net.ipv4.ip_forward"), "0");
    assert_eq!(
        sysctl(&net, &ns_a, &format!("net.ipv4.conf.{if_a}.arp_ignore")),
        "1"
    );
    assert_eq!(
        sysctl(&net, &ns_a, &format!("net.ipv4.conf.{if_a}.arp_announce")),
        "2"
    );
    assert_eq!(
        sysctl(&net, &ns_a, &format!("net.ipv4.conf.{if_a}.proxy_arp")),
        "0"
    );
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        assert_eq!(
            sysctl(&net, &ns_a, &format!("net.ipv6.conf.{if_a}.disable_ipv6")),
            "1"
        );
        assert_eq!(
            sysctl(&net, &ns_b, &format!("net.ipv6.conf.{if_b}.disable_ipv6")),
            "1"
        );
    }
    // Offloads off: frames on the veth carry full checksums and are at most one MTU.
    for (ns, iface) in [(&ns_a, &if_a), (&ns_b, &if_b)] {
        let out = net.exec(net.command_in(ns, &["ethtool", "-k", iface]));
        let text = stdout_of(&out);
        for feature in [
            "tx-checksumming: off",
            "tcp-segmentation-offload: off",
            "generic-segmentation-offload: off",
        ] {
            assert!(text.contains(feature), "{iface}: want {feature}\n{text}");
        }
    }

    // Teardown removes both namespaces; down again is a no-op.
    net.teardown().expect("teardown");
    let listed = namespaces();
    assert!(
        !listed.contains(&ns_a) && !listed.contains(&ns_b),
        "left behind: {listed:?}"
    );
    assert!(!testnet::exists(&name).expect("exists"));
    testnet::down(&name).expect("second down is a no-op");
    let host_links = ip(&["-o", "link", "show"]);
    assert!(
        !host_links.contains(&if_a) && !host_links.contains(&if_b),
        "{host_links}"
    );
}

#[test]
fn second_up_with_same_name_fails_and_leaves_the_first_intact() {
    let Some(net) = TestNet::new("dup") else {
        return;
    };
    let e = testnet::up(net.name()).expect_err("second up");
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    let out = msock(&["testnet", "up", "--name", net.name()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("already exists"),
        "{}",
        stderr_of(&out)
    );
    // The first testnet still works.
    let a4 = ip(&[
        "-n",
        net.ns_a(),
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        net.iface_a(),
    ]);
    assert!(a4.contains(&format!("{KERNEL_ADDR}/24")), "{a4}");
    if needs(&["ping"], "second_up ping") {
        let out = net.exec_b(&["ping", "-c", "1", "-W", "2", &KERNEL_ADDR.to_string()]);
        assert!(out.status.success(), "{}", stdout_of(&out));
    }
}

#[test]
fn cli_up_prints_the_topology_and_down_is_idempotent() {
    if common::skip_without_netns("cli_up") {
        return;
    }
    let name = common::unique_name("cli");
    let _cleanup = DownOnDrop(name.clone());
    let out = msock(&["testnet", "up", "--name", &name]);
    assert!(out.status.success(), "up: {}", stderr_of(&out));
    let text = stdout_of(&out);
    for needle in [
        format!("{name}-a0"),
        format!("{name}-b0"),
        format!("{KERNEL_ADDR}/24"),
        format!("{PEER_ADDR}/24"),
        MSOCK_ADDR.to_string(),
    ] {
        assert!(text.contains(&needle), "{needle} missing:\n{text}");
    }
    let macs = text
        .split_whitespace()
        .filter(|w| w.parse::<msock::wire::EthernetAddress>().is_ok())
        .count();
    assert_eq!(macs, 2, "two MACs printed:\n{text}");
    assert!(namespaces().contains(&format!("{name}-a")));

    // A process left in N-a is ended by down.
    let ip_path = common::find_tool("ip").expect("ip");
    let mut sleeper = Command::new(ip_path)
        .args(["netns", "exec", &format!("{name}-a"), "sleep", "60"])
        .spawn()
        .expect("spawn sleep");
    assert!(common::wait_until(Duration::from_secs(5), || {
        ip(&["netns", "pids", &format!("{name}-a")]).contains(&sleeper.id().to_string())
    }));
    for round in 0..2 {
        let out = msock(&["testnet", "down", "--name", &name]);
        assert!(out.status.success(), "down #{round}: {}", stderr_of(&out));
        assert!(stdout_of(&out).contains("is down"));
    }
    let status = sleeper.wait().expect("wait sleeper");
    assert!(!status.success(), "sleep was not terminated: {status}");
    let listed = namespaces();
    assert!(
        !listed.iter().any(|n| n.starts_with(&format!("{name}-"))),
        "{listed:?}"
    );
}

#[test]
fn kernel_to_kernel_ping() {
    let Some(net) = TestNet::new("png") else {
        return;
    };
    if !needs(&["ping"], "kernel_to_kernel_ping") {
        return;
    }
    let out = net.exec_b(&[
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        &KERNEL_ADDR.to_string(),
    ]);
    assert!(out.status.success(), "N-b -> .3: {}", stdout_of(&out));
    let out = net.exec_a(&["ping", "-c", "1", "-W", "2", &PEER_ADDR.to_string()]);
    assert!(out.status.success(), "N-a -> .1: {}", stdout_of(&out));
    let neigh = ip(&["-n", net.ns_b(), "neigh", "show", &KERNEL_ADDR.to_string()]).to_lowercase();
    assert!(neigh.contains(&net.mac_a0()), "{neigh}");
}

#[test]
fn nothing_in_a_answers_arp_for_the_msock_address() {
    let Some(net) = TestNet::new("arp") else {
        return;
    };
    if !needs(&["ping"], "nothing_answers_arp") {
        return;
    }
    let out = net.exec_b(&["ping", "-c", "1", "-W", "2", &MSOCK_ADDR.to_string()]);
    assert!(
        !out.status.success(),
        "something answered for .2: {}",
        stdout_of(&out)
    );
    let neigh = ip(&["-n", net.ns_b(), "neigh", "show", &MSOCK_ADDR.to_string()]);
    assert!(
        neigh.contains("FAILED") || neigh.contains("INCOMPLETE"),
        "neighbour entry for .2: {neigh:?}"
    );
    assert!(!neigh.to_lowercase().contains(&net.mac_a0()), "{neigh}");
}

/// With the peer told N-a0's MAC for .2 (as the netserver's ARP reply will), the kernel of
/// N-a still sends nothing back: no ICMP (echo reply, unreachable, redirect), no TCP RST.
/// It drops the packets (forwarding is off), counting them in `Ip: InAddrErrors`.
#[test]
fn kernel_of_a_never_answers_for_msock_address() {
    let Some(net) = TestNet::new("sil") else {
        return;
    };
    if !needs(&["ping", "bash", "timeout"], "kernel_never_answers") {
        return;
    }
    let msock_addr = MSOCK_ADDR.to_string();
    let mac = net.mac_a0();
    ip(&[
        "-n",
        net.ns_b(),
        "neigh",
        "replace",
        &msock_addr,
        "lladdr",
        &mac,
        "dev",
        net.iface_b(),
        "nud",
        "permanent",
    ]);
    let before = snmp(&net, net.ns_a());

    let out = net.exec_b(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &msock_addr]);
    assert!(
        stdout_of(&out).contains(" 0 received"),
        "ICMP echo answered: {}",
        stdout_of(&out)
    );
    let udp = format!(
        "echo probe > /dev/udp/{msock_addr}/9; head -c 3000 /dev/zero > /dev/udp/{msock_addr}/9"
    );
    let out = net.exec_b(&["bash", "-c", &udp]);
    assert!(out.status.success(), "udp probe: {}", stderr_of(&out));
    let tcp = format!("exec 3<>/dev/tcp/{msock_addr}/80");
    let out = net.exec_b(&["timeout", "2", "bash", "-c", &tcp]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "TCP connect to .2 was answered: {}",
        stderr_of(&out)
    );

    let after = snmp(&net, net.ns_a());
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(delta("Icmp:OutMsgs"), 0, "kernel of N-a sent ICMP");
    assert_eq!(delta("Tcp:OutRsts"), 0, "kernel of N-a sent RST");
    // 2 echo requests + 1 datagram + 2 fragments + at least one SYN reached its IP layer.
    assert!(
        delta("Ip:InAddrErrors") >= 6,
        "packets to .2 not seen/dropped as expected: {}",
        delta("Ip:InAddrErrors")
    );
}

/// The harness itself: commands run in the right namespace, spawned processes log their
/// output and are stopped by their guard, a hung command is killed at its timeout, and
/// teardown kills what a test leaked.
#[test]
fn harness_runs_commands_in_namespaces_and_stops_them() {
    let Some(net) = TestNet::new("hns") else {
        return;
    };
    let out = net.exec_a(&["ip", "-o", "-4", "addr", "show"]);
    assert!(
        stdout_of(&out).contains(&format!("{KERNEL_ADDR}/24")),
        "{}",
        stdout_of(&out)
    );
    let out = net.exec_b(&["ip", "-o", "-4", "addr", "show"]);
    assert!(
        stdout_of(&out).contains(&format!("{PEER_ADDR}/24")),
        "{}",
        stdout_of(&out)
    );

    let mut proc = net.spawn_b(&["sh", "-c", "echo started; exec sleep 60"]);
    assert!(
        common::wait_until(Duration::from_secs(5), || proc.log().contains("started")),
        "log: {:?}",
        proc.log()
    );
    assert!(proc.is_running());
    let pid = proc.pid().to_string();
    assert!(
        ip(&["netns", "pids", net.ns_b()])
            .split_whitespace()
            .any(|p| p == pid)
    );
    let status = proc.stop();
    assert!(
        !status.success(),
        "sleep should have been terminated: {status}"
    );
    drop(proc);
    assert!(
        !ip(&["netns", "pids", net.ns_b()])
            .split_whitespace()
            .any(|p| p == pid)
    );

    let hung = std::panic::catch_unwind(|| {
        common::exec_timeout(net.command_a(&["sleep", "30"]), Duration::from_millis(300))
    });
    assert!(
        hung.is_err(),
        "a command past its timeout must fail the test"
    );

    // A guard that is leaked still gets killed when the testnet goes.
    let leaked = net.spawn_a(&["sleep", "60"]);
    let leaked_pid = leaked.pid().to_string();
    std::mem::forget(leaked);
    let ns_a = net.ns_a().to_string();
    let in_a = || {
        ip(&["netns", "pids", &ns_a])
            .split_whitespace()
            .any(|p| p == leaked_pid)
    };
    assert!(
        common::wait_until(Duration::from_secs(5), in_a),
        "leaked sleep never entered {ns_a}"
    );
    net.teardown().expect("teardown");
    assert!(!namespaces().contains(&ns_a));
    let state = std::fs::read_to_string(format!("/proc/{leaked_pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "leaked process still alive: {state}"
    );
}
