//! The netserver: one daemon per network namespace (paper §3.1, §4.3).
//!
//! It owns the interface through a packet channel, answers ARP and ICMP, reassembles fragments,
//! holds the global endpoint table and the UDP port table, creates each cached endpoint's
//! channel (filter fixed and locked here), and is the only writer of the routing region.
//! `msock netserver --iface IF --addr A.B.C.D/N [--gateway G]` runs it in the foreground until
//! SIGINT/SIGTERM.

mod channel_pool;
pub mod crash_reclaim;
mod daemon;
pub mod endpoints;
pub mod host;
pub mod relay;
mod stat;
pub mod tcp_host;

use std::net::Ipv4Addr;

pub use daemon::run;

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl Config {
    pub fn parse(args: &[String]) -> Result<Config, String> {
        let (flags, positional) =
            crate::cli::parse_flags(args, &["iface", "addr", "gateway"], &[])?;
        if let Some(extra) = positional.first() {
            return Err(format!("unexpected argument '{extra}'"));
        }
        let get = |name: &str| {
            flags
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let iface = get("iface").ok_or("--iface IF is required")?;
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('/') {
            return Err(format!("bad interface name '{iface}'"));
        }
        let addr_text = get("addr").ok_or("--addr A.B.C.D/N is required")?;
        let (addr, prefix) = addr_text
            .split_once('/')
            .ok_or(format!("--addr needs a prefix length: '{addr_text}'"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("bad address '{addr}'"))?;
        let prefix_len: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or(format!("bad prefix length '{prefix}'"))?;
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback()
        {
            return Err(format!("{addr} cannot be a host address"));
        }
        let gateway = match get("gateway") {
            Some(g) => {
                let gw: Ipv4Addr = g.parse().map_err(|_| format!("bad gateway '{g}'"))?;
                let mask = host::prefix_mask(prefix_len);
                if u32::from(gw) & mask != u32::from(addr) & mask {
                    return Err(format!("gateway {gw} is not on {addr}/{prefix_len}"));
                }
                Some(gw)
            }
            None => None,
        };
        Ok(Config {
            iface,
            addr,
            prefix_len,
            gateway,
        })
    }
}

/// `msock netserver ...`
pub fn command(args: &[String]) -> i32 {
    let config = match Config::parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "msock netserver: {e}\nusage: msock netserver --iface IF --addr A.B.C.D/N [--gateway G]"
            );
            return 2;
        }
    };
    match run(&config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("msock netserver: {e}");
            1
        }
    }
}

/// Whether `fd` is a file in shared memory (a memfd or tmpfs file): the only kind the
/// netserver reads from a client (a file on FUSE or NFS could block its read forever).
pub(crate) fn on_shmem(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Config, String> {
        Config::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_full_config() {
        let c = parse(&[
            "--iface",
            "t-a0",
            "--addr",
            "198.18.0.2/24",
            "--gateway",
            "198.18.0.1",
        ])
        .unwrap();
        assert_eq!(c.iface, "t-a0");
        assert_eq!(c.addr, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(c.prefix_len, 24);
        assert_eq!(c.gateway, Some(Ipv4Addr::new(198, 18, 0, 1)));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["--addr", "198.18.0.2/24"]).is_err());
        assert!(parse(&["--iface", "x", "--addr", "198.18.0.2"]).is_err());
        assert!(parse(&["--iface", "x", "--addr", "198.18.0.2/33"]).is_err());
        assert!(parse(&["--iface", "x", "--addr", "300.1.1.1/24"]).is_err());
        assert!(parse(&["--iface", "x", "--addr", "0.0.0.0/24"]).is_err());
        assert!(
            parse(&[
                "--iface",
                "x",
                "--addr",
                "198.18.0.2/24",
                "--gateway",
                "10.0.0.1"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "--iface",
                "averyveryverylongname",
                "--addr",
                "198.18.0.2/24"
            ])
            .is_err()
        );
    }
}
