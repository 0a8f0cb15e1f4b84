//! Fuzz-corpus smoke run (part of `make test`): every `msock::wire::fuzzing::*` entry point over
//! every file of its seed corpus `fuzz/corpus/<target>/`. A parser panic or a failed round trip
//! fails the test. The seeds are generated here from packets built with the wire API (valid
//! packets of each kind, then truncated and malformed variants); regenerate them with
//!
//! ```text
//! cargo test --test wire_corpus -- --ignored regenerate_corpus
//! ```
//!
//! and `generated_seeds_are_checked_in` keeps the checked-in corpus in step with this file.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use msock::control::codec::{encode_reply, encode_request, encode_upcall};
use msock::control::{Family, Reply, Request, RingSpec, ShutdownHow, SockKind, Upcall, VERSION};
use msock::wire::fuzzing::{self, DST_ADDR, SRC_ADDR};
use msock::wire::{
    ArpOperation, ArpPacket, ArpRepr, DstUnreachable, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Option, Ipv4Options,
    Ipv4Packet, Ipv4Repr, Redirect, SackBlocks, TcpControl, TcpOption, TcpOptions, TcpPacket,
    TcpRepr, TcpSeqNumber, TimeExceeded, UdpPacket, UdpRepr,
};

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 7] = [
    ("ethernet", fuzzing::ethernet),
    ("arp", fuzzing::arp),
    ("ipv4", fuzzing::ipv4),
    ("icmpv4", fuzzing::icmpv4),
    ("udp", fuzzing::udp),
    ("tcp", fuzzing::tcp),
    ("control_decode", fuzzing::control_decode),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_parses_without_panic() {
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let data = fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "fuzzing::{target} panicked on {}",
                path.display()
            );
            count += 1;
        }
        assert!(count >= 10, "{}: only {count} seeds", dir.display());
    }
}

#[test]
fn generated_seeds_are_checked_in() {
    for (target, seeds) in seeds() {
        for (name, bytes) in seeds {
            let path = corpus_dir(target).join(&name);
            let on_disk = fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run the ignored test regenerate_corpus)",
                    path.display()
                )
            });
            assert_eq!(
                on_disk,
                bytes,
                "{} is stale (run regenerate_corpus)",
                path.display()
            );
        }
    }
}

/// The generated seeds are valid where their names say so.
#[test]
fn valid_seeds_parse() {
    let all = seeds();
    let get = |target: &str, name: &str| all[target][name].clone();
    let frame = get("ethernet", "arp-request");
    let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert!(ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).is_ok());
    for name in [
        "udp",
        "udp-demux-enclosed",
        "tcp-syn",
        "icmp-port-unreachable",
    ] {
        let bytes = get("ipv4", name);
        assert!(
            Ipv4Repr::parse(&Ipv4Packet::new_checked(&bytes[..]).unwrap()).is_ok(),
            "{name}"
        );
    }
    for name in ["syn-options", "sack-demux-advertise", "demux-revoke"] {
        let bytes = get("tcp", name);
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert!(TcpRepr::parse(&p, SRC_ADDR, DST_ADDR).is_ok(), "{name}");
    }
    let bytes = get("udp", "payload");
    let p = UdpPacket::new_checked(&bytes[..]).unwrap();
    assert!(UdpRepr::parse(&p, SRC_ADDR, DST_ADDR).is_ok());
    let bytes = get("icmpv4", "frag-required");
    assert!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&bytes[..]).unwrap()).is_ok());
}

#[test]
#[ignore = "writes fuzz/corpus; run explicitly to regenerate the seeds"]
fn regenerate_corpus() {
    for (target, seeds) in seeds() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

// ---- seed construction -------------------------------------------------------------------

const MAC_A: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
const MAC_B: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);

type Seeds = BTreeMap<String, Vec<u8>>;

