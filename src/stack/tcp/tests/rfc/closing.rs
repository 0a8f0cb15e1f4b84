//! Ending connections: half-close (RFC 9293 §3.6), keepalive (RFC 1122 §4.2.3.6, Linux
//! probes), SO_LINGER and close with unread data (RFC 2525 / Linux `tcp_close`), TIME_WAIT
//! (2·MSL, RFC 1337 as Linux's default `tcp_rfc1337 = 0`), and RSTs for segments that reach no
//! connection (RFC 9293 §3.10.7.1).

use super::*;
use crate::stack::tcp::connection::{ConnError, SendError, TcpDropReason, Verdict, reset_for};

fn fin(off: usize, ack: usize, payload: &[u8]) -> TcpRepr<'_> {
    TcpRepr {
        control: TcpControl::FIN,
        ..seg(off, ack, payload)
    }
}

// ----- half-close -------------------------------------------------------------------------

#[test]
fn shutdown_write_sends_fin_and_keeps_receiving_in_fin_wait_2() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, 10);
    fx.conn.shutdown_write(fx.now);
    let out = fx.out();
    let last = out.last().expect("segments");
    assert!(last.flags().fin, "FIN after the data: {out:#?}");
    assert_eq!(last.seq() + last.payload.len(), snd(10));
    assert_eq!(fx.conn.send(b"more"), Err(SendError::Shutdown));
    fx.send(&seg(0, 11, &[]));
    assert_eq!(fx.state(), State::FinWait2);
    // The peer keeps sending; we keep reading and acknowledging.
    for i in 0..3 {
        assert_eq!(
            fx.send(&seg(i * 100, 11, &pattern(i * 100, 100))),
            Verdict::Accepted
        );
        let out = fx.out();
        assert!(out.iter().any(|s| is_ack_of(s, (i + 1) * 100)), "{out:#?}");
    }
    let mut buf = [0u8; 400];
    assert_eq!(fx.conn.recv(&mut buf), Ok(300));
    assert_eq!(&buf[..300], &pattern(0, 300)[..]);
    assert_eq!(fx.state(), State::FinWait2);
}

#[test]
fn peer_half_close_gives_eof_after_data_and_sending_still_works() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.send(&fin(0, 0, b"request"));
    assert_eq!(fx.state(), State::CloseWait);
    let out = fx.out();
    assert!(is_ack_of(&out[0], 8), "the FIN takes one sequence number");
    let mut buf = [0u8; 32];
    assert_eq!(fx.conn.recv(&mut buf), Ok(7));
    assert_eq!(&buf[..7], b"request");
    assert_eq!(fx.conn.recv(&mut buf), Ok(0), "EOF");
    assert!(fx.conn.readiness().read_hup);
    assert_eq!(fx.conn.send(b"response"), Ok(8));
    let out = fx.out();
    assert_eq!(spans(&out), vec![(0, 8)]);
    assert_eq!(out[0].ack(), Some(rcv(8)));
    fx.send(&seg(8, 8, &[]));
    assert_eq!(fx.state(), State::CloseWait);
    assert_eq!(fx.conn.send_queue_len(), 0);
}

// ----- keepalive --------------------------------------------------------------------------

fn keepalive_config() -> TcpConfig {
    TcpConfig {
        keepalive: true,
        keepalive_idle: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(1),
        keepalive_count: 3,
        ..TcpConfig::default()
    }
}

#[test]
fn keepalive_probe_after_idle_and_answer_resets_the_timer() {
    let mut fx = open(keepalive_config(), PeerOpts::PLAIN);
    let idle_end = fx.now + Duration::from_secs(10);
    assert_eq!(fx.conn.poll_at(), Some(idle_end));
    assert!(out_at(&mut fx, idle_end - Duration::from_micros(1)).is_empty());
    let out = out_at(&mut fx, idle_end);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].seq(), snd(0) - 1, "probe SEQ = SND.UNA − 1");
    assert!(out[0].payload.is_empty(), "Linux probes carry no data");
    assert_eq!(out[0].ack(), Some(rcv(0)));
    assert_eq!(fx.conn.poll_at(), Some(idle_end + Duration::from_secs(1)));
    // The peer answers: idle again for a full keepalive_idle.
    fx.advance(Duration::from_millis(5));
    assert_eq!(fx.send(&seg(0, 0, &[])), Verdict::Accepted);
    assert!(fx.out().is_empty());
    assert_eq!(fx.conn.poll_at(), Some(fx.now + Duration::from_secs(10)));
}

