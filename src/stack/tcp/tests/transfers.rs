//! Whole transfers through the seeded network simulator ([`crate::stack::tcp::sim`]): byte-exact
//! in both directions at once, terminating (both sides CLOSED, one through TIME_WAIT), across
//! seeds, impairments, congestion controls, option sets, migrations and tiny buffers.

use crate::stack::Duration;
use crate::stack::tcp::congestion::CongestionAlgorithm;
use crate::stack::tcp::connection::State;
use crate::stack::tcp::sim::{Limits, LinkConfig, OpenMode, SimConfig, SimReport, Simulation};

const MB10: u64 = 10_000_000;
/// A passing 10 MB run needs ~40k events and a few virtual minutes at most (TIME_WAIT is 60 s);
/// tighter than the default so a stuck engine fails fast.
const LIMITS: Limits = Limits {
    time: Duration::from_secs(400),
    events: 1_000_000,
};

fn run(cfg: SimConfig) -> SimReport {
    let bytes = [cfg.apps[0].bytes, cfg.apps[1].bytes];
    let report = Simulation::new(cfg)
        .run(LIMITS)
        .unwrap_or_else(|e| panic!("{e}"));
    check(&report, bytes);
    report
}

/// Byte-exact both ways, both CLOSED, one side through TIME_WAIT, nothing malformed on the wire.
fn check(r: &SimReport, written: [u64; 2]) {
    assert_eq!(r.bytes_written, written, "{r}");
    assert_eq!(r.bytes_read, [written[1], written[0]], "{r}");
    assert_eq!(r.eof, [true, true], "{r}");
    assert_eq!(
        r.final_states,
        [Some(State::Closed), Some(State::Closed)],
        "{r}"
    );
    assert!(
        r.visited(0, State::TimeWait) || r.visited(1, State::TimeWait),
        "{r}"
    );
    assert_eq!(r.errors, [None, None], "{r}");
    for l in &r.links {
        assert_eq!(l.oversize, 0, "segment larger than the MTU: {r}");
        assert_eq!(
            l.malformed, 0,
            "engine emitted a segment that does not parse: {r}"
        );
        assert_eq!(l.corrupt_accepted, 0, "{r}");
    }
}

fn lossy(seed: u64) -> SimConfig {
    SimConfig::new(seed)
        .with_link(LinkConfig::lossy())
        .with_bytes(MB10)
}

/// Asserts the impairments really happened in both directions.
fn impaired(r: &SimReport) {
    for l in &r.links {
        assert!(l.lost > 0 && l.reordered > 0 && l.duplicated > 0, "{r}");
    }
    let corrupted: u64 = r.links.iter().map(|l| l.corrupt_rejected).sum();
    assert!(corrupted > 0, "{r}");
    assert!(r.retransmits[0] > 0 && r.retransmits[1] > 0, "{r}");
}

fn lossy_seeds(seeds: core::ops::Range<u64>) {
    for seed in seeds {
        let r = run(lossy(seed));
        impaired(&r);
    }
}

// 16 seeds, split so the test harness runs them on both cores.
#[test]
fn lossy_10mb_each_way_seeds_0_3() {
    lossy_seeds(0..4);
}

#[test]
fn lossy_10mb_each_way_seeds_4_7() {
    lossy_seeds(4..8);
}

#[test]
fn lossy_10mb_each_way_seeds_8_11() {
    lossy_seeds(8..12);
}

#[test]
fn lossy_10mb_each_way_seeds_12_15() {
    lossy_seeds(12..16);
}

#[test]
fn heavy_loss_10_percent() {
    for seed in 100..103 {
        let link = LinkConfig {
            loss: 0.10,
            ..LinkConfig::lossy()
        };
        let r = run(SimConfig::new(seed).with_link(link).with_bytes(MB10));
        assert!(
            r.timeouts[0] + r.timeouts[1] > 0,
            "10 % loss needs some RTOs: {r}"
        );
    }
}

#[test]
fn migration_every_few_ms_of_virtual_time() {
    for seed in 200..202 {
        let cfg = SimConfig {
            migrate_every: Some(Duration::from_millis(4)),
            ..lossy(seed)
        };
        let r = run(cfg);
        impaired(&r);
        assert!(r.migrations[0] > 50 && r.migrations[1] > 50, "{r}");
    }
}

#[test]
fn migration_with_tiny_buffers_and_persist() {
    let cfg = SimConfig {
        migrate_every: Some(Duration::from_millis(3)),
        ..tiny(300)
    };
    let r = run(cfg);
    assert!(r.migrations[0] > 20 && r.migrations[1] > 20, "{r}");
}

#[test]
fn reno() {
    for seed in 300..302 {
        let r = run(lossy(seed).with_congestion(CongestionAlgorithm::Reno));
        impaired(&r);
    }
}

#[test]
fn cubic() {
    for seed in 310..312 {
        let r = run(lossy(seed).with_congestion(CongestionAlgorithm::Cubic));
        impaired(&r);
    }
}

#[test]
fn sack_off_newreno() {
    for seed in 400..402 {
        let r = run(lossy(seed).with_tcp(|c| c.sack = false));
        impaired(&r);
        assert!(
            r.fast_retransmits[0] + r.fast_retransmits[1] > 0,
            "NewReno fast retransmit: {r}"
        );
    }
}