/// Adds `bytes` under `name`, plus cuts at `cuts` (lengths below the full one).
fn add(seeds: &mut Seeds, name: &str, bytes: Vec<u8>, cuts: &[usize]) {
    for &cut in cuts {
        if cut < bytes.len() {
            seeds.insert(format!("{name}.cut{cut}"), bytes[..cut].to_vec());
        }
    }
    seeds.insert(name.to_string(), bytes);
}

fn with(bytes: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = bytes.to_vec();
    f(&mut out);
    out
}

fn ip_header(protocol: IpProtocol, payload_len: usize) -> Ipv4Repr {
    Ipv4Repr {
        src_addr: SRC_ADDR,
        dst_addr: DST_ADDR,
        protocol,
        payload_len,
        ttl: 64,
        ident: 0x1234,
        dont_frag: true,
        ..Ipv4Repr::default()
    }
}

fn ipv4_packet(header: Ipv4Repr, payload: &[u8]) -> Vec<u8> {
    let header = Ipv4Repr {
        payload_len: payload.len(),
        ..header
    };
    let mut out = vec![0u8; header.total_len()];
    let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
    header.emit(&mut p);
    p.payload_mut().copy_from_slice(payload);
    out
}

fn ethernet_frame(ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: MAC_A,
        dst_addr: MAC_B,
        ethertype,
    };
    let mut out = vec![0u8; repr.buffer_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    out
}

fn arp_packet(operation: ArpOperation) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: MAC_A,
        source_protocol_addr: SRC_ADDR,
        target_hardware_addr: if operation == ArpOperation::Request {
            EthernetAddress::ZERO
        } else {
            MAC_B
        },
        target_protocol_addr: DST_ADDR,
    };
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
    out
}

fn udp_datagram(payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: 5000,
        dst_port: 7000,
    };
    let mut out = vec![0u8; repr.buffer_len(payload.len())];
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut out[..]),
        SRC_ADDR,
        DST_ADDR,
        payload.len(),
        |p| p.copy_from_slice(payload),
    );
    out
}

fn icmp_message(repr: &Icmpv4Repr) -> Vec<u8> {
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
    out
}

fn tcp_template() -> TcpRepr<'static> {
    TcpRepr {
        src_port: 49152,
        dst_port: 80,
        seq_number: TcpSeqNumber(0x0102_0304),
        ack_number: Some(TcpSeqNumber(0x0a0b_0c0d)),
        control: TcpControl::NONE,
        window_len: 0x2000,
        urgent_pointer: None,
        options: TcpOptions::new(),
        payload: &[],
    }
}

fn tcp_segment(repr: &TcpRepr) -> Vec<u8> {
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut out[..]),
        SRC_ADDR,
        DST_ADDR,
    );
    out
}

/// A TCP segment whose options area is `options` verbatim (checksum fixed).
fn tcp_with_raw_options(options: &[u8]) -> Vec<u8> {
    let mut out = tcp_segment(&tcp_template());
    out.extend_from_slice(options);
    let mut p = TcpPacket::new_unchecked(&mut out[..]);
    p.set_header_len(20 + options.len());
    p.fill_checksum(SRC_ADDR, DST_ADDR);
    out
}

/// An IPv4 packet whose options area is `options` verbatim (checksum fixed).
fn ipv4_with_raw_options(options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = ipv4_packet(ip_header(IpProtocol::Udp, 0), &[]);
    out.extend_from_slice(options);
    out.extend_from_slice(payload);
    let total = out.len() as u16;
    let mut p = Ipv4Packet::new_unchecked(&mut out[..]);
    p.set_header_len(20 + options.len());
    p.set_total_len(total);
    p.fill_checksum();
    out
}

fn refill_ip_checksum(bytes: &mut [u8]) {
    Ipv4Packet::new_unchecked(bytes).fill_checksum();
}