#[test]
fn keepalive_unanswered_times_out_with_rst() {
    let mut fx = open(keepalive_config(), PeerOpts::PLAIN);
    let mut probes = 0;
    loop {
        let at = fx.conn.poll_at().expect("keepalive timer");
        let out = out_at(&mut fx, at);
        if fx.state() == State::Closed {
            assert_eq!(out.len(), 1, "{out:#?}");
            assert!(out[0].flags().rst, "Linux resets the dead connection");
            assert_eq!(out[0].seq(), snd(0));
            break;
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq(), snd(0) - 1);
        probes += 1;
        assert!(probes <= 3);
    }
    assert_eq!(probes, 3, "keepalive_count probes");
    assert_eq!(fx.conn.take_error(), Some(ConnError::TimedOut));
}

#[test]
fn keepalive_off_arms_no_timer() {
    let fx = plain();
    assert_eq!(fx.conn.poll_at(), None);
}

// ----- close / linger ---------------------------------------------------------------------

#[test]
fn linger_zero_close_sends_rst() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.conn.set_linger(Some(Duration::ZERO));
    queue(&mut fx, 0, 100);
    let _ = fx.out();
    fx.conn.close(fx.now);
    assert_eq!(fx.state(), State::Closed);
    let out = fx.out();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(out[0].flags().rst && !out[0].flags().fin);
    assert_eq!(out[0].seq(), snd(100));
}

#[test]
fn close_with_unread_data_sends_rst() {
    let mut fx = plain();
    fx.send(&seg(0, 0, b"unread"));
    let _ = fx.out();
    fx.conn.close(fx.now);
    assert_eq!(fx.state(), State::Closed);
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(out[0].flags().rst);
    assert_eq!(out[0].seq(), snd(0));
}

#[test]
fn graceful_close_delivers_queued_data_then_fin() {
    let mut fx = plain();
    // A peer window of 1000 bytes: the data needs several rounds before the FIN.
    fx.send(&TcpRepr {
        window_len: 1000,
        ..seg(0, 0, &[])
    });
    queue(&mut fx, 0, 1000);
    let out = fx.out();
    assert_eq!(spans(&out), vec![(0, 1000)]);
    queue(&mut fx, 1000, 1000);
    fx.conn.close(fx.now);
    assert_eq!(fx.state(), State::FinWait1);
    assert!(
        fx.out().iter().all(|s| !s.flags().fin && !s.flags().rst),
        "window closed"
    );
    fx.send(&TcpRepr {
        window_len: 1000,
        ..seg(0, 1000, &[])
    });
    let out = fx.out();
    assert_eq!(spans(&out), vec![(1000, 1000)]);
    let last = out.last().expect("data");
    assert!(last.flags().fin, "FIN rides on the last segment");
    fx.send(&seg(0, 2001, &[]));
    assert_eq!(fx.state(), State::FinWait2);
}

// ----- TIME_WAIT --------------------------------------------------------------------------

fn time_wait(d: Duration) -> Fx {
    let config = TcpConfig {
        time_wait: d,
        ..TcpConfig::default()
    };
    let mut fx = open(config, PeerOpts::PLAIN);
    fx.conn.shutdown_write(fx.now);
    let _ = fx.out();
    fx.send(&fin(0, 1, &[]));
    assert_eq!(fx.state(), State::TimeWait);
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 1));
    fx
}

#[test]
fn time_wait_lasts_config_time_wait() {
    let mut fx = time_wait(Duration::from_secs(5));
    let end = fx.now + Duration::from_secs(5);
    assert_eq!(fx.conn.poll_at(), Some(end));
    let _ = out_at(&mut fx, end - Duration::from_micros(1));
    assert_eq!(fx.state(), State::TimeWait);
    let _ = out_at(&mut fx, end);
    assert_eq!(fx.state(), State::Closed);
}

