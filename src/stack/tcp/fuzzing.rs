//! Fuzzing entry points for the TCP engine (cargo-fuzz targets `tcp_engine` and `tcp_image`,
//! and the corpus smoke run in `make test`).
//!
//! [`engine`] reads its input as a script: a scenario byte (which state and options the engine
//! under test starts from), then records `op, len, bytes…` applied in order — a segment from
//! the peer (fields taken from the bytes, sequence and acknowledgement numbers chosen relative
//! to what the engine last sent so that most segments land in or near the window, options
//! parsed from the bytes), time passing, an application call (send, urgent send, recv, peek,
//! shutdown, close, abort, option changes), an ICMP error, or an export/import round trip.
//! After every step the engine dispatches and its observable invariants are checked:
//! emitted segments are well formed and fit the wire format, `poll_at` is not in the past
//! after a dispatch that could send, queue lengths stay within the configured buffers. A panic
//! or a failed invariant is an engine bug; malformed input is only ever dropped.
//!
//! [`image`] feeds arbitrary bytes to `TcpConnection::import`: it must return an error or a
//! connection that works (dispatch, process, export again) — never panic.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use super::congestion::CongestionAlgorithm;
use super::connection::{
    ConnError, InitialSequence, ListenOutcome, Outgoing, TcpConfig, TcpConnection, TcpListener,
};
use super::isn::IsnGenerator;
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{TcpControl, TcpOptions, TcpRepr, TcpSeqNumber};

const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001);
const PEER_ISS: u32 = 0x8000_0000;

/// What the harness knows about the sequence space from the engine's own output.
#[derive(Default)]
struct PeerView {
    /// One past the highest sequence number the engine has sent.
    engine_next: Option<TcpSeqNumber>,
    /// The engine's latest acknowledgement (what it expects from the peer next).
    engine_ack: Option<TcpSeqNumber>,
    segments: usize,
}

fn observe(view: &mut PeerView, out: &Outgoing<'_>) {
    let repr = &out.repr;
    assert!(
        repr.payload.is_empty(),
        "Outgoing carries its payload in `payload`"
    );
    let len = out.payload[0].len() + out.payload[1].len();
    assert!(
        len <= 65_535 - 60,
        "segment payload {len} cannot fit an IPv4 datagram"
    );
    assert!(repr.header_len() <= 60, "header with options too long");
    assert!(!(repr.control.syn && repr.control.rst), "SYN+RST emitted");
    if repr.control.rst {
        assert_eq!(len, 0, "RST with data");
    }
    let seg_end =
        repr.seq_number + len + usize::from(repr.control.syn) + usize::from(repr.control.fin);
    view.engine_next = Some(match view.engine_next {
        Some(n) if n > seg_end => n,
        _ => seg_end,
    });
    if let Some(ack) = repr.ack_number {
        view.engine_ack = Some(ack);
    }
    view.segments += 1;
}

fn dispatch(conn: &mut TcpConnection, now: Instant, view: &mut PeerView, refuse: bool) {
    let mut emitted = 0usize;
    conn.dispatch(now, &mut |out| {
        observe(view, &out);
        emitted += 1;
        // Bound the work per step (a pathological script must not spin forever).
        assert!(
            emitted < 100_000,
            "dispatch emitted an unbounded number of segments"
        );
        if refuse {
            Err(super::connection::EmitError)
        } else {
            Ok(())
        }
    });
    if let Some(at) = conn.poll_at() {
        // After a dispatch that was allowed to send, nothing is still due now: a deadline at
        // or before `now` would make the caller's event loop spin.
        assert!(
            refuse || at > now,
            "poll_at {at} is not after now {now} right after dispatch"
        );
    }
    assert!(conn.recv_queue_len() <= conn.config().recv_buffer.max(1 << 20) * 2);
}

struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = bytes.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

fn config_for(scenario: u8) -> TcpConfig {
    TcpConfig {
        window_scaling: scenario & 1 != 0,
        sack: scenario & 2 != 0,
        timestamps: scenario & 4 != 0,
        nodelay: scenario & 8 != 0,
        recv_buffer: if scenario & 16 != 0 { 2048 } else { 65536 },
        send_buffer: if scenario & 16 != 0 { 2048 } else { 65536 },
        congestion: if scenario & 32 != 0 {
            CongestionAlgorithm::Reno
        } else {
            CongestionAlgorithm::Cubic
        },
        time_wait: Duration::from_secs(2),
        ..TcpConfig::default()
    }
}

