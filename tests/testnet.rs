//! `msock testnet` and the test harness: the topology has the right names, addresses, links
//! and settings; `down` removes everything and is idempotent; names are validated; a second
//! `up` fails without harming the first; the kernels of `N-a` and `N-b` reach each other on
//! .3/.1; and nothing in `N-a` answers for the msock address .2 (no ARP, no ICMP, no RST).
//!
//! With `--impair` (the link emulator in `N-m`): the topology keeps `N-a0`/`N-b0` as they
//! were; seeded loss loses exactly what the offline model predicts and the emulator's counters
//! agree with ping's; delay shows in the RTT; duplicates reach ping; an unimpaired emulator
//! carries 100 MB of kernel TCP byte-exact; `--nft-drop` drops about the share asked and its
//! counter agrees with ping; `down` leaves no namespace, process or run directory, also after
//! `up` from the command line, and a failed start removes everything.
//!
//! Namespace tests need root, iproute2, procps and ethtool (the emulator tests also ping,
//! socat, sha256sum and nft); they skip with a message otherwise (and fail under CI).

mod common;

use std::collections::HashMap;
use std::io;
use std::process::{Command, Output};
use std::time::Duration;

use common::{TestNet, stderr_of, stdout_of};
use msock::stack::Instant;
use msock::testnet::impair::{Direction, LinkModel};
use msock::testnet::{self, ImpairSpec, KERNEL_ADDR, MSOCK_ADDR, PEER_ADDR, UpOptions};

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

/// What `ping -q` printed: (transmitted, received, duplicates, min RTT ms, max RTT ms).
#[derive(Debug, Clone, Copy, PartialEq)]
struct PingSummary {
    transmitted: u32,
    received: u32,
    duplicates: u32,
    rtt_min_ms: Option<f64>,
    rtt_max_ms: Option<f64>,
}

