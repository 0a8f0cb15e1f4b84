//! Hand-built frames for bad-input tests: each is a valid frame to 198.18.0.2 with exactly one
//! defect, paired with the drop reason the netserver must count it under.

use msock::checksum;
use std::net::Ipv4Addr;

const OURS: [u8; 4] = [198, 18, 0, 2];
const PEER: [u8; 4] = [198, 18, 0, 1];

fn ip_header(total_len: usize, ident: u16, frag: u16, protocol: u8) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
    h[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    h[4..6].copy_from_slice(&ident.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&PEER);
    h.extend_from_slice(&OURS);
    fix_ip_checksum(&mut h);
    h
}

fn fix_ip_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let sum = !checksum::data(&h[..ihl.min(h.len())]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
}

fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let pseudo =
        checksum::pseudo_header_v4(Ipv4Addr::from(PEER), Ipv4Addr::from(OURS), 17, len as u32);
    let mut sum = !checksum::combine(&[pseudo, checksum::data(&u)]);
    if sum == 0 {
        sum = 0xffff;
    }
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    u
}

fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + body.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn ip_frame(dst: [u8; 6], src: [u8; 6], mut ip: Vec<u8>, body: &[u8]) -> Vec<u8> {
    ip.extend_from_slice(body);
    ether(dst, src, 0x0800, &ip)
}

/// (drop reason as `msock stat --json` names it, frame).
pub fn bad_frames(dst: [u8; 6], src: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let payload = b"msock bad input";
    let good_udp = udp(40000, 9, payload);

    // The IPv4 total length claims more than the frame carries (a frame cut in transit; a frame
    // too short to hold the destination address is already refused by the kernel filter).
    out.push((
        "truncated",
        ip_frame(
            dst,
            src,
            ip_header(20 + good_udp.len() + 100, 9, 0, 17),
            &good_udp,
        ),
    ));

    let mut ip = ip_header(20 + good_udp.len(), 1, 0, 17);
    ip[10] ^= 0xff;
    out.push(("bad-ip-checksum", ip_frame(dst, src, ip, &good_udp)));

    let mut ip = ip_header(20 + good_udp.len(), 2, 0, 17);
    ip[0] = 0x44; // IHL 4 < 5
    fix_ip_checksum(&mut ip[..20]);
    out.push(("bad-ip-header", ip_frame(dst, src, ip, &good_udp)));

    // IHL 6 with a record-route option whose length overruns the header.
    let mut ip = ip_header(24 + good_udp.len(), 3, 0, 17);
    ip[0] = 0x46;
    ip.extend_from_slice(&[0x07, 0x0b, 0x04, 0x00]);
    fix_ip_checksum(&mut ip);
    out.push(("bad-ip-options", ip_frame(dst, src, ip, &good_udp)));

    let mut bad_sum = good_udp.clone();
    bad_sum[6] ^= 0x55;
    out.push((
        "bad-udp-checksum",
        ip_frame(dst, src, ip_header(20 + bad_sum.len(), 4, 0, 17), &bad_sum),
    ));

    let mut bad_len = good_udp.clone();
    bad_len[4..6].copy_from_slice(&200u16.to_be_bytes());
    out.push((
        "bad-udp-length",
        ip_frame(dst, src, ip_header(20 + bad_len.len(), 5, 0, 17), &bad_len),
    ));

    // Overlapping fragments with conflicting data (RFC 5722 spirit): the datagram is dropped.
    let first = [0x11u8; 16];
    let overlap = [0x22u8; 16];
    let mf = 0x2000;
    out.push((
        "frag-overlap",
        ip_frame(dst, src, ip_header(36, 6, mf, 17), &first),
    ));
    out.push((
        "frag-overlap",
        ip_frame(dst, src, ip_header(36, 6, mf | 1, 17), &overlap),
    ));

    // A fragment whose rest never comes: freed at the reassembly timeout.
    out.push((
        "frag-timeout",
        ip_frame(dst, src, ip_header(36, 7, mf, 17), &first),
    ));
    out
}

/// `count` ARP requests from random senders for addresses that are not ours.
pub fn arp_flood(src: [u8; 6], count: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let r = state.to_be_bytes();
            let mut mac = src;
            mac[3..6].copy_from_slice(&r[0..3]);
            let sender = [198, 18, 1 + r[3] % 200, r[4].max(1)];
            let target = [198, 18, 0, 10 + r[5] % 200];
            let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
            arp.extend_from_slice(&mac);
            arp.extend_from_slice(&sender);
            arp.extend_from_slice(&[0; 6]);
            arp.extend_from_slice(&target);
            ether([0xff; 6], mac, 0x0806, &arp)
        })
        .collect()
}