fn tcp_seeds() -> (Seeds, Vec<TcpRepr<'static>>) {
    let mut s = Seeds::new();
    let mut syn_options = TcpOptions::new();
    syn_options.push(TcpOption::MaxSegmentSize(1460)).unwrap();
    syn_options.push(TcpOption::SackPermitted).unwrap();
    syn_options
        .push(TcpOption::Timestamps { tsval: 1, tsecr: 0 })
        .unwrap();
    syn_options.push_aligned(TcpOption::WindowScale(7)).unwrap();
    let syn = TcpRepr {
        ack_number: None,
        control: TcpControl::SYN,
        options: syn_options,
        ..tcp_template()
    };
    let mut sack = TcpOptions::new();
    let blocks = [
        (TcpSeqNumber(100), TcpSeqNumber(200)),
        (TcpSeqNumber(300), TcpSeqNumber(400)),
    ];
    sack.push_aligned(TcpOption::SackRange(SackBlocks::new(&blocks).unwrap()))
        .unwrap();
    sack.push_aligned(TcpOption::DemuxAdvertise {
        seq: 3,
        handle: 0x0102,
        nonce: 0xdead_beef,
    })
    .unwrap();
    let sack_seg = TcpRepr {
        options: sack,
        payload: b"hello",
        ..tcp_template()
    };
    let mut revoke = TcpOptions::new();
    revoke
        .push_aligned(TcpOption::Timestamps { tsval: 7, tsecr: 9 })
        .unwrap();
    revoke
        .push_aligned(TcpOption::DemuxRevoke { seq: 4 })
        .unwrap();
    let revoke_seg = TcpRepr {
        options: revoke,
        control: TcpControl {
            fin: true,
            psh: true,
            ..TcpControl::NONE
        },
        ..tcp_template()
    };
    let mut four = TcpOptions::new();
    let four_blocks = [(TcpSeqNumber(1), TcpSeqNumber(2)); 4];
    four.push_aligned(TcpOption::SackRange(SackBlocks::new(&four_blocks).unwrap()))
        .unwrap();
    let four_seg = TcpRepr {
        options: four,
        ..tcp_template()
    };
    let data_seg = TcpRepr {
        control: TcpControl {
            psh: true,
            ece: true,
            cwr: true,
            ..TcpControl::NONE
        },
        urgent_pointer: Some(2),
        payload: b"GET / HTTP/1.0\r\n\r\n",
        ..tcp_template()
    };
    let rst = TcpRepr {
        ack_number: None,
        control: TcpControl::RST,
        ..tcp_template()
    };
    let reprs = vec![syn, sack_seg, revoke_seg, data_seg];

    let syn_bytes = tcp_segment(&syn);
    add(
        &mut s,
        "syn-options",
        syn_bytes.clone(),
        &[0, 10, 19, 20, 30, 39],
    );
    add(
        &mut s,
        "sack-demux-advertise",
        tcp_segment(&sack_seg),
        &[40, 50],
    );
    add(&mut s, "demux-revoke", tcp_segment(&revoke_seg), &[]);
    add(&mut s, "sack-four-blocks", tcp_segment(&four_seg), &[]);
    add(&mut s, "data-urgent-ecn", tcp_segment(&data_seg), &[21]);
    add(&mut s, "rst", tcp_segment(&rst), &[]);
    s.insert("bad-checksum".into(), with(&syn_bytes, |b| b[16] ^= 0xff));
    s.insert(
        "data-offset-4".into(),
        with(&syn_bytes, |b| b[12] = 0x40 | (b[12] & 0x0f)),
    );
    s.insert(
        "data-offset-beyond".into(),
        with(&syn_bytes[..30], |b| b[12] = 0xf0),
    );
    for (name, options) in [
        ("opt-len-0", &[0x02, 0x00, 0x05, 0xb4][..]),
        ("opt-len-1", &[0x08, 0x01, 0x00, 0x00]),
        ("opt-overrun", &[0x01, 0x08, 0x0a, 0x00]),
        ("opt-no-length-byte", &[0x01, 0x01, 0x01, 0x03]),
        ("opt-mss-len-3", &[0x02, 0x03, 0x05, 0x00]),
        ("opt-sack-partial", &[0x05, 0x06, 0, 0, 0, 0, 0x01, 0x01]),
        (
            "opt-advertise-short",
            &[0xfd, 0x08, 0x4d, 0x53, 0x01, 0, 0, 0],
        ),
        (
            "opt-other-experiment",
            &[0xfd, 0x06, 0x12, 0x34, 0xaa, 0xbb, 0x01, 0x00],
        ),
        (
            "opt-demux-unknown-subtype",
            &[0xfd, 0x05, 0x4d, 0x53, 0x09, 0x1e, 0x03, 0x00],
        ),
        ("opt-eol-then-garbage", &[0x01, 0x00, 0x02, 0x01]),
        ("opt-nop-fill", &[0x01; 40]),
    ] {
        s.insert(name.into(), tcp_with_raw_options(options));
    }
    (s, reprs)
}