fn parse_ping(text: &str) -> PingSummary {
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in:\n{text}"));
    let number_before = |word: &str| -> u32 {
        line.split(',')
            .map(str::trim)
            .find(|part| part.ends_with(word))
            .and_then(|part| part.trim_start_matches('+').split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let rtt: Vec<f64> = text
        .lines()
        .find(|l| l.starts_with("rtt "))
        .and_then(|l| l.split('=').nth(1))
        .map(|v| {
            v.trim()
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    PingSummary {
        transmitted: number_before("packets transmitted"),
        received: number_before("received"),
        duplicates: number_before("duplicates"),
        rtt_min_ms: rtt.first().copied(),
        rtt_max_ms: rtt.get(2).copied(),
    }
}

/// `ping -q` from `N-b` to the kernel address of `N-a`.
fn ping_a_from_b(net: &TestNet, count: u32, interval: &str) -> PingSummary {
    let count = count.to_string();
    let out = net.exec_b(&[
        "ping",
        "-q",
        "-n",
        "-c",
        &count,
        "-i",
        interval,
        "-W",
        "1",
        &KERNEL_ADDR.to_string(),
    ]);
    let text = stdout_of(&out);
    let summary = parse_ping(&text);
    assert_eq!(summary.transmitted.to_string(), count, "{text}");
    summary
}

#[test]
fn ping_summary_parsing() {
    let text = "PING 198.18.0.3 (198.18.0.3) 56(84) bytes of data.\n\n--- 198.18.0.3 ping \
                statistics ---\n200 packets transmitted, 169 received, +15 duplicates, 15.5% \
                packet loss, time 3057ms\nrtt min/avg/max/mdev = 40.213/40.524/48.972/0.863 ms\n";
    assert_eq!(
        parse_ping(text),
        PingSummary {
            transmitted: 200,
            received: 169,
            duplicates: 15,
            rtt_min_ms: Some(40.213),
            rtt_max_ms: Some(48.972),
        }
    );
    let lost = parse_ping("5 packets transmitted, 0 received, 100% packet loss, time 4000ms\n");
    assert_eq!(
        (lost.received, lost.duplicates, lost.rtt_min_ms),
        (0, 0, None)
    );
}

/// Interfaces of `ns` that have an IPv4 address, from `ip -o -4 addr`.
fn ipv4_interfaces(ns: &str) -> Vec<String> {
    ip(&["-n", ns, "-o", "-4", "addr", "show"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|iface| *iface != "lo")
        .map(str::to_string)
        .collect()
}

/// The middle namespace is wired as documented: four veth ends with offloads off, no
/// addresses and no IPv6 in the middle, the outer ends exactly as without `--impair`.
fn check_impaired_topology(net: &TestNet) {
    let name = net.name();
    let ns_m = format!("{name}-m");
    let middle = net.topology().middle.clone().expect("middle");
    assert_eq!(middle.ns, ns_m);
    assert_eq!(
        (middle.iface_a.as_str(), middle.iface_b.as_str()),
        (format!("{name}-ma").as_str(), format!("{name}-mb").as_str())
    );
    assert!(namespaces().contains(&ns_m));
    // Outer ends unchanged.
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
    let b4 = ip(&[
        "-n",
        net.ns_b(),
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        net.iface_b(),
    ]);
    assert!(b4.contains(&format!("{PEER_ADDR}/24")), "{b4}");
    assert_eq!(
        ipv4_interfaces(&ns_m),
        Vec::<String>::new(),
        "no addresses in the middle"
    );
    for iface in [&middle.iface_a, &middle.iface_b] {
        let link = ip(&["-n", &ns_m, "-o", "link", "show", "dev", iface]);
        assert!(
            link.contains("PROMISC") && link.contains("LOWER_UP"),
            "{link}"
        );
        let a6 = ip(&["-n", &ns_m, "-o", "-6", "addr", "show", "dev", iface]);
        assert!(a6.trim().is_empty(), "IPv6 on {iface}: {a6}");
    }
    for (ns, iface) in [
        (net.ns_a(), net.iface_a()),
        (net.ns_b(), net.iface_b()),
        (ns_m.as_str(), middle.iface_a.as_str()),
        (ns_m.as_str(), middle.iface_b.as_str()),
    ] {
        let text = stdout_of(&net.exec(net.command_in(ns, &["ethtool", "-k", iface])));
        for feature in [
            "tx-checksumming: off",
            "tcp-segmentation-offload: off",
            "generic-segmentation-offload: off",
            "generic-receive-offload: off",
        ] {
            assert!(text.contains(feature), "{iface}: want {feature}\n{text}");
        }
    }
    // The emulator runs in the middle namespace.
    let pids = ip(&["netns", "pids", &ns_m]);
    assert!(
        pids.split_whitespace().any(|p| p == middle.pid.to_string()),
        "emulator {} not in {ns_m}: {pids}",
        middle.pid
    );
}

/// The issue's acceptance test for loss: 200 pings at 10 ms through `loss=10%,seed=7` lose
/// about 19 % (10 % each way), exactly as many as the seeded model predicts offline, and the
/// emulator's counters agree with ping's.
#[test]
fn impaired_loss_is_seeded_and_counted_exactly() {
    let spec = "loss=10%,seed=7";
    let Some(net) = TestNet::with_options("los", Some(spec), None) else {
        return;
    };
    if !needs(&["ping"], "impaired_loss") {
        return;
    }
    check_impaired_topology(&net);
    net.pin_neighbours();
    let ping = ping_a_from_b(&net, 200, "0.01");
    let stats = net.emulator_stats();
    assert_eq!(stats.spec, spec);
    assert_eq!(stats.state, "running");
    let (req, rep) = (stats.b_to_a, stats.a_to_b);
    // Every echo request crossed b->a, every reply that got through a->b: nothing else.
    assert_eq!(req.link.received, 200, "{stats:?}");
    assert_eq!(
        req.link.received,
        req.link.lost + req.link.forwarded,
        "{stats:?}"
    );
    assert_eq!(rep.link.received, req.link.forwarded, "{stats:?}");
    assert_eq!(
        rep.link.received,
        rep.link.lost + rep.link.forwarded,
        "{stats:?}"
    );
    assert_eq!(
        rep.link.forwarded,
        u64::from(ping.received),
        "{stats:?} {ping:?}"
    );
    for d in [req, rep] {
        assert_eq!(
            (d.tx_errors, d.ring_drops, d.link.queued),
            (0, 0, 0),
            "{stats:?}"
        );
    }
    // Roughly 19 % (binomial: sd 2.8 points; these bounds are over 5 sd away).
    let loss = 1.0 - f64::from(ping.received) / 200.0;
    assert!((0.04..=0.34).contains(&loss), "loss {loss} {ping:?}");
    // Exactly what the model predicts: the fate of the k-th frame of a direction depends
    // only on the seed.
    let parsed: ImpairSpec = spec.parse().expect("spec");
    let mut b_to_a = LinkModel::new(&parsed, Direction::BToA);
    let mut a_to_b = LinkModel::new(&parsed, Direction::AToB);
    let frame = [0u8; 98];
    let mut predicted = 0;
    for _ in 0..200 {
        if !b_to_a.offer(&frame, Instant::ZERO).lost && !a_to_b.offer(&frame, Instant::ZERO).lost {
            predicted += 1;
        }
    }
    assert_eq!(
        ping.received, predicted,
        "seed 7 must lose the same pings every run"
    );
    assert_eq!(req.link.lost, b_to_a.stats().lost);
    assert_eq!(rep.link.lost, a_to_b.stats().lost);
}

#[test]
fn impaired_delay_shows_in_the_rtt() {
    let Some(net) = TestNet::with_options("dly", Some("delay=20ms,seed=1"), None) else {
        return;
    };
    if !needs(&["ping"], "impaired_delay") {
        return;
    }
    net.pin_neighbours();
    let ping = ping_a_from_b(&net, 5, "0.2");
    assert_eq!(ping.received, 5, "{ping:?}");
    let (min, max) = (ping.rtt_min_ms.expect("rtt"), ping.rtt_max_ms.expect("rtt"));
    assert!(min >= 40.0, "RTT {min} ms below 2 x 20 ms");
    assert!(max < 1000.0, "RTT {max} ms");
}

#[test]
fn impaired_dup_reaches_ping_as_duplicates() {
    let Some(net) = TestNet::with_options("dup", Some("dup=100%,seed=1"), None) else {
        return;
    };
    if !needs(&["ping"], "impaired_dup") {
        return;
    }
    net.pin_neighbours();
    let ping = ping_a_from_b(&net, 5, "0.2");
    assert_eq!(ping.received, 5, "{ping:?}");
    // Each request arrives twice, each of the two replies twice: 3 extra per ping (ping
    // stops at the 5th reply, so the last ping's extras may come too late to count).
    assert!((12..=15).contains(&ping.duplicates), "{ping:?}");
    let stats = net.emulator_stats();
    assert_eq!(stats.b_to_a.link.duplicated, 5, "{stats:?}");
    assert_eq!(stats.a_to_b.link.duplicated, 10, "{stats:?}");
    assert_eq!(stats.a_to_b.link.forwarded, 20, "{stats:?}");
}

/// 100 MB of kernel TCP from `N-b` to `N-a` through an unimpaired emulator, byte-exact.
#[test]
fn unimpaired_emulator_carries_100mb_of_tcp_byte_exact() {
    let Some(net) = TestNet::with_options("tcp", Some("none"), None) else {
        return;
    };
    if !needs(
        &["socat", "sha256sum", "head", "sh", "ss"],
        "unimpaired_tcp",
    ) {
        return;
    }
    const BYTES: u64 = 100_000_000;
    let dir = common::TempDir::new("emu-tcp");
    let file = dir.path().join("data");
    let file_s = file.to_str().expect("utf-8 path").to_string();
    let out = Command::new("sh")
        .args(["-c", &format!("head -c {BYTES} /dev/urandom > '{file_s}'")])
        .output()
        .expect("make data");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum");
    let want = stdout_of(&out)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();

    let listen =
        format!("socat -u TCP-LISTEN:5001,bind={KERNEL_ADDR},reuseaddr STDOUT | sha256sum");
    let mut receiver = net.spawn_a(&["sh", "-c", &listen]);
    let listening = common::wait_until(Duration::from_secs(5), || {
        stdout_of(&net.exec_a(&["ss", "-ltnH"])).contains(":5001")
    });
    assert!(listening, "socat not listening: {}", receiver.log());
    let start = std::time::Instant::now();
    let send = format!("socat -u OPEN:'{file_s}' TCP:{KERNEL_ADDR}:5001");
    let out = net.exec_b(&["sh", "-c", &send]);
    assert!(out.status.success(), "sender: {}", stderr_of(&out));
    let status = receiver
        .wait_timeout(Duration::from_secs(20))
        .expect("receiver finished");
    let elapsed = start.elapsed();
    assert!(status.success(), "receiver: {}", receiver.log());
    let got = receiver.log();
    assert!(
        got.starts_with(&want),
        "sha256 differs: sent {want}, received {got}"
    );
    let stats = net.emulator_stats();
    eprintln!(
        "100 MB through the emulator in {elapsed:?} ({:.0} Mbit/s); {stats:?}",
        BYTES as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    let data = stats.b_to_a.link;
    assert!(data.bytes_in > BYTES, "{stats:?}");
    for d in [stats.a_to_b, stats.b_to_a] {
        assert_eq!(d.link.received, d.link.forwarded, "transparent: {stats:?}");
        assert_eq!(d.link.lost + d.link.duplicated + d.link.corrupted, 0);
    }
}

/// The issue's example impairment (every kind at once): kernel TCP still delivers a 4 MB
/// stream byte-exact (corrupted frames are caught by checksums and retransmitted), and the
/// emulator counts each kind of impairment.
#[test]
fn issue_example_impairment_keeps_kernel_tcp_byte_exact() {
    let spec = "loss=2%,delay=5ms,jitter=1ms,reorder=5%,dup=1%,corrupt=0.1%,seed=11";
    let Some(net) = TestNet::with_options("iex", Some(spec), None) else {
        return;
    };
    if !needs(&["socat", "sha256sum", "head", "sh", "ss"], "issue_example") {
        return;
    }
    const BYTES: u64 = 4_000_000;
    let dir = common::TempDir::new("emu-iex");
    let file = dir.path().join("data");
    let file_s = file.to_str().expect("utf-8 path").to_string();
    let out = Command::new("sh")
        .args(["-c", &format!("head -c {BYTES} /dev/urandom > '{file_s}'")])
        .output()
        .expect("make data");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum");
    let want = stdout_of(&out)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    let listen =
        format!("socat -u TCP-LISTEN:5002,bind={KERNEL_ADDR},reuseaddr STDOUT | sha256sum");
    let mut receiver = net.spawn_a(&["sh", "-c", &listen]);
    let listening = common::wait_until(Duration::from_secs(5), || {
        stdout_of(&net.exec_a(&["ss", "-ltnH"])).contains(":5002")
    });
    assert!(listening, "socat not listening: {}", receiver.log());
    let out = net.exec_b(&[
        "sh",
        "-c",
        &format!("socat -u OPEN:'{file_s}' TCP:{KERNEL_ADDR}:5002"),
    ]);
    assert!(out.status.success(), "sender: {}", stderr_of(&out));
    let status = receiver
        .wait_timeout(Duration::from_secs(20))
        .expect("receiver finished");
    assert!(status.success(), "receiver: {}", receiver.log());
    let got = receiver.log();
    assert!(
        got.starts_with(&want),
        "sha256 differs: sent {want}, received {got}"
    );
    let stats = net.emulator_stats();
    let data = stats.b_to_a.link;
    // ~2900 data segments: 2 % loss, 5 % reordering and 1 % duplication all happen.
    assert!(data.received > 2700, "{stats:?}");
    assert!(
        data.lost > 0 && data.reordered > 0 && data.duplicated > 0,
        "{stats:?}"
    );
    for d in [stats.a_to_b, stats.b_to_a] {
        let l = d.link;
        assert_eq!(
            l.received + l.duplicated,
            l.lost + l.overflow + l.forwarded + l.queued,
            "{stats:?}"
        );
    }
}

/// `--nft-drop 50%` in `N-b`: about half the replies are dropped, and the rule's counter
/// agrees exactly with ping.
#[test]
fn nft_drop_loses_about_the_share_asked() {
    let Some(net) = TestNet::with_options("nft", None, Some("50%")) else {
        return;
    };
    if !needs(&["ping", "nft"], "nft_drop") {
        return;
    }
    assert!(net.topology().middle.is_none());
    assert!(!namespaces().contains(&format!("{}-m", net.name())));
    net.pin_neighbours();
    let before = testnet::nft_dropped(net.name()).expect("nft counter");
    assert_eq!(before, 0);
    let ping = ping_a_from_b(&net, 200, "0.01");
    // Binomial(200, 0.5): sd 7; these bounds are 7 sd away.
    assert!((50..=150).contains(&ping.received), "{ping:?}");
    let dropped = testnet::nft_dropped(net.name()).expect("nft counter");
    assert_eq!(dropped, u64::from(200 - ping.received), "{ping:?}");
    let name = net.name().to_string();
    net.teardown().expect("teardown");
    assert!(
        testnet::nft_dropped(&name).is_err(),
        "table went with the namespace"
    );
}

/// The command line: `up --impair --nft-drop` daemonizes the emulator (it outlives the
/// `msock` process), `stats` prints its counters, `down` ends it and removes `N-m` and the run
/// directory.
#[test]
fn cli_impaired_up_stats_down_leave_nothing() {
    if common::skip_without_netns("cli_impaired") || !needs(&["nft"], "cli_impaired") {
        return;
    }
    let name = common::unique_name("cim");
    let _cleanup = DownOnDrop(name.clone());
    let out = msock(&[
        "testnet",
        "up",
        "--name",
        &name,
        "--impair",
        "loss=1%,delay=1ms,seed=5",
        "--nft-drop",
        "0.1%",
    ]);
    assert!(out.status.success(), "up: {}", stderr_of(&out));
    let text = stdout_of(&out);
    for needle in [
        format!("{name}-m "),
        format!("{name}-ma <-> {name}-mb"),
        "impair loss=1%,delay=1ms,seed=5".to_string(),
        format!("/run/msock-testnet-{name}/emulator.stats"),
        "drops 0.1% of IPv4".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle} missing:\n{text}");
    }
    let pid: u32 = text
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text}"));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "emulator gone after up"
    );
    let run_dir = testnet::run_dir(&name);
    assert!(run_dir.join("emulator.pid").is_file());
    // Exists, and a second up fails without harm.
    assert!(testnet::exists(&name).expect("exists"));
    let again = msock(&["testnet", "up", "--name", &name, "--impair", "none"]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr_of(&again));
    assert!(stderr_of(&again).contains("already exists"));

    let out = msock(&["testnet", "stats", "--name", &name]);
    assert!(out.status.success(), "stats: {}", stderr_of(&out));
    let stats = testnet::EmulatorStats::parse(&stdout_of(&out)).expect("stats format");
    assert_eq!(stats.pid, pid);
    assert_eq!(stats.spec, "loss=1%,delay=1ms,seed=5");
    assert!(stats.usr1 >= 1);

    let out = msock(&["testnet", "down", "--name", &name]);
    assert!(out.status.success(), "down: {}", stderr_of(&out));
    let listed = namespaces();
    assert!(
        !listed.iter().any(|n| n.starts_with(&format!("{name}-"))),
        "{listed:?}"
    );
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    // Reparented to init when `up` exited; init reaps it.
    let gone = common::wait_until(Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    });
    assert!(gone, "emulator {pid} still running after down");
    let out = msock(&["testnet", "stats", "--name", &name]);
    assert_eq!(out.status.code(), Some(1));
}

/// A testnet whose emulator cannot start is removed completely, and `down` of an impaired
/// testnet built in-process reaps the emulator (no zombie).
#[test]
fn failed_emulator_start_removes_everything_and_down_reaps() {
    if common::skip_without_netns("emulator_failure") {
        return;
    }
    let name = common::unique_name("efl");
    let _cleanup = DownOnDrop(name.clone());
    let options = UpOptions {
        impair: Some("loss=1%".parse().expect("spec")),
        nft_drop: None,
        msock_bin: Some("/bin/false".into()),
    };
    let e = testnet::up_with(&name, &options).expect_err("emulator cannot start");
    assert!(e.to_string().contains("link emulator exited"), "{e}");
    assert!(e.to_string().contains("removed again"), "{e}");
    let listed = namespaces();
    assert!(
        !listed.iter().any(|n| n.starts_with(&format!("{name}-"))),
        "{listed:?}"
    );
    assert!(!testnet::run_dir(&name).exists());

    let Some(net) = TestNet::with_options("rea", Some("none"), None) else {
        return;
    };
    let pid = net.topology().middle.as_ref().expect("middle").pid;
    net.teardown().expect("teardown");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "emulator {pid} not reaped"
    );
}
