//! Cross-checks `msock::stack::tcp::info` (Linux `struct tcp_info` encoding) against the
//! running kernel: a loopback TCP connection made with `std::net`, read with
//! `getsockopt(IPPROTO_TCP, TCP_INFO)`, must decode and re-encode byte for byte, and the
//! fields whose values the test controls (state, options, window scales, MSS, byte and
//! segment counters, path MTU) must come out at the offsets our table gives them.
//!
//! Loopback only: no namespaces, no root; nothing leaves the host.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use msock::stack::tcp::info::{
    LINUX_TCP_INFO_LEN, TCP_INFINITE_SSTHRESH, TCPI_OPT_SACK, TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE,
    TcpInfo,
};

/// `getsockopt(fd, level, name)` into `buf`; returns the length the kernel filled.
fn getsockopt_raw(fd: i32, level: i32, name: i32, buf: &mut [u8]) -> usize {
    let mut len = libc::socklen_t::try_from(buf.len()).expect("small buffer");
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` points to a live socklen_t;
    // the kernel writes at most `len` bytes and stores the length it wrote.
    let rc = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    assert_eq!(
        rc,
        0,
        "getsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
    len as usize
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> i32 {
    let mut buf = [0u8; 4];
    assert_eq!(getsockopt_raw(fd, level, name, &mut buf), 4);
    i32::from_ne_bytes(buf)
}

/// The kernel's bytes and our decoding of them.
fn tcp_info(stream: &TcpStream) -> (Vec<u8>, TcpInfo) {
    let mut buf = [0u8; 512];
    let len = getsockopt_raw(
        stream.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        &mut buf,
    );
    (buf[..len].to_vec(), TcpInfo::from_linux_bytes(&buf[..len]))
}

fn sysctl(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn tcp_info_layout_matches_the_kernel() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.set_nodelay(true).unwrap();

    let payload = [0x5au8; 1000];
    client.write_all(&payload).unwrap();
    let mut got = [0u8; 1000];
    server.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);

    // Wait for the ACK of the data to reach the client (quick-ACK mode: almost at once).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (client_bytes, client_info) = loop {
        let (bytes, info) = tcp_info(&client);
        if info.bytes_acked >= 1001 || Instant::now() > deadline {
            break (bytes, info);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (server_bytes, server_info) = tcp_info(&server);

    // Length: never more than our struct; exactly ours on the kernel version it describes.
    let len = client_bytes.len();
    assert!(
        len <= LINUX_TCP_INFO_LEN,
        "kernel struct tcp_info is {len} bytes"
    );
    assert!(len >= 232, "kernel struct tcp_info is only {len} bytes");
    if kernel_version() >= (6, 18) {
        assert_eq!(len, LINUX_TCP_INFO_LEN);
    }

    // Decoding and re-encoding reproduces the kernel's bytes exactly.
    for (bytes, info) in [(&client_bytes, &client_info), (&server_bytes, &server_info)] {
        let mut again = vec![0u8; bytes.len()];
        assert_eq!(info.to_linux_bytes(&mut again), bytes.len());
        assert_eq!(&again, bytes);
    }

    // Fields with values this test knows.
    for info in [&client_info, &server_info] {
        assert_eq!(info.state, 1, "TCP_ESTABLISHED");
        let mut options = 0;
        if sysctl("tcp_timestamps").is_some_and(|v| v != 0) {
            options |= TCPI_OPT_TIMESTAMPS;
        }
        if sysctl("tcp_sack") == Some(1) {
            options |= TCPI_OPT_SACK;
        }
        if sysctl("tcp_window_scaling") == Some(1) {
            options |= TCPI_OPT_WSCALE;
        }
        assert_eq!(
            info.options & (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE),
            options
        );
        assert!(info.rto_us >= 200_000, "rto {} µs", info.rto_us);
        assert_eq!(info.snd_ssthresh, TCP_INFINITE_SSTHRESH);
        assert!(info.snd_cwnd >= 10, "cwnd {}", info.snd_cwnd);
    }
    // Each side's send scale is the other's receive scale.
    assert_eq!(client_info.snd_wscale, server_info.rcv_wscale);
    assert_eq!(client_info.rcv_wscale, server_info.snd_wscale);

    let fd = client.as_raw_fd();
    assert_eq!(
        client_info.snd_mss,
        getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG) as u32
    );
    assert_eq!(
        client_info.pmtu,
        getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU) as u32
    );
    assert_eq!(client_info.bytes_sent, 1000);
    assert_eq!(client_info.bytes_acked, 1001, "the SYN counts");
    assert_eq!(client_info.data_segs_out, 1);
    assert_eq!(client_info.bytes_retrans, 0);
    assert_eq!(server_info.bytes_received, 1000);
    assert_eq!(server_info.data_segs_in, 1);
    assert_eq!(
        server_info.rcv_mss, 1000,
        "estimated from the one segment received"
    );
    assert!(client_info.rtt_us > 0 && client_info.min_rtt_us > 0);
    assert!(client_info.min_rtt_us <= client_info.rtt_us);
}

#[test]
fn window_scale_nibbles_are_not_swapped() {
    // With a tiny SO_RCVBUF set before connecting, the client announces window scale 0 while
    // the server announces the default (non-zero with the usual tcp_rmem).
    if sysctl("tcp_window_scaling") != Some(1) {
        eprintln!("window scaling disabled on this host; skipping");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    // SAFETY: plain socket(2) call; the fd is owned by the TcpStream built below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a socket we own and close through `OwnedFd` below.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let small: libc::c_int = 4096;
    // SAFETY: `small` lives across the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            core::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let addr = match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the length given.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            core::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    let client = TcpStream::from(owned);
    let (server, _) = listener.accept().unwrap();
    let (_, c) = tcp_info(&client);
    let (_, s) = tcp_info(&server);
    assert_eq!(c.rcv_wscale, 0, "client announced scale 0");
    assert!(c.snd_wscale > 0, "server scale seen by the client");
    assert_eq!((s.snd_wscale, s.rcv_wscale), (c.rcv_wscale, c.snd_wscale));
}