fn icmp_seeds(original_udp: &[u8]) -> Seeds {
    let mut s = Seeds::new();
    let (header, data) = Icmpv4Repr::quote(original_udp).unwrap();
    let echo = icmp_message(&Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"ping",
    });
    add(&mut s, "echo-request", echo.clone(), &[0, 4, 7, 8]);
    s.insert(
        "echo-reply".into(),
        icmp_message(&Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 2,
            data: &[0; 56],
        }),
    );
    let port = icmp_message(&Icmpv4Repr::DstUnreachable {
        reason: DstUnreachable::PortUnreachable,
        next_hop_mtu: 0,
        header,
        data,
    });
    add(&mut s, "port-unreachable", port.clone(), &[8, 20, 28, 30]);
    s.insert(
        "frag-required".into(),
        icmp_message(&Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            next_hop_mtu: 1400,
            header,
            data,
        }),
    );
    s.insert(
        "redirect".into(),
        icmp_message(&Icmpv4Repr::Redirect {
            code: Redirect::Host,
            gateway: Ipv4Addr::new(198, 18, 0, 254),
            header,
            data,
        }),
    );
    s.insert(
        "time-exceeded".into(),
        icmp_message(&Icmpv4Repr::TimeExceeded {
            reason: TimeExceeded::TtlExpired,
            header,
            data,
        }),
    );
    // Linux quotes the whole small datagram.
    let mut whole = vec![3, 3, 0, 0, 0, 0, 0, 0];
    whole.extend_from_slice(original_udp);
    Icmpv4Packet::new_unchecked(&mut whole[..]).fill_checksum();
    s.insert("port-unreachable-whole-quote".into(), whole);
    s.insert("echo-bad-checksum".into(), with(&echo, |b| b[2] ^= 1));
    let refill = |b: &mut Vec<u8>| Icmpv4Packet::new_unchecked(&mut b[..]).fill_checksum();
    s.insert(
        "unknown-type".into(),
        with(&echo, |b| {
            b[0] = 42;
            refill(b)
        }),
    );
    s.insert(
        "echo-bad-code".into(),
        with(&echo, |b| {
            b[1] = 3;
            refill(b)
        }),
    );
    s.insert(
        "quote-bad-ihl".into(),
        with(&port, |b| {
            b[8] = 0x44;
            refill(b)
        }),
    );
    s.insert(
        "quote-ihl-beyond".into(),
        with(&port, |b| {
            b[8] = 0x4f;
            refill(b)
        }),
    );
    s.insert(
        "quote-total-below-ihl".into(),
        with(&port, |b| {
            b[11] = 10;
            refill(b)
        }),
    );
    s
}