#[test]
fn sack_off_on_one_side_only() {
    let mut cfg = lossy(410);
    cfg.tcp[1].sack = false;
    run(cfg);
}

#[test]
fn timestamps_off() {
    for seed in 500..502 {
        run(lossy(seed).with_tcp(|c| c.timestamps = false));
    }
}

#[test]
fn window_scaling_off() {
    for seed in 600..602 {
        run(lossy(seed).with_tcp(|c| c.window_scaling = false));
    }
}

#[test]
fn all_options_off() {
    run(lossy(650).with_tcp(|c| {
        c.window_scaling = false;
        c.sack = false;
        c.timestamps = false;
    }));
}

/// 2 KiB buffers and a reader that wakes every ~2 ms: the window closes and reopens.
fn tiny(seed: u64) -> SimConfig {
    SimConfig::new(seed)
        .with_link(LinkConfig::lossy())
        .with_bytes(300_000)
        .with_tcp(|c| {
            c.recv_buffer = 2048;
            c.send_buffer = 2048;
        })
        .with_apps(|a| {
            a.read_chunk_max = 700;
            a.write_chunk_max = 3000;
            a.read_interval = Some(Duration::from_millis(2));
        })
}

#[test]
fn tiny_buffers_zero_windows_and_persist() {
    for seed in 700..704 {
        let r = run(tiny(seed));
        let zero: u64 = r.links.iter().map(|l| l.zero_windows).sum();
        assert!(zero > 0, "2 KiB buffers must close the window: {r}");
    }
}

#[test]
fn tiny_buffers_clean_link() {
    let r = run(SimConfig {
        links: [LinkConfig::default(), LinkConfig::default()],
        ..tiny(710)
    });
    let zero: u64 = r.links.iter().map(|l| l.zero_windows).sum();
    assert!(zero > 0, "{r}");
    assert_eq!(
        r.retransmits,
        [0, 0],
        "no loss, no retransmission (probes are not retransmits): {r}"
    );
}

#[test]
fn nodelay_small_writes() {
    let cfg = SimConfig::new(800)
        .with_link(LinkConfig::lossy())
        .with_bytes(200_000)
        .with_tcp(|c| c.nodelay = true)
        .with_apps(|a| {
            a.write_chunk_max = 100;
            a.read_chunk_max = 50;
        });
    run(cfg);
}

#[test]
fn open_modes() {
    for open in [OpenMode::Listener, OpenMode::Accept, OpenMode::Simultaneous] {
        let r = run(SimConfig {
            open,
            ..SimConfig::new(900)
                .with_link(LinkConfig::lossy())
                .with_bytes(500_000)
        });
        if open == OpenMode::Simultaneous {
            assert!(
                r.visited(0, State::SynReceived) || r.visited(1, State::SynReceived),
                "{r}"
            );
        }
    }
}

#[test]
fn one_way_transfer_and_empty_stream() {
    let mut cfg = lossy(950);
    cfg.apps[1].bytes = 0;
    cfg.apps[0].bytes = 2_000_000;
    run(cfg);
    let mut cfg = lossy(951);
    cfg.apps[0].bytes = 0;
    cfg.apps[1].bytes = 0;
    run(cfg);
}

#[test]
fn bandwidth_limited_with_tail_drops() {
    let link = LinkConfig {
        bandwidth: Some(5_000_000),
        queue_limit: Some(64 * 1024),
        ..LinkConfig::clean(Duration::from_millis(10))
    };
    for algorithm in [CongestionAlgorithm::Reno, CongestionAlgorithm::Cubic] {
        let r = run(SimConfig::new(1000)
            .with_link(link.clone())
            .with_bytes(MB10)
            .with_congestion(algorithm));
        let drops: u64 = r.links.iter().map(|l| l.queue_drops).sum();
        assert!(drops > 0, "{algorithm:?} must fill a 64 KiB queue: {r}");
        // 10 MB each way at 5 MB/s each way: at least 2 s, and a sane protocol stays under 10 s
        // of transfer (+ 60 s TIME_WAIT).
        assert!(r.elapsed >= Duration::from_secs(2), "{r}");
        assert!(
            r.elapsed <= Duration::from_secs(70),
            "{algorithm:?} too slow: {r}"
        );
    }
}

#[test]
fn small_mtu_path() {
    let link = LinkConfig {
        mtu: 576,
        ..LinkConfig::lossy()
    };
    run(lossy(1100)
        .with_link(link)
        .with_bytes(1_000_000)
        .with_tcp(|c| c.mss = 536));
}

#[test]
fn pacing_enabled() {
    run(lossy(1200)
        .with_bytes(2_000_000)
        .with_tcp(|c| c.pacing = true));
}

#[test]
fn same_seed_same_run() {
    let a = Simulation::new(lossy(1300).with_bytes(1_000_000))
        .run(LIMITS)
        .unwrap();
    let b = Simulation::new(lossy(1300).with_bytes(1_000_000))
        .run(LIMITS)
        .unwrap();
    assert_eq!(a, b);
    let c = Simulation::new(lossy(1301).with_bytes(1_000_000))
        .run(LIMITS)
        .unwrap();
    assert_ne!(a.links, c.links, "a different seed gives a different run");
}
