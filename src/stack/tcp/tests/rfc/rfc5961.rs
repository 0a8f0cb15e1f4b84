//! RFC 5961: blind RST, SYN and data injection.

use super::*;
use crate::stack::tcp::connection::{ConnError, RecvError, TcpDropReason, Verdict};

fn rst_at(seq: TcpSeqNumber) -> TcpRepr<'static> {
    TcpRepr {
        seq_number: seq,
        control: TcpControl::RST,
        ..SEND_TEMPL
    }
}

#[test]
fn rst_exactly_at_rcv_nxt_resets() {
    let mut fx = plain();
    // Move RCV.NXT so "exact" is not the handshake value.
    assert_eq!(fx.send(&seg(0, 0, &[1; 100])), Verdict::Accepted);
    let _ = fx.out();
    // The old RCV.NXT is now left of the window: ignored.
    assert_eq!(
        fx.send(&rst_at(rcv(0))),
        Verdict::Dropped(TcpDropReason::RstOutOfWindow)
    );
    assert_eq!(fx.state(), State::Established);
    assert_eq!(fx.send(&rst_at(rcv(100))), Verdict::Accepted);
    assert_eq!(fx.state(), State::Closed);
    assert!(fx.out().is_empty(), "no reply to an RST");
    assert_eq!(fx.conn.take_error(), Some(ConnError::Reset));
}

#[test]
fn rst_in_window_but_not_exact_gets_challenge_ack_and_keeps_state() {
    let mut fx = plain();
    assert_eq!(
        fx.send(&rst_at(rcv(1000))),
        Verdict::Dropped(TcpDropReason::ChallengeAck)
    );
    assert_eq!(fx.state(), State::Established);
    let out = fx.out();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(
        is_ack_of(&out[0], 0),
        "challenge ACK = <SEQ=SND.NXT><ACK=RCV.NXT>"
    );
    assert_eq!(out[0].seq(), snd(0));
    assert_eq!(fx.conn.stats().challenge_acks, 1);
    assert_eq!(fx.conn.take_error(), None);
    // The connection still works.
    assert_eq!(fx.send(&seg(0, 0, b"ok")), Verdict::Accepted);
    assert_eq!(fx.conn.recv_queue_len(), 2);
}

#[test]
fn rst_out_of_window_is_dropped_silently() {
    let mut fx = plain();
    for seq in [rcv(0) - 1, rcv(0) + 10_000_000, rcv(300_000)] {
        assert_eq!(
            fx.send(&rst_at(seq)),
            Verdict::Dropped(TcpDropReason::RstOutOfWindow)
        );
        assert!(fx.out().is_empty(), "silent drop for {seq}");
    }
    assert_eq!(fx.state(), State::Established);
    assert_eq!(fx.conn.stats().dropped(TcpDropReason::RstOutOfWindow), 3);
}

#[test]
fn syn_in_established_gets_challenge_ack() {
    let mut fx = plain();
    let syn = TcpRepr {
        seq_number: rcv(500),
        control: TcpControl::SYN,
        ..SEND_TEMPL
    };
    assert_eq!(fx.send(&syn), Verdict::Dropped(TcpDropReason::SynInWindow));
    assert_eq!(fx.state(), State::Established);
    let out = fx.out();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(is_ack_of(&out[0], 0));
    assert_eq!(fx.conn.stats().challenge_acks, 1);
    // RFC 5961 §4.2: no RST, no reset of the connection.
    assert!(!out[0].flags().rst);
    assert_eq!(fx.conn.take_error(), None);
}

#[test]
fn data_with_ack_of_unsent_data_is_dropped_and_acked() {
    let mut fx = plain();
    let bad = seg(0, 5000, b"injected");
    assert_eq!(fx.send(&bad), Verdict::Dropped(TcpDropReason::BadAck));
    assert_eq!(fx.conn.recv_queue_len(), 0, "data discarded");
    let out = fx.out();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(is_ack_of(&out[0], 0));
}

#[test]
fn data_with_ack_too_far_behind_is_dropped_and_acked() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    // Send and have acknowledged 1000 bytes: SND.UNA = snd(1000), MAX.SND.WND = 65535.
    queue(&mut fx, 0, 1000);
    assert_eq!(spans(&fx.out()), vec![(0, 1000)]);
    assert_eq!(fx.send(&seg(0, 1000, &[])), Verdict::Accepted);
    let _ = fx.out();
    // Still acceptable: exactly SND.UNA − MAX.SND.WND.
    let edge = TcpRepr {
        ack_number: Some(snd(1000) - usize::from(PEER_WINDOW)),
        ..seg(0, 0, b"a")
    };
    assert_eq!(fx.send(&edge), Verdict::Accepted);
    assert_eq!(fx.conn.recv_queue_len(), 1);
    let _ = fx.out();
    // One further back: discarded, answered with an ACK.
    let old = TcpRepr {
        ack_number: Some(snd(1000) - usize::from(PEER_WINDOW) - 1),
        ..seg(1, 0, b"b")
    };
    assert_eq!(fx.send(&old), Verdict::Dropped(TcpDropReason::BadAck));
    assert_eq!(
        fx.conn.recv_queue_len(),
        1,
        "data of the bad segment discarded"
    );
    let out = fx.out();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(is_ack_of(&out[0], 1));
}

#[test]
fn challenge_acks_are_rate_limited_and_the_budget_refills() {
    let mut fx = plain();
    let mut acks = 0;
    for i in 0..300 {
        let v = fx.send(&rst_at(rcv(1000 + i)));
        assert_eq!(v, Verdict::Dropped(TcpDropReason::ChallengeAck));
        acks += fx.out().len();
    }
    assert!(acks >= 1, "at least one challenge ACK");
    assert!(acks < 300, "challenge ACKs are limited: {acks} of 300");
    assert!(acks <= 1000, "Linux budget at most");
    assert_eq!(fx.conn.stats().challenge_acks, acks as u64);
    // A second later the budget is back.
    fx.advance(Duration::from_secs(1));
    let _ = fx.send(&rst_at(rcv(1000)));
    assert_eq!(fx.out().len(), 1, "budget refilled after a second");
    assert_eq!(fx.state(), State::Established);
}

#[test]
fn blind_data_outside_window_does_not_corrupt_the_stream() {
    let mut fx = plain();
    // Data far left and far right of the window: ACKed, never delivered.
    let v = fx.send(&seg(0, 0, b"real"));
    assert_eq!(v, Verdict::Accepted);
    let _ = fx.out();
    let right = TcpRepr {
        seq_number: rcv(0) + 1_000_000_000,
        ..seg(0, 0, b"xxxx")
    };
    assert_eq!(
        fx.send(&right),
        Verdict::Dropped(TcpDropReason::OutOfWindow)
    );
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 4));
    let mut buf = [0u8; 16];
    assert_eq!(fx.conn.recv(&mut buf), Ok(4));
    assert_eq!(&buf[..4], b"real");
    assert_eq!(fx.conn.recv(&mut buf), Err(RecvError::WouldBlock));
}
