//! Bad input: malformed options stop at the wire parser; odd flag combinations and impossible
//! acknowledgements are dropped or answered as RFC 9293 says, counted by `TcpDropReason`, and
//! never panic or corrupt the connection.

use std::net::Ipv4Addr;

use super::super::fixtures::{listen, syn_sent};
use super::*;
use crate::stack::tcp::connection::{ListenOutcome, TcpDropReason, Verdict};
use crate::wire::tcp::TcpPacket;

// ----- wire -------------------------------------------------------------------------------

fn header_with_options(options: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[0..2].copy_from_slice(&5001u16.to_be_bytes());
    b[2..4].copy_from_slice(&40000u16.to_be_bytes());
    b[12] = (((20 + options.len()) / 4) as u8) << 4;
    b[13] = 0x10; // ACK
    b[14..16].copy_from_slice(&1000u16.to_be_bytes());
    b.extend_from_slice(options);
    b
}

#[test]
fn malformed_options_never_reach_the_engine() {
    let src = Ipv4Addr::new(198, 18, 0, 2);
    let dst = Ipv4Addr::new(198, 18, 0, 1);
    for options in [
        &[2u8, 0, 0, 0][..],        // length 0
        &[2, 1, 0, 0],              // length 1
        &[3, 10, 0, 0],             // overruns the header
        &[1, 1, 1, 2],              // length byte missing
        &[2, 3, 5, 0],              // MSS of the wrong length
        &[8, 10, 0, 0, 0, 0, 0, 0], // timestamps overrunning
    ] {
        let bytes = header_with_options(options);
        let packet = TcpPacket::new_unchecked(&bytes[..]);
        assert!(
            TcpRepr::parse(&packet, src, dst).is_err(),
            "options {options:?} must be rejected"
        );
    }
}

// ----- listener ---------------------------------------------------------------------------

#[test]
fn listener_drops_syn_fin() {
    let mut l = listen();
    let s = TcpRepr {
        seq_number: REMOTE_ISS,
        control: TcpControl {
            syn: true,
            fin: true,
            ..TcpControl::NONE
        },
        ..SEND_TEMPL
    };
    assert!(matches!(
        l.process(T0, REMOTE, &s),
        ListenOutcome::Dropped(TcpDropReason::BadSyn)
    ));
}

#[test]
fn listener_ignores_syn_rst_and_rst() {
    let mut l = listen();
    for control in [
        TcpControl {
            syn: true,
            rst: true,
            ..TcpControl::NONE
        },
        TcpControl::RST,
    ] {
        let s = TcpRepr {
            seq_number: REMOTE_ISS,
            control,
            ..SEND_TEMPL
        };
        assert!(matches!(
            l.process(T0, REMOTE, &s),
            ListenOutcome::Dropped(TcpDropReason::NoConnection)
        ));
    }
}

#[test]
fn listener_answers_an_ack_with_rst() {
    let mut l = listen();
    let s = TcpRepr {
        seq_number: REMOTE_ISS,
        ack_number: Some(TcpSeqNumber(4242)),
        control: TcpControl::SYN,
        ..SEND_TEMPL
    };
    match l.process(T0, REMOTE, &s) {
        ListenOutcome::Reset(r) => {
            assert!(r.control.rst);
            assert_eq!(r.seq_number, TcpSeqNumber(4242));
        }
        other => panic!("want RST, got {other:?}"),
    }
}

#[test]
fn listener_drops_a_segment_without_syn() {
    let mut l = listen();
    let s = TcpRepr {
        seq_number: REMOTE_ISS,
        payload: b"data",
        ..SEND_TEMPL
    };
    assert!(matches!(
        l.process(T0, REMOTE, &s),
        ListenOutcome::Dropped(_)
    ));
}

// ----- SYN_SENT ---------------------------------------------------------------------------

#[test]
fn data_without_ack_in_syn_sent_is_dropped() {
    let mut fx = syn_sent();
    let s = TcpRepr {
        seq_number: REMOTE_ISS,
        payload: b"early",
        ..SEND_TEMPL
    };
    assert_eq!(fx.send(&s), Verdict::Dropped(TcpDropReason::NoAck));
    assert_eq!(fx.state(), State::SynSent);
    assert!(fx.out().is_empty(), "no reply");
    assert_eq!(fx.conn.stats().dropped(TcpDropReason::NoAck), 1);
}

#[test]
fn ack_of_unsent_data_in_syn_sent_is_answered_with_rst() {
    let mut fx = syn_sent();
    let s = TcpRepr {
        seq_number: REMOTE_ISS,
        ack_number: Some(LOCAL_ISS + 100),
        control: TcpControl::SYN,
        ..SEND_TEMPL
    };
    assert_eq!(fx.send(&s), Verdict::Dropped(TcpDropReason::BadAck));
    assert_eq!(fx.state(), State::SynSent);
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(out[0].flags().rst);
    assert_eq!(out[0].seq(), LOCAL_ISS + 100, "<SEQ=SEG.ACK><CTL=RST>");
}

// ----- ESTABLISHED ------------------------------------------------------------------------

#[test]
fn syn_rst_in_window_but_not_exact_is_challenged() {
    let mut fx = plain();
    let s = TcpRepr {
        seq_number: rcv(10),
        control: TcpControl {
            syn: true,
            rst: true,
            ..TcpControl::NONE
        },
        ..SEND_TEMPL
    };
    assert_eq!(fx.send(&s), Verdict::Dropped(TcpDropReason::ChallengeAck));
    assert_eq!(fx.state(), State::Established);
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 0));
}

