//! A bare veth pair in the caller's current network namespace, for channel tests and benches
//! that run inside a private namespace (`unshare(CLONE_NEWNET)`) rather than a full testnet.

use std::io;
use std::time::{Duration, Instant};

use super::run;
use crate::wire::EthernetAddress;

/// Interfaces `a` and `b`, up, with fixed MACs and no IPv6 link-local address (so no router
/// solicitations appear on the link); deleted on drop (deleting one end removes both).
#[derive(Debug)]
pub struct VethPair {
    pub a: String,
    pub b: String,
}

impl VethPair {
    /// Creates `{tag}{pid}a` / `{tag}{pid}b` (`tag` at most 4 characters, so the names fit
    /// IFNAMSIZ) and waits until the carrier is up.
    pub fn create(
        tag: &str,
        mac_a: EthernetAddress,
        mac_b: EthernetAddress,
    ) -> io::Result<VethPair> {
        if tag.len() > 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "veth tag longer than 4",
            ));
        }
        let pid = std::process::id();
        let pair = VethPair {
            a: format!("{tag}{pid}a"),
            b: format!("{tag}{pid}b"),
        };
        let (mac_a, mac_b) = (mac_a.to_string(), mac_b.to_string());
        run(
            "ip",
            &[
                "link", "add", &pair.a, "address", &mac_a, "type", "veth", "peer", "name", &pair.b,
                "address", &mac_b,
            ],
        )?;
        for dev in [&pair.a, &pair.b] {
            // Best effort: older iproute2 lacks addrgenmode; only log noise depends on it.
            let _ = run("ip", &["link", "set", "dev", dev, "addrgenmode", "none"]);
            run("ip", &["link", "set", "dev", dev, "up"])?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !run("ip", &["-o", "link", "show", "dev", &pair.a])?.contains("LOWER_UP") {
            if Instant::now() > deadline {
                return Err(io::Error::other("veth carrier never came up"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.a]);
    }
}
