//! Handshake option negotiation: window scaling, SACK-permitted and timestamps only when both
//! SYNs carry them (RFC 7323 §2.2, RFC 2018 §2), the scale applied to non-SYN windows only, and
//! the MSS option (RFC 9293 §3.7.1, 536 when absent).

use super::*;
use crate::stack::tcp::info::{TCPI_OPT_SACK, TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE};

fn window_update(window: u16) -> TcpRepr<'static> {
    TcpRepr {
        window_len: window,
        ..seg(0, 0, &[])
    }
}

/// Passive open from a SYN offering `peer`: our SYN-ACK.
fn passive(config: TcpConfig, peer: PeerOpts) -> Sent {
    let syn = TcpRepr {
        seq_number: REMOTE_ISS,
        control: TcpControl::SYN,
        options: syn_options(peer),
        ..SEND_TEMPL
    };
    let conn = TcpConnection::accept(config, LOCAL, REMOTE, &syn, initial(), T0).expect("SYN ok");
    let mut fx = Fx { conn, now: T0 };
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(out[0].flags().syn && out[0].ack() == Some(REMOTE_ISS + 1));
    out[0].clone()
}

#[test]
fn window_scaling_when_both_syns_carry_it() {
    let peer = PeerOpts {
        wscale: Some(3),
        window: 1000,
        ..PeerOpts::PLAIN
    };
    let (mut fx, syn, ack) = open_full(TcpConfig::default(), peer);
    let ours = syn
        .repr
        .options
        .window_scale()
        .expect("our SYN offers a scale");
    assert_eq!(ours, 7, "Linux picks 7 for a 256 KiB buffer");
    let info = fx.conn.info(fx.now);
    assert_ne!(info.options & TCPI_OPT_WSCALE, 0);
    assert_eq!((info.snd_wscale, info.rcv_wscale), (3, 7));
    assert_eq!(info.snd_wnd, 1000, "the SYN-ACK's window is not scaled");
    // Our first non-SYN window is scaled by our shift.
    assert_eq!(usize::from(ack.window()), (256 * 1024) >> 7);
    // The peer's later windows are scaled by its shift.
    fx.send(&window_update(100));
    assert_eq!(fx.conn.info(fx.now).snd_wnd, 800);
}

#[test]
fn no_window_scaling_when_the_peer_does_not_offer_it() {
    let (mut fx, syn, ack) = open_full(TcpConfig::default(), PeerOpts::PLAIN);
    assert!(syn.repr.options.window_scale().is_some());
    let info = fx.conn.info(fx.now);
    assert_eq!(info.options & TCPI_OPT_WSCALE, 0);
    assert_eq!((info.snd_wscale, info.rcv_wscale), (0, 0));
    assert_eq!(ack.window(), 65_535, "unscaled window, capped at 64 KiB");
    fx.send(&window_update(100));
    assert_eq!(fx.conn.info(fx.now).snd_wnd, 100);
}

#[test]
fn no_window_scaling_when_we_do_not_offer_it() {
    let config = TcpConfig {
        window_scaling: false,
        ..TcpConfig::default()
    };
    let peer = PeerOpts {
        wscale: Some(3),
        ..PeerOpts::PLAIN
    };
    let (mut fx, syn, ack) = open_full(config.clone(), peer);
    assert_eq!(syn.repr.options.window_scale(), None);
    assert_eq!(fx.conn.info(fx.now).options & TCPI_OPT_WSCALE, 0);
    assert_eq!(ack.window(), 65_535);
    fx.send(&window_update(100));
    assert_eq!(fx.conn.info(fx.now).snd_wnd, 100, "peer's shift ignored");
    // Passive side: no scale in the SYN-ACK either.
    assert_eq!(passive(config, peer).repr.options.window_scale(), None);
}

#[test]
fn passive_side_answers_window_scale_in_kind() {
    let with = PeerOpts {
        wscale: Some(5),
        ..PeerOpts::PLAIN
    };
    let synack = passive(TcpConfig::default(), with);
    assert_eq!(synack.repr.options.window_scale(), Some(7));
    assert!(usize::from(synack.window()) <= 65_535);
    let synack = passive(TcpConfig::default(), PeerOpts::PLAIN);
    assert_eq!(synack.repr.options.window_scale(), None);
}

#[test]
fn sack_permitted_when_both_syns_carry_it() {
    let (fx, syn, _) = open_full(TcpConfig::default(), PeerOpts::SACK);
    assert!(syn.repr.options.sack_permitted());
    assert_ne!(fx.conn.info(fx.now).options & TCPI_OPT_SACK, 0);
    let (fx, _, _) = open_full(TcpConfig::default(), PeerOpts::PLAIN);
    assert_eq!(fx.conn.info(fx.now).options & TCPI_OPT_SACK, 0);
    // Passive: offered back only when the peer offered it.
    assert!(
        passive(TcpConfig::default(), PeerOpts::SACK)
            .repr
            .options
            .sack_permitted()
    );
    assert!(
        !passive(TcpConfig::default(), PeerOpts::PLAIN)
            .repr
            .options
            .sack_permitted()
    );
}

