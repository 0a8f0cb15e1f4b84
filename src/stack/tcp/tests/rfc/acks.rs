//! Delayed ACK (RFC 9293 §3.8.6.3, RFC 5681 §4.2; Linux quick-ACK at start, 40 ms minimum).

use super::*;

#[test]
fn first_segments_are_acked_at_once_in_quickack_mode() {
    let mut fx = plain();
    fx.send(&seg(0, 0, &pattern(0, MSS)));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], MSS));
}

#[test]
fn one_full_segment_is_acked_by_the_delayed_ack_timer() {
    let mut fx = plain();
    let b = leave_quickack(&mut fx, 0);
    let t = fx.now;
    fx.send(&seg(b, 0, &pattern(b, MSS)));
    let out = fx.out();
    assert!(out.is_empty(), "not at once: {out:#?}");
    let at = fx.conn.poll_at().expect("delayed-ACK timer");
    assert_eq!(
        at,
        t + Duration::from_millis(40),
        "ATO = 40 ms (SRTT/2 is smaller)"
    );
    assert!(out_at(&mut fx, at - Duration::from_micros(1)).is_empty());
    let out = out_at(&mut fx, at);
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], b + MSS));
    assert_eq!(fx.conn.poll_at(), None, "nothing else pending");
}

#[test]
fn two_full_segments_are_acked_at_once() {
    let mut fx = plain();
    let b = leave_quickack(&mut fx, 0);
    fx.send(&seg(b, 0, &pattern(b, MSS)));
    let out = fx.out();
    assert!(out.is_empty(), "{out:#?}");
    fx.send(&seg(b + MSS, 0, &pattern(b + MSS, MSS)));
    let out = fx.out();
    assert_eq!(out.len(), 1, "every second full segment");
    assert!(is_ack_of(&out[0], b + 2 * MSS));
}

#[test]
fn ack_rides_on_outgoing_data() {
    let mut fx = plain();
    let b = leave_quickack(&mut fx, 0);
    fx.send(&seg(b, 0, b"question"));
    let out = fx.out();
    assert!(out.is_empty(), "ACK delayed: {out:#?}");
    assert_eq!(fx.conn.send(b"answer"), Ok(6));
    let out = fx.out();
    assert_eq!(out.len(), 1, "no separate pure ACK: {out:#?}");
    assert_eq!(out[0].payload, b"answer");
    assert_eq!(out[0].ack(), Some(rcv(b + 8)));
    // The delayed-ACK timer is gone; only the retransmission timer remains.
    assert_eq!(fx.conn.poll_at(), Some(fx.now + Duration::from_millis(200)));
}

#[test]
fn delayed_ack_is_bounded_by_the_maximum() {
    // A 1 s RTT would suggest a 500 ms ATO; Linux caps it at 200 ms.
    let conn = TcpConnection::connect(TcpConfig::default(), LOCAL, REMOTE, initial(), T0);
    let mut fx = Fx { conn, now: T0 };
    let _ = fx.out();
    fx.advance(Duration::from_millis(900));
    fx.send(&TcpRepr {
        seq_number: REMOTE_ISS,
        ack_number: Some(LOCAL_ISS + 1),
        control: TcpControl::SYN,
        options: syn_options(PeerOpts::PLAIN),
        ..SEND_TEMPL
    });
    let _ = fx.out();
    let b = leave_quickack(&mut fx, 0);
    let t = fx.now;
    fx.send(&seg(b, 0, &pattern(b, 100)));
    let out = fx.out();
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(fx.conn.poll_at(), Some(t + Duration::from_millis(200)));
}
