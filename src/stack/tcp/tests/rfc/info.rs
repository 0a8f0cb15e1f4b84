//! TCP_INFO: the fields programs read (`ss -ti`, monitoring agents).

use super::*;
use crate::stack::tcp::info::{
    LINUX_TCP_INFO_LEN, TCPI_OPT_SACK, TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE,
};

#[test]
fn info_after_handshake_reports_state_options_scales_and_rtt() {
    let peer = PeerOpts {
        wscale: Some(9),
        ..PeerOpts::ALL
    };
    let fx = open(TcpConfig::default(), peer);
    let info = fx.conn.info(fx.now);
    assert_eq!(info.state, 1, "TCP_ESTABLISHED");
    assert_eq!(
        info.options,
        TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE
    );
    assert_eq!((info.snd_wscale, info.rcv_wscale), (9, 7));
    assert_eq!(info.rtt_us, 10_000, "the handshake RTT");
    assert_eq!(info.rto_us, 200_000);
    assert_eq!(info.snd_cwnd, 10, "IW10");
    assert_eq!(info.snd_mss, 1448, "1460 minus the timestamp option");
    assert_eq!(info.retransmits, 0);
    assert_eq!(info.total_retrans, 0);
    // The Linux byte layout carries the same state and options.
    let mut bytes = [0u8; LINUX_TCP_INFO_LEN];
    assert_eq!(info.to_linux_bytes(&mut bytes), LINUX_TCP_INFO_LEN);
    assert_eq!(bytes[0], 1, "tcpi_state");
    assert_eq!(bytes[5], 7, "tcpi_options");
    assert_eq!(
        bytes[6],
        9 | (7 << 4),
        "tcpi_snd_wscale:4, tcpi_rcv_wscale:4"
    );
}

#[test]
fn info_after_a_loss_reports_retransmissions_and_backoff() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, 5 * MSS);
    assert_eq!(spans(&fx.out()).len(), 5);
    let at = fx.conn.poll_at().expect("RTO");
    assert_eq!(spans(&out_at(&mut fx, at)).len(), 1);
    let info = fx.conn.info(fx.now);
    assert_eq!(info.retransmits, 1, "one unrecovered RTO");
    assert_eq!(info.backoff, 1);
    assert_eq!(info.ca_state, 4, "TCP_CA_Loss");
    assert_eq!(info.snd_cwnd, 1);
    assert!(info.total_retrans >= 1);
    assert_eq!(info.unacked, 5);
    assert_eq!(info.rto_us, 400_000);
    // Recovered: the counters of the episode clear, the totals stay.
    fx.advance(Duration::from_millis(5));
    fx.send(&seg(0, 5 * MSS, &[]));
    let info = fx.conn.info(fx.now);
    assert_eq!((info.retransmits, info.backoff, info.ca_state), (0, 0, 0));
    assert!(info.total_retrans >= 1);
    assert_eq!(info.unacked, 0);
    assert_eq!(info.bytes_acked, 5 * MSS as u64);
}

#[test]
fn info_state_numbers_follow_linux() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.conn.shutdown_write(fx.now);
    assert_eq!(fx.conn.info(fx.now).state, 4, "TCP_FIN_WAIT1");
    let _ = fx.out();
    fx.send(&seg(0, 1, &[]));
    assert_eq!(fx.conn.info(fx.now).state, 5, "TCP_FIN_WAIT2");
    fx.send(&TcpRepr {
        control: TcpControl::FIN,
        ..seg(0, 1, &[])
    });
    assert_eq!(fx.conn.info(fx.now).state, 6, "TCP_TIME_WAIT");
}
