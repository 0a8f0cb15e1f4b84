//! TCP engine cost (issue 3): nanoseconds of engine work per received and per sent segment,
//! 1 B and 1448 B payloads, measured in-process with no I/O (paper §7.1 splits the same way:
//! protocol processing apart from the copy and the channel).
//!
//! - *receive*: an established engine is fed in-order data segments (pre-built, checksums
//!   already verified by the wire layer, as in the real path) and the application reads each
//!   one out; every second full segment makes the engine emit an ACK. Cost per segment =
//!   `process` + `recv` + the `dispatch` that emits the ACKs.
//! - *send*: the application writes one segment's worth, `dispatch` emits it, and the peer's
//!   cumulative ACK for every second segment is processed. Cost per segment = `send` +
//!   `dispatch` + half an ACK's `process`.
//!
//! Prints the table and writes the `tcp_engine` section of BENCHMARKS.md.

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration as StdDuration;

use msock::stack::Instant;
use msock::stack::tcp::connection::{InitialSequence, TcpConfig, TcpConnection};
use msock::wire::tcp::{TcpControl, TcpOptions, TcpRepr, TcpSeqNumber};

const COMMAND: &str = "cargo bench --bench tcp_engine";
const SAMPLES: usize = 15;
const PER_SAMPLE: StdDuration = StdDuration::from_millis(20);
/// The target: "well under 1 µs per segment".
const TARGET_NS: f64 = 1000.0;

fn local() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000)
}

fn remote() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001)
}

/// A segment taken out of `dispatch`, with its payload copied so it can be replayed.
struct Captured {
    repr: TcpRepr<'static>,
    payload: Vec<u8>,
}

impl Captured {
    fn repr(&self) -> TcpRepr<'_> {
        TcpRepr {
            payload: &self.payload,
            ..self.repr
        }
    }
}

fn drain(conn: &mut TcpConnection, now: Instant) -> Vec<Captured> {
    let mut out = Vec::new();
    conn.dispatch(now, &mut |seg| {
        let mut payload = Vec::with_capacity(seg.payload[0].len() + seg.payload[1].len());
        payload.extend_from_slice(seg.payload[0]);
        payload.extend_from_slice(seg.payload[1]);
        out.push(Captured {
            repr: TcpRepr {
                payload: &[],
                ..seg.repr
            },
            payload,
        });
        Ok(())
    });
    out
}

/// Two engines, handshake done: (client, server).
fn established(config: &TcpConfig) -> (TcpConnection, TcpConnection, Instant) {
    let mut now = Instant::from_secs(1);
    let mut client = TcpConnection::connect(
        config.clone(),
        local(),
        remote(),
        InitialSequence {
            iss: TcpSeqNumber(0xfff0_0000),
            ts_offset: 7,
        },
        now,
    );
    let syn = drain(&mut client, now);
    let syn = syn.first().expect("client sends a SYN");
    let mut server = TcpConnection::accept(
        config.clone(),
        remote(),
        local(),
        &syn.repr(),
        InitialSequence {
            iss: TcpSeqNumber(0x1000),
            ts_offset: 99,
        },
        now,
    )
    .expect("server accepts the SYN");
    // Exchange until both sides are quiet.
    for _ in 0..8 {
        now += msock::stack::Duration::from_micros(100);
        for seg in drain(&mut server, now) {
            client.process(now, &seg.repr());
        }
        for seg in drain(&mut client, now) {
            server.process(now, &seg.repr());
        }
    }
    (client, server, now)
}

/// Builds the data segments the client would send, for replay into the server.
fn data_segments(
    client: &mut TcpConnection,
    server_now: &mut Instant,
    size: usize,
    count: usize,
) -> Vec<Captured> {
    let data = vec![0x5a_u8; size];
    let mut segs = Vec::with_capacity(count);
    while segs.len() < count {
        let _ = client.send(&data);
        *server_now += msock::stack::Duration::from_micros(1);
        for seg in drain(client, *server_now) {
            if !seg.payload.is_empty() {
                segs.push(seg);
            }
        }
        // Pretend everything so far was acknowledged so the window never closes.
        let ack = TcpRepr {
            src_port: remote().port(),
            dst_port: local().port(),
            seq_number: TcpSeqNumber(0x1001),
            ack_number: segs.last().map(|s| s.repr.seq_number + s.payload.len()),
            control: TcpControl::NONE,
            window_len: 65535,
            urgent_pointer: None,
            options: TcpOptions::default(),
            payload: &[],
        };
        client.process(*server_now, &ack);
    }
    segs
}