fn seeds() -> BTreeMap<&'static str, Seeds> {
    let mut all = BTreeMap::new();

    // UDP.
    let mut udp = Seeds::new();
    let datagram = udp_datagram(b"hello, msock");
    add(&mut udp, "payload", datagram.clone(), &[0, 4, 7, 8, 12]);
    udp.insert("empty".into(), udp_datagram(&[]));
    udp.insert("no-checksum".into(), with(&datagram, |b| b[6..8].fill(0)));
    udp.insert("bad-checksum".into(), with(&datagram, |b| b[7] ^= 0x5a));
    udp.insert(
        "len-below-8".into(),
        with(&datagram, |b| b[4..6].copy_from_slice(&[0, 7])),
    );
    udp.insert(
        "len-beyond-buffer".into(),
        with(&datagram, |b| b[4..6].copy_from_slice(&[0, 40])),
    );
    udp.insert(
        "trailing-bytes".into(),
        with(&datagram, |b| b.extend_from_slice(&[0; 6])),
    );
    udp.insert("odd-payload".into(), udp_datagram(b"odd"));
    udp.insert(
        "large".into(),
        udp_datagram(&(0..1472u32).map(|i| i as u8).collect::<Vec<_>>()),
    );

    // ARP.
    let mut arp = Seeds::new();
    let request = arp_packet(ArpOperation::Request);
    add(&mut arp, "request", request.clone(), &[0, 7, 8, 20, 27]);
    arp.insert("reply".into(), arp_packet(ArpOperation::Reply));
    arp.insert("unknown-op".into(), arp_packet(ArpOperation::Unknown(9)));
    arp.insert("htype-6".into(), with(&request, |b| b[1] = 6));
    arp.insert(
        "ptype-ipv6".into(),
        with(&request, |b| b[2..4].copy_from_slice(&[0x86, 0xdd])),
    );
    arp.insert("hlen-8".into(), with(&request, |b| b[4] = 8));
    arp.insert("plen-255".into(), with(&request, |b| b[5] = 255));
    arp.insert(
        "padded".into(),
        with(&request, |b| b.extend_from_slice(&[0; 18])),
    );

    // TCP.
    let (tcp, tcp_reprs) = tcp_seeds();

    // IPv4.
    let mut ipv4 = Seeds::new();
    let ip_udp = ipv4_packet(ip_header(IpProtocol::Udp, 0), &datagram);
    add(&mut ipv4, "udp", ip_udp.clone(), &[0, 1, 19, 20, 27, 30]);
    let mut enclosed = Ipv4Options::new();
    enclosed
        .push(Ipv4Option::DemuxEnclosed {
            handle: 0x0102,
            nonce: 0x0a0b_0c0d,
        })
        .unwrap();
    let demux = Ipv4Repr {
        options: enclosed,
        ..ip_header(IpProtocol::Udp, 0)
    };
    add(
        &mut ipv4,
        "udp-demux-enclosed",
        ipv4_packet(demux, &datagram),
        &[25],
    );
    let syn_segment = tcp_segment(&tcp_reprs[0]);
    ipv4.insert(
        "tcp-syn".into(),
        ipv4_packet(ip_header(IpProtocol::Tcp, 0), &syn_segment),
    );
    let icmp = icmp_seeds(&ip_udp);
    ipv4.insert(
        "icmp-echo".into(),
        ipv4_packet(ip_header(IpProtocol::Icmp, 0), &icmp["echo-request"]),
    );
    ipv4.insert(
        "icmp-port-unreachable".into(),
        ipv4_packet(ip_header(IpProtocol::Icmp, 0), &icmp["port-unreachable"]),
    );
    let whole = Ipv4Repr {
        dont_frag: false,
        options: enclosed,
        ..ip_header(IpProtocol::Udp, 0)
    };
    let big = udp_datagram(&[0x77; 64]);
    let first = whole.fragment_header(0, 24, true);
    ipv4.insert("fragment-first".into(), ipv4_packet(first, &big[..24]));
    let last = whole.fragment_header(24, big.len() - 24, false);
    ipv4.insert("fragment-last".into(), ipv4_packet(last, &big[24..]));
    ipv4.insert("bad-checksum".into(), with(&ip_udp, |b| b[10] ^= 0x80));
    ipv4.insert(
        "version-6".into(),
        with(&ip_udp, |b| {
            b[0] = 0x65;
            refill_ip_checksum(b)
        }),
    );
    ipv4.insert(
        "ihl-4".into(),
        with(&ip_udp, |b| {
            b[0] = 0x44;
            refill_ip_checksum(b)
        }),
    );
    ipv4.insert(
        "total-below-ihl".into(),
        with(&ip_udp, |b| {
            b[2..4].copy_from_slice(&[0, 16]);
            refill_ip_checksum(b)
        }),
    );
    ipv4.insert(
        "total-beyond-buffer".into(),
        with(&ip_udp, |b| {
            b[2..4].copy_from_slice(&[0x05, 0xdc]);
            refill_ip_checksum(b)
        }),
    );
    ipv4.insert(
        "ethernet-padding".into(),
        with(&ip_udp, |b| b.extend_from_slice(&[0; 14])),
    );
    ipv4.insert(
        "fragment-beyond-64k".into(),
        with(&ip_udp, |b| {
            b[6..8].copy_from_slice(&[0x1f, 0xff]);
            refill_ip_checksum(b)
        }),
    );
    ipv4.insert(
        "unknown-protocol".into(),
        with(&ip_udp, |b| {
            b[9] = 47;
            refill_ip_checksum(b)
        }),
    );
    for (name, options) in [
        ("opt-len-0", &[0x07, 0x00, 0x00, 0x00][..]),
        ("opt-len-1", &[0x94, 0x01, 0x00, 0x00]),
        ("opt-overrun", &[0x07, 0x09, 0x04, 0x00, 0, 0, 0, 0]),
        ("opt-no-length-byte", &[0x01, 0x01, 0x01, 0x83]),
        ("opt-enclosed-short", &[0x9e, 0x04, 0x00, 0x01]),
        ("opt-router-alert", &[0x94, 0x04, 0x00, 0x00]),
        ("opt-record-route", &[0x07, 0x07, 0x04, 0, 0, 0, 0, 0x00]),
        ("opt-eol-then-garbage", &[0x00, 0x07, 0x01, 0x02]),
        ("opt-nop-fill", &[0x01; 40]),
    ] {
        ipv4.insert(name.into(), ipv4_with_raw_options(options, &datagram));
    }

    // Ethernet (whole frames: the parsers chain).
    let mut ethernet = Seeds::new();
    let arp_frame = ethernet_frame(EthernetProtocol::Arp, &request);
    add(
        &mut ethernet,
        "arp-request",
        arp_frame.clone(),
        &[0, 6, 13, 14, 30],
    );
    ethernet.insert(
        "arp-reply".into(),
        ethernet_frame(EthernetProtocol::Arp, &arp["reply"]),
    );
    for name in [
        "udp",
        "udp-demux-enclosed",
        "tcp-syn",
        "icmp-echo",
        "icmp-port-unreachable",
        "fragment-first",
        "fragment-last",
        "bad-checksum",
        "opt-overrun",
    ] {
        ethernet.insert(
            format!("ipv4-{name}"),
            ethernet_frame(EthernetProtocol::Ipv4, &ipv4[name]),
        );
    }
    // A minimum-size frame: 60 bytes with Ethernet padding after a short IP packet.
    let mut padded = ethernet_frame(EthernetProtocol::Ipv4, &ipv4["icmp-echo"]);
    padded.resize(60, 0);
    ethernet.insert("ipv4-icmp-echo-padded".into(), padded);
    for (tcp_name, repr) in ["syn", "sack", "revoke", "data"].iter().zip(&tcp_reprs) {
        let segment = tcp_segment(repr);
        let packet = ipv4_packet(ip_header(IpProtocol::Tcp, 0), &segment);
        ethernet.insert(
            format!("ipv4-tcp-{tcp_name}"),
            ethernet_frame(EthernetProtocol::Ipv4, &packet),
        );
    }
    ethernet.insert(
        "ipv6".into(),
        ethernet_frame(EthernetProtocol::Ipv6, &[0x60, 0, 0, 0]),
    );
    ethernet.insert(
        "vlan-tag".into(),
        ethernet_frame(EthernetProtocol::Unknown(0x8100), &[0; 4]),
    );
    ethernet.insert(
        "empty-payload".into(),
        ethernet_frame(EthernetProtocol::Ipv4, &[]),
    );

    all.insert("ethernet", ethernet);
    all.insert("arp", arp);
    all.insert("ipv4", ipv4);
    all.insert("icmpv4", icmp);
    all.insert("udp", udp);
    all.insert("tcp", tcp);
    all.insert("control_decode", control_seeds());
    all
}