#[test]
fn pure_ack_of_unsent_data_is_dropped_and_acked() {
    let mut fx = plain();
    assert_eq!(
        fx.send(&seg(0, 1, &[])),
        Verdict::Dropped(TcpDropReason::BadAck)
    );
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 0));
    assert_eq!(out[0].seq(), snd(0));
    assert_eq!(fx.conn.stats().dropped(TcpDropReason::BadAck), 1);
}

#[test]
fn segment_without_ack_in_established_is_dropped() {
    let mut fx = plain();
    let s = TcpRepr {
        seq_number: rcv(0),
        payload: b"noack",
        ..SEND_TEMPL
    };
    assert_eq!(fx.send(&s), Verdict::Dropped(TcpDropReason::NoAck));
    assert_eq!(fx.conn.recv_queue_len(), 0);
}

#[test]
fn segment_for_other_ports_is_dropped() {
    let mut fx = plain();
    let s = TcpRepr {
        dst_port: 1,
        ..seg(0, 0, b"x")
    };
    assert_eq!(fx.send(&s), Verdict::Dropped(TcpDropReason::WrongPorts));
    assert_eq!(fx.conn.recv_queue_len(), 0);
}

#[test]
fn syn_fin_in_established_is_challenged_not_acted_on() {
    let mut fx = plain();
    let s = TcpRepr {
        control: TcpControl {
            syn: true,
            fin: true,
            ..TcpControl::NONE
        },
        ..seg(0, 0, &[])
    };
    assert_eq!(fx.send(&s), Verdict::Dropped(TcpDropReason::SynInWindow));
    assert_eq!(fx.state(), State::Established, "the FIN is not taken");
    assert!(is_ack_of(&fx.out()[0], 0));
}

/// A deterministic stream of odd segments (xorshift): random flag combinations, sequence and
/// acknowledgement numbers near and far from the windows, payloads, urgent pointers, SACK and
/// timestamp options. Every drop must be counted under its reason, output stays well formed,
/// and the connection still exports and imports.
#[test]
fn scrambled_segments_are_counted_and_never_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let payload = pattern(0, 2000);
    for round in 0..6 {
        let mut fx = match round {
            0 => plain(),
            1 => open(TcpConfig::default(), PeerOpts::ALL),
            2 => syn_sent(),
            3 => {
                let mut fx = open(nodelay(), PeerOpts::SACK);
                queue(&mut fx, 0, 20_000);
                let _ = fx.out();
                fx
            }
            4 => {
                let mut fx = plain();
                fx.conn.shutdown_write(fx.now);
                fx
            }
            _ => {
                let mut fx = open(TcpConfig::default(), PeerOpts::TS);
                fx.send(&with_ts(
                    TcpRepr {
                        control: TcpControl::FIN,
                        ..seg(0, 0, &[])
                    },
                    PEER_TS0 + 1,
                    0,
                ));
                fx
            }
        };
        for _ in 0..3000 {
            let r = next();
            let near = (r >> 8) % 4 != 0;
            let seq = if near {
                rcv(((r >> 16) % 70_000) as usize) - 1000
            } else {
                TcpSeqNumber((r >> 20) as u32)
            };
            let ack = match (r >> 40) % 4 {
                0 => None,
                1 => Some(TcpSeqNumber((r >> 24) as u32)),
                _ => Some(snd(((r >> 44) % 25_000) as usize) - 1000),
            };
            let control = TcpControl {
                syn: r & 1 != 0 && r & 0x30 == 0,
                fin: r & 2 != 0 && r & 0xc0 == 0,
                rst: r & 4 != 0 && r & 0x700 == 0,
                psh: r & 8 != 0,
                ..TcpControl::NONE
            };
            let len = ((r >> 50) % 1500) as usize * usize::from(r & 0x800 != 0);
            let mut s = TcpRepr {
                seq_number: seq,
                ack_number: ack,
                control,
                window_len: (r >> 33) as u16,
                urgent_pointer: (r & 0x1000 != 0).then_some((r >> 12) as u16),
                payload: &payload[..len],
                ..SEND_TEMPL
            };
            if r & 0x2000 != 0 {
                s = with_ts(s, PEER_TS0.wrapping_add((r >> 30) as u32 % 100_000), 0);
            }
            if r & 0x4000 != 0 {
                s = with_sack(
                    s,
                    &[(
                        ((r >> 20) % 30_000) as usize,
                        ((r >> 20) % 30_000) as usize + 100,
                    )],
                );
            }
            let before = fx.conn.stats().clone();
            let v = fx.send(&s);
            if let Verdict::Dropped(reason) = v {
                assert!(
                    fx.conn.stats().dropped(reason) > before.dropped(reason),
                    "{reason:?} not counted"
                );
            }
            fx.advance(Duration::from_millis((r >> 58) % 50));
            for o in fx.out() {
                assert_eq!(
                    (o.repr.src_port, o.repr.dst_port),
                    (LOCAL.port(), REMOTE.port())
                );
                assert!(o.payload.len() <= 1460);
                assert!(!o.flags().rst || o.payload.is_empty(), "no data on an RST");
            }
            let mut buf = [0u8; 512];
            let _ = fx.conn.recv(&mut buf);
        }
        let image = fx.conn.export(fx.now);
        let back = TcpConnection::import(&image, fx.now).expect("state stays importable");
        assert_eq!(back.state(), fx.state());
    }
}