#[test]
fn time_wait_default_is_60_seconds() {
    let fx = time_wait(TcpConfig::default().time_wait);
    assert_eq!(fx.conn.poll_at(), Some(fx.now + Duration::from_secs(60)));
}

#[test]
fn time_wait_reacks_a_retransmitted_fin_and_restarts() {
    let mut fx = time_wait(Duration::from_secs(5));
    fx.advance(Duration::from_secs(3));
    let _ = fx.send(&fin(0, 1, &[]));
    let out = fx.out();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(is_ack_of(&out[0], 1));
    assert_eq!(fx.conn.poll_at(), Some(fx.now + Duration::from_secs(5)));
    assert_eq!(fx.state(), State::TimeWait);
}

#[test]
fn rst_in_time_wait_closes_as_linux_default() {
    let mut fx = time_wait(Duration::from_secs(5));
    let rst = TcpRepr {
        seq_number: rcv(1),
        control: TcpControl::RST,
        ..SEND_TEMPL
    };
    assert_eq!(fx.send(&rst), Verdict::Accepted);
    assert_eq!(
        fx.state(),
        State::Closed,
        "tcp_rfc1337 = 0: RST kills TIME_WAIT"
    );
    assert!(fx.out().is_empty());
}

#[test]
fn data_in_time_wait_is_not_accepted() {
    let mut fx = time_wait(Duration::from_secs(5));
    let _ = fx.send(&seg(1, 1, b"late"));
    assert_eq!(fx.conn.recv_queue_len(), 0);
    assert_eq!(fx.state(), State::TimeWait);
}

// ----- resets for closed ports ------------------------------------------------------------

#[test]
fn reset_for_a_segment_with_ack_takes_seq_from_it() {
    let s = TcpRepr {
        seq_number: TcpSeqNumber(777),
        ack_number: Some(TcpSeqNumber(1234)),
        payload: b"data",
        ..SEND_TEMPL
    };
    let r = reset_for(&s).expect("RST");
    assert!(r.control.rst);
    assert_eq!(r.seq_number, TcpSeqNumber(1234));
    assert_eq!(r.ack_number, None);
    assert_eq!((r.src_port, r.dst_port), (s.dst_port, s.src_port));
    assert!(r.payload.is_empty());
}

#[test]
fn reset_for_a_segment_without_ack_acknowledges_it() {
    let s = TcpRepr {
        seq_number: TcpSeqNumber(100),
        control: TcpControl {
            syn: true,
            fin: true,
            ..TcpControl::NONE
        },
        payload: b"0123456789",
        ..SEND_TEMPL
    };
    let r = reset_for(&s).expect("RST");
    assert_eq!(r.seq_number, TcpSeqNumber(0));
    assert_eq!(
        r.ack_number,
        Some(TcpSeqNumber(112)),
        "SEQ + 10 bytes + SYN + FIN"
    );
    let plain_syn = TcpRepr {
        seq_number: TcpSeqNumber(u32::MAX),
        control: TcpControl::SYN,
        ..SEND_TEMPL
    };
    assert_eq!(
        reset_for(&plain_syn).and_then(|r| r.ack_number),
        Some(TcpSeqNumber(0)),
        "wraps"
    );
}

#[test]
fn no_reset_answers_a_reset() {
    for ack in [None, Some(TcpSeqNumber(5))] {
        let s = TcpRepr {
            control: TcpControl::RST,
            ack_number: ack,
            ..SEND_TEMPL
        };
        assert!(reset_for(&s).is_none());
    }
}

#[test]
fn closed_connection_answers_with_rst() {
    let mut fx = plain();
    fx.conn.abort(fx.now);
    let _ = fx.out();
    assert_eq!(
        fx.send(&seg(0, 0, b"late")),
        Verdict::Dropped(TcpDropReason::NoConnection)
    );
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(out[0].flags().rst);
    assert_eq!(out[0].seq(), snd(0), "SEQ = SEG.ACK");
    // But not to an RST.
    let rst = TcpRepr {
        control: TcpControl::RST,
        ..seg(0, 0, &[])
    };
    let _ = fx.send(&rst);
    assert!(fx.out().is_empty());
}