#[test]
fn sack_disabled_locally_is_not_offered_nor_used() {
    let config = TcpConfig {
        sack: false,
        ..TcpConfig::default()
    };
    let (mut fx, syn, _) = open_full(config.clone(), PeerOpts::SACK);
    assert!(!syn.repr.options.sack_permitted());
    assert_eq!(fx.conn.info(fx.now).options & TCPI_OPT_SACK, 0);
    // Out-of-order data is ACKed without SACK blocks.
    fx.send(&seg(100, 0, &[1; 10]));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 0));
    assert!(out[0].repr.options.sack_blocks().is_none());
    assert!(
        !passive(config, PeerOpts::SACK)
            .repr
            .options
            .sack_permitted()
    );
}

#[test]
fn timestamps_when_both_syns_carry_them() {
    let (mut fx, syn, ack) = open_full(TcpConfig::default(), PeerOpts::TS);
    assert!(syn.repr.options.timestamps().is_some());
    assert_ne!(fx.conn.info(fx.now).options & TCPI_OPT_TIMESTAMPS, 0);
    assert!(ack.repr.options.timestamps().is_some());
    queue(&mut fx, 0, 10);
    let out = fx.out();
    assert!(out.iter().all(|s| s.repr.options.timestamps().is_some()));

    let (mut fx, _, ack) = open_full(TcpConfig::default(), PeerOpts::PLAIN);
    assert_eq!(fx.conn.info(fx.now).options & TCPI_OPT_TIMESTAMPS, 0);
    assert!(ack.repr.options.timestamps().is_none());
    queue(&mut fx, 0, 10);
    assert!(
        fx.out()
            .iter()
            .all(|s| s.repr.options.timestamps().is_none())
    );
    // Passive: echoed back only when offered.
    let synack = passive(TcpConfig::default(), PeerOpts::TS);
    assert_eq!(
        synack.repr.options.timestamps().map(|t| t.1),
        Some(PEER_TS0)
    );
    assert!(
        passive(TcpConfig::default(), PeerOpts::PLAIN)
            .repr
            .options
            .timestamps()
            .is_none()
    );
}

#[test]
fn timestamps_disabled_locally_are_not_offered() {
    let config = TcpConfig {
        timestamps: false,
        ..TcpConfig::default()
    };
    let (fx, syn, ack) = open_full(config.clone(), PeerOpts::TS);
    assert!(syn.repr.options.timestamps().is_none());
    assert!(ack.repr.options.timestamps().is_none());
    assert_eq!(fx.conn.info(fx.now).options & TCPI_OPT_TIMESTAMPS, 0);
    assert!(
        passive(config, PeerOpts::TS)
            .repr
            .options
            .timestamps()
            .is_none()
    );
}

#[test]
fn our_syn_advertises_the_configured_mss() {
    let config = TcpConfig {
        mss: 1400,
        ..TcpConfig::default()
    };
    let (_, syn, _) = open_full(config.clone(), PeerOpts::PLAIN);
    assert_eq!(syn.repr.options.max_seg_size(), Some(1400));
    assert_eq!(
        passive(config, PeerOpts::PLAIN).repr.options.max_seg_size(),
        Some(1400)
    );
}

#[test]
fn peer_mss_clamps_segment_size() {
    let peer = PeerOpts {
        mss: Some(1000),
        ..PeerOpts::PLAIN
    };
    let mut fx = open(nodelay(), peer);
    queue(&mut fx, 0, 3500);
    assert_eq!(
        spans(&fx.out()),
        vec![(0, 1000), (1000, 1000), (2000, 1000), (3000, 500)]
    );
    assert_eq!(fx.conn.info(fx.now).snd_mss, 1000);
}

#[test]
fn absent_mss_option_means_536() {
    let peer = PeerOpts {
        mss: None,
        ..PeerOpts::PLAIN
    };
    let mut fx = open(nodelay(), peer);
    queue(&mut fx, 0, 1200);
    assert_eq!(spans(&fx.out()), vec![(0, 536), (536, 536), (1072, 128)]);
}

#[test]
fn our_smaller_mss_also_bounds_what_we_send() {
    let config = TcpConfig {
        mss: 1000,
        nodelay: true,
        ..TcpConfig::default()
    };
    let mut fx = open(config, PeerOpts::PLAIN);
    queue(&mut fx, 0, 2500);
    assert!(spans(&fx.out()).iter().all(|&(_, len)| len <= 1000));
}