/// ns per received segment of `size` bytes.
fn receive_cost(size: usize) -> Vec<f64> {
    let config = TcpConfig {
        timestamps: false,
        recv_buffer: 4 << 20,
        ..TcpConfig::default()
    };
    let (mut client, mut server, mut now) = established(&config);
    // A long run of in-order segments, replayed in a loop with sequence numbers shifted so
    // they stay in order: the first pass captures, later passes rewrite seq.
    let segments = data_segments(&mut client, &mut now, size, 4096);
    let span: usize = segments.iter().map(|s| s.payload.len()).sum();
    let mut round = 0usize;
    let mut index = 0usize;
    let mut buf = vec![0u8; 65536];
    support::sample_ns(SAMPLES, PER_SAMPLE, || {
        let seg = &segments[index];
        let repr = TcpRepr {
            seq_number: seg.repr.seq_number + round.wrapping_mul(span),
            ..seg.repr()
        };
        now += msock::stack::Duration::from_micros(1);
        black_box(server.process(now, &repr));
        let _ = black_box(server.recv(&mut buf));
        server.dispatch(now, &mut |out| {
            black_box(out.repr.ack_number);
            Ok(())
        });
        index += 1;
        if index == segments.len() {
            index = 0;
            round += 1;
        }
    })
}

/// ns per sent segment of `size` bytes (incl. half a cumulative ACK).
fn send_cost(size: usize) -> Vec<f64> {
    let config = TcpConfig {
        timestamps: false,
        nodelay: true,
        send_buffer: 4 << 20,
        ..TcpConfig::default()
    };
    let (mut client, _server, mut now) = established(&config);
    let data = vec![0xa5_u8; size];
    let mut highest = None;
    let mut sent = 0usize;
    let mut ack = TcpRepr {
        src_port: remote().port(),
        dst_port: local().port(),
        seq_number: TcpSeqNumber(0x1001),
        ack_number: None,
        control: TcpControl::NONE,
        window_len: 65535,
        urgent_pointer: None,
        options: TcpOptions::default(),
        payload: &[],
    };
    support::sample_ns(SAMPLES, PER_SAMPLE, || {
        now += msock::stack::Duration::from_micros(1);
        let _ = black_box(client.send(&data));
        client.dispatch(now, &mut |out| {
            let len = out.payload[0].len() + out.payload[1].len();
            if len > 0 {
                highest = Some(out.repr.seq_number + len);
            }
            Ok(())
        });
        sent += 1;
        if sent.is_multiple_of(2) {
            ack.ack_number = highest;
            black_box(client.process(now, &ack));
        }
    })
}

fn main() {
    let mut rows = Vec::new();
    println!("TCP engine cost per segment (ns, median / p99 of {SAMPLES} samples)");
    for size in [1usize, 1448] {
        let rx = receive_cost(size);
        let tx = send_cost(size);
        let (rx_med, rx_p99) = (support::median(&rx), support::p99(&rx));
        let (tx_med, tx_p99) = (support::median(&tx), support::p99(&tx));
        println!(
            "  {size:>5} B  receive {rx_med:>7.1} / {rx_p99:>7.1}   send {tx_med:>7.1} / {tx_p99:>7.1}"
        );
        rows.push(format!(
            "| {size} B | {rx_med:.0} | {rx_p99:.0} | {tx_med:.0} | {tx_p99:.0} | {} |",
            if rx_med < TARGET_NS && tx_med < TARGET_NS {
                "yes"
            } else {
                "**no**"
            }
        ));
    }
    let body = format!(
        "Engine cost per segment, in-process, no I/O (receive = process + recv + ACK dispatch; \
         send = send + dispatch + ½ ACK). Target: well under {TARGET_NS:.0} ns.\n\n\
         | payload | receive median ns | receive p99 ns | send median ns | send p99 ns | < 1 µs |\n\
         |---|---|---|---|---|---|\n{}\n",
        rows.join("\n"),
    );
    match support::write_section_markdown("tcp_engine", &body, COMMAND) {
        Ok(path) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write BENCHMARKS.md: {e}"),
    }
}