/// Control messages of each direction (`control::codec`), then cut and corrupted variants.
fn control_seeds() -> Seeds {
    let local = SocketAddrV4::new(DST_ADDR, 7000);
    let remote = SocketAddrV4::new(SRC_ADDR, 5000);
    let requests = [
        (
            "req-hello",
            Request::Hello {
                version: VERSION,
                pid: 4242,
            },
        ),
        (
            "req-socket",
            Request::Socket {
                family: Family::Inet,
                kind: SockKind::Datagram,
            },
        ),
        (
            "req-socket-v6",
            Request::Socket {
                family: Family::Inet6 { v6only: false },
                kind: SockKind::Datagram,
            },
        ),
        (
            "req-bind",
            Request::Bind {
                id: 7,
                local,
                reuse_addr: true,
                reuse_port: false,
            },
        ),
        (
            "req-connect",
            Request::Connect {
                id: 7,
                remote: Some(remote),
            },
        ),
        (
            "req-disconnect",
            Request::Connect {
                id: 7,
                remote: None,
            },
        ),
        ("req-close", Request::Close { id: 7 }),
        ("req-resolve", Request::Resolve { addr: SRC_ADDR }),
        ("req-stat", Request::Stat { json: true }),
        ("req-hand-over", Request::HandOver { id: 7, len: 4096 }),
        (
            "req-listen",
            Request::Listen {
                id: 7,
                backlog: 128,
            },
        ),
        ("req-accept", Request::Accept { id: 7 }),
        (
            "req-route-add",
            Request::RouteAdd {
                dest: Ipv4Addr::new(198, 18, 0, 128),
                prefix_len: 25,
                gateway: Some(Ipv4Addr::new(198, 18, 0, 1)),
            },
        ),
        (
            "req-route-add-onlink",
            Request::RouteAdd {
                dest: Ipv4Addr::new(198, 18, 0, 0),
                prefix_len: 24,
                gateway: None,
            },
        ),
        (
            "req-route-del",
            Request::RouteDel {
                dest: Ipv4Addr::new(198, 18, 0, 200),
                prefix_len: 32,
            },
        ),
        (
            "req-neigh-add",
            Request::NeighAdd {
                ip: Ipv4Addr::new(198, 18, 0, 1),
                mac: EthernetAddress([2, 0, 0, 0, 0, 0x77]),
            },
        ),
        (
            "req-neigh-del",
            Request::NeighDel {
                ip: Ipv4Addr::new(198, 18, 0, 1),
            },
        ),
        (
            "req-flush",
            Request::Flush {
                id: 5,
                len: 4096,
                rx_cursor: 17,
            },
        ),
        (
            "req-send",
            Request::Send {
                id: 5,
                data: b"flushed bytes".to_vec(),
            },
        ),
        (
            "req-recv",
            Request::Recv {
                id: 5,
                max: 65536,
                peek: false,
            },
        ),
        (
            "req-shutdown",
            Request::Shutdown {
                id: 5,
                how: ShutdownHow::Both,
            },
        ),
        ("req-cache", Request::Cache { id: 5 }),
        (
            "req-set-option",
            Request::SetOption {
                id: 5,
                level: 6,
                name: 1,
                value: 1i32.to_le_bytes().to_vec(),
            },
        ),
        (
            "req-get-option",
            Request::GetOption {
                id: 5,
                level: 6,
                name: 11,
            },
        ),
        ("req-names", Request::Names { id: 5 }),
        ("req-recall", Request::Recall { id: 5 }),
    ];
    let ring = RingSpec {
        version: 2,
        block_size: 1 << 16,
        block_count: 8,
        frame_size: 2048,
        tx_frames: 0,
    };
    let replies = [
        (
            "rep-hello",
            Reply::Hello {
                client_id: 1,
                region_len: 4096,
            },
        ),
        ("rep-socket", Reply::Socket { id: 7 }),
        ("rep-bound", Reply::Bound { local, ring }),
        ("rep-ok", Reply::Ok),
        ("rep-resolve", Reply::Resolve { mac: Some(MAC_A) }),
        ("rep-resolve-none", Reply::Resolve { mac: None }),
        (
            "rep-stat",
            Reply::Stat {
                text: "endpoints 1".into(),
            },
        ),
        ("rep-error", Reply::Error { errno: 98 }),
        (
            "rep-accepted",
            Reply::Accepted {
                id: 8,
                remote,
                ring,
                len: 70_000,
            },
        ),
        ("rep-sent", Reply::Sent { n: 1448 }),
        (
            "rep-received",
            Reply::Received {
                data: b"flushed bytes".to_vec(),
                fin: true,
            },
        ),
        ("rep-cached", Reply::Cached { ring, len: 9000 }),
        (
            "rep-option",
            Reply::Option {
                value: 1i32.to_le_bytes().to_vec(),
            },
        ),
        (
            "rep-names",
            Reply::Names {
                local,
                remote: Some(remote),
            },
        ),
    ];
    let upcalls = [
        (
            "up-datagram",
            Upcall::Datagram {
                id: 7,
                src: remote,
                dst: local,
                payload: b"hello".to_vec(),
            },
        ),
        (
            "up-resolved",
            Upcall::Resolved {
                addr: SRC_ADDR,
                mac: Some(MAC_B),
            },
        ),
        (
            "up-unresolved",
            Upcall::Resolved {
                addr: SRC_ADDR,
                mac: None,
            },
        ),
        (
            "up-icmp-error",
            Upcall::IcmpError {
                id: 7,
                remote,
                errno: 111,
            },
        ),
        ("up-acceptable", Upcall::Acceptable { id: 7, seq: 3 }),
        ("up-tcp-ready", Upcall::TcpReady { id: 7, events: 3 }),
        ("up-recall", Upcall::Recall { id: 7 }),
        (
            "up-tcp-icmp-error",
            Upcall::TcpIcmpError {
                id: 7,
                local,
                remote,
                errno: 90,
                next_hop_mtu: 1200,
                quoted_seq: 0x0102_0304,
            },
        ),
    ];
    let mut s = Seeds::new();
    let mut buf = Vec::new();
    for (name, m) in requests {
        encode_request(&m, &mut buf);
        s.insert(name.into(), buf.clone());
    }
    for (name, m) in replies {
        encode_reply(&m, &mut buf);
        s.insert(name.into(), buf.clone());
    }
    for (name, m) in upcalls {
        encode_upcall(&m, &mut buf);
        s.insert(name.into(), buf.clone());
    }
    let bind = s["req-bind"].clone();
    add(&mut s, "req-bind", bind.clone(), &[0, 3, 9, 12]);
    s.insert("req-bind-trailing".into(), with(&bind, |b| b.push(0)));
    s.insert("req-bind-bad-kind".into(), with(&bind, |b| b[4] ^= 0x7f));
    s.insert("req-bind-bad-version".into(), with(&bind, |b| b[0] ^= 0xff));
    s.insert(
        "req-bind-huge-length".into(),
        with(&bind, |b| b[6..10].fill(0xff)),
    );
    let datagram = s["up-datagram"].clone();
    add(&mut s, "up-datagram", datagram, &[20, 30]);
    // Malformed route requests: a bad gateway tag, cut inside the gateway.
    let route = s["req-route-add"].clone();
    add(&mut s, "req-route-add", route.clone(), &[14, 17]);
    s.insert("req-route-add-bad-tag".into(), with(&route, |b| b[15] = 7));
    s
}