/// A peer segment built from fuzz bytes, numbered relative to the engine's view.
fn peer_segment<'a>(bytes: &'a [u8], view: &PeerView) -> TcpRepr<'a> {
    let flags = bytes.first().copied().unwrap_or(0x10);
    let seq_mode = bytes.get(1).copied().unwrap_or(0);
    let delta = u32_at(bytes, 2);
    let ack_delta = u32_at(bytes, 6);
    let window = u16::from_le_bytes([
        bytes.get(10).copied().unwrap_or(0xff),
        bytes.get(11).copied().unwrap_or(0xff),
    ]);
    let opt_len = usize::from(bytes.get(12).copied().unwrap_or(0) % 41);
    let options_bytes = bytes.get(13..13 + opt_len).unwrap_or(&[]);
    let payload = bytes.get(13 + opt_len..).unwrap_or(&[]);
    let expected = view.engine_ack.unwrap_or(TcpSeqNumber(PEER_ISS));
    let seq_number = match seq_mode % 4 {
        0 => expected,
        1 => expected + (delta % 70_000) as usize,
        2 => expected - (delta % 70_000) as usize,
        _ => TcpSeqNumber(delta),
    };
    let engine_next = view.engine_next.unwrap_or(TcpSeqNumber(0));
    let ack_number = (flags & 0x10 != 0).then(|| match (seq_mode >> 2) % 4 {
        0 => engine_next,
        1 => engine_next - (ack_delta % 70_000) as usize,
        2 => engine_next + (ack_delta % 70_000) as usize,
        _ => TcpSeqNumber(ack_delta),
    });
    TcpRepr {
        src_port: REMOTE.port(),
        dst_port: LOCAL.port(),
        seq_number,
        ack_number,
        control: TcpControl {
            fin: flags & 0x01 != 0,
            syn: flags & 0x02 != 0,
            rst: flags & 0x04 != 0,
            psh: flags & 0x08 != 0,
            ece: flags & 0x40 != 0,
            cwr: flags & 0x80 != 0,
        },
        window_len: window,
        urgent_pointer: (flags & 0x20 != 0).then_some((delta >> 16) as u16),
        options: TcpOptions::parse(options_bytes).unwrap_or_default(),
        payload,
    }
}

/// Runs one fuzz script against the engine. See the module documentation.
pub fn engine(data: &[u8]) {
    let mut cur = Cursor { data };
    let Some(scenario) = cur.byte() else { return };
    let config = config_for(scenario);
    let mut now = Instant::from_secs(10);
    let mut view = PeerView::default();
    let initial = InitialSequence {
        iss: TcpSeqNumber(0xffff_f000),
        ts_offset: 12345,
    };

    // Start either active (SYN_SENT) or passive (a listener that receives a SYN).
    let mut conn = if scenario & 64 == 0 {
        TcpConnection::connect(config, LOCAL, REMOTE, initial, now)
    } else {
        let mut listener = TcpListener::new(config, LOCAL, IsnGenerator::new([7; 16]));
        let mut options = TcpOptions::default();
        let _ = options.push_aligned(crate::wire::tcp::TcpOption::MaxSegmentSize(1460));
        let syn = TcpRepr {
            src_port: REMOTE.port(),
            dst_port: LOCAL.port(),
            seq_number: TcpSeqNumber(PEER_ISS - 1),
            ack_number: None,
            control: TcpControl::SYN,
            window_len: 65535,
            urgent_pointer: None,
            options,
            payload: &[],
        };
        match listener.process(now, REMOTE, &syn) {
            ListenOutcome::Connection(conn) => *conn,
            ListenOutcome::Reset(_) | ListenOutcome::Dropped(_) => {
                panic!("a listener must accept a plain SYN")
            }
        }
    };
    dispatch(&mut conn, now, &mut view, false);
    if scenario & 128 != 0 && conn.state() == super::connection::State::SynSent {
        // Complete the handshake so most of the script exercises ESTABLISHED.
        let synack = TcpRepr {
            src_port: REMOTE.port(),
            dst_port: LOCAL.port(),
            seq_number: TcpSeqNumber(PEER_ISS - 1),
            ack_number: view.engine_next,
            control: TcpControl::SYN,
            window_len: 65535,
            urgent_pointer: None,
            options: TcpOptions::default(),
            payload: &[],
        };
        let _ = conn.process(now, &synack);
        dispatch(&mut conn, now, &mut view, false);
    }

    let mut buf = [0u8; 4096];
    let mut steps = 0;
    while let Some(op) = cur.byte() {
        steps += 1;
        if steps > 2000 {
            break;
        }
        let len = usize::from(cur.byte().unwrap_or(0));
        let bytes = cur.take(len);
        let mut refuse = false;
        match op % 12 {
            0..=3 => {
                let seg = peer_segment(bytes, &view);
                let _ = conn.process(now, &seg);
            }
            4 => now += Duration::from_micros(u64::from(u32_at(bytes, 0)) % 200_000_000),
            5 => {
                let _ = conn.send(bytes);
            }
            6 => {
                let _ = conn.recv(&mut buf[..len.max(1)]);
            }
            7 => match bytes.first().copied().unwrap_or(0) % 8 {
                0 => conn.shutdown_write(now),
                1 => conn.shutdown_read(),
                2 => conn.close(now),
                3 => conn.abort(now),
                4 => {
                    let _ = conn.send_urgent(bytes);
                }
                5 => {
                    let _ = conn.recv_urgent(bytes.len().is_multiple_of(2));
                    let _ = conn.peek(&mut buf[..64]);
                }
                6 => conn.set_nodelay(bytes.len().is_multiple_of(2)),
                _ => conn.set_cork(bytes.len().is_multiple_of(2), now),
            },
            8 => conn.on_icmp_frag_needed(
                now,
                u16::from_le_bytes([
                    bytes.first().copied().unwrap_or(0),
                    bytes.get(1).copied().unwrap_or(0),
                ]),
                view.engine_ack
                    .map_or(TcpSeqNumber(0), |_| TcpSeqNumber(u32_at(bytes, 2))),
            ),
            9 => conn.on_icmp_unreachable(now, ConnError::HostUnreachable),
            10 => {
                let image = conn.export(now);
                let later = now + Duration::from_micros(u64::from(u32_at(bytes, 0) % 1_000_000));
                conn = match TcpConnection::import(&image, later) {
                    Ok(c) => c,
                    Err(e) => panic!("an engine's own image must import: {e}"),
                };
                now = later;
            }
            _ => refuse = true,
        }
        dispatch(&mut conn, now, &mut view, refuse);
        let _ = conn.readiness();
        let _ = conn.take_error();
        let _ = conn.info(now);
    }
    // Let every timer run out: the engine must terminate in bounded steps.
    for _ in 0..64 {
        let Some(at) = conn.poll_at() else { break };
        now = at.max(now) + Duration::from_micros(1);
        dispatch(&mut conn, now, &mut view, false);
    }
}

/// Arbitrary bytes as a state image.
pub fn image(data: &[u8]) {
    let now = Instant::from_secs(100);
    let Ok(mut conn) = TcpConnection::import(data, now) else {
        return;
    };
    let mut view = PeerView::default();
    dispatch(&mut conn, now, &mut view, false);
    let seg = peer_segment(&[0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0], &view);
    let _ = conn.process(now, &seg);
    let mut buf = [0u8; 512];
    let _ = conn.recv(&mut buf);
    let _ = conn.send(b"fuzz");
    let later = now + Duration::from_secs(1);
    dispatch(&mut conn, later, &mut view, false);
    // A mutated image can hold a state the import's checks accept but the engine never
    // produces itself; the engine must survive it (no panic) and its re-export must either
    // import or be refused cleanly. Known gap: the import does not yet reject every such state
    // (see docs/notes/design.md, "TCP engine").
    let again = conn.export(later);
    let _ = TcpConnection::import(&again, later);
}

/// Images of connections in several states (handshake done, data queued both ways, out-of-order
/// data held, FIN sent), for seeding the image fuzzer and mutation tests.
pub fn sample_images() -> Vec<Vec<u8>> {
    let mut images = Vec::new();
    for scenario in [0x87u8, 0xC7, 0x80, 0x9F] {
        let config = config_for(scenario);
        let now = Instant::from_secs(10);
        let mut view = PeerView::default();
        let mut conn = TcpConnection::connect(
            config,
            LOCAL,
            REMOTE,
            InitialSequence {
                iss: TcpSeqNumber(0xffff_f000),
                ts_offset: 1,
            },
            now,
        );
        dispatch(&mut conn, now, &mut view, false);
        images.push(conn.export(now));
        let synack = TcpRepr {
            src_port: REMOTE.port(),
            dst_port: LOCAL.port(),
            seq_number: TcpSeqNumber(PEER_ISS - 1),
            ack_number: view.engine_next,
            control: TcpControl::SYN,
            window_len: 65535,
            urgent_pointer: None,
            options: TcpOptions::default(),
            payload: &[],
        };
        let _ = conn.process(now, &synack);
        let _ = conn.send(&[0x42; 5000]);
        dispatch(&mut conn, now, &mut view, false);
        let ooo = peer_segment(
            &[
                0x18, 1, 100, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 1, 2, 3, 4, 5,
            ],
            &view,
        );
        let _ = conn.process(now, &ooo);
        dispatch(&mut conn, now, &mut view, false);
        images.push(conn.export(now));
        conn.shutdown_write(now);
        dispatch(&mut conn, now, &mut view, false);
        images.push(conn.export(now));
    }
    images
}
