//! What a process image hands to the next one across `execve` (paper §3.1: sockets are
//! flushed before exec and the new image keeps using them through the netserver).
//!
//! `execve` replaces the program but keeps the process and every descriptor without
//! FD_CLOEXEC. Before it, libmsock flushes every cached connection (its state then lives in
//! the netserver), clears FD_CLOEXEC on the session's descriptors (control connection, upcall
//! socket, routing region, stats page: the netserver keeps seeing the same client, so no
//! endpoint is orphaned) and on the library end of each socket whose program descriptors
//! survive, and describes all of it in one environment variable, [`ENV`]. The new image's
//! constructor parses it ([`Inheritance::parse`]), checks every descriptor (a placeholder
//! must still be the socket it was: same inode), rebuilds its session and fd table, and
//! removes the variable. Sockets whose every descriptor was close-on-exec are listed in
//! `close`: the new image closes their endpoints (only then, because a failed `execve` keeps
//! them).
//!
//! The format is one line of ASCII, versioned, parsed strictly: anything malformed is an
//! error value (the new image then ignores the inheritance and logs why; it never panics).
//!
//! ```text
//! v1 pid=4242 ctl=5 up=6 region=7 stats=8 close=21,22 sock=fds:3+4,lib:9,ino:1234,id:17,kind:c,dom:2,local:198.18.0.2:80,remote:198.18.0.1:4000 relay=fds:0+1,ino:5678,dom:2,local:198.18.0.2:7,remote:198.18.0.1:4001
//! ```
//!
//! `relay` describes a relayed connection (`client::relay`): its descriptors are a kernel
//! socketpair the netserver carries, so there is nothing to adopt but its names.
//!
//! `pid` is the process that exec'd: `execve` keeps it, so only the very next image adopts
//! (a program that does not load libmsock passes the variable on to its own children, which
//! must not take over descriptors they do not own). A descriptor named twice is refused.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;

use crate::control::EndpointId;

/// The environment variable carrying an [`Inheritance`].
pub const ENV: &str = "MSOCK_INHERIT";

/// Most sockets one inheritance may describe (a bound on what a malformed variable can make
/// the new image allocate).
pub const MAX_SOCKETS: usize = 4096;

/// What an inherited socket was when its state was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InheritedKind {
    /// A connection (flushed: it runs in the netserver).
    Connection,
    /// A listener (the netserver listens for it).
    Listener,
    /// Created and perhaps bound, neither connected nor listening.
    Unconnected,
}

impl InheritedKind {
    fn tag(self) -> char {
        match self {
            InheritedKind::Connection => 'c',
            InheritedKind::Listener => 'l',
            InheritedKind::Unconnected => 'u',
        }
    }

    fn from_tag(s: &str) -> Result<InheritedKind, InheritError> {
        match s {
            "c" => Ok(InheritedKind::Connection),
            "l" => Ok(InheritedKind::Listener),
            "u" => Ok(InheritedKind::Unconnected),
            _ => Err(InheritError("unknown socket kind")),
        }
    }
}

/// One inherited socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedSocket {
    /// Program descriptors referring to it (all without FD_CLOEXEC), at least one.
    pub fds: Vec<RawFd>,
    /// The library's end of its placeholder.
    pub lib: RawFd,
    /// Inode of the placeholder (program end): the new image checks each of `fds` is it.
    pub ino: u64,
    pub id: EndpointId,
    pub kind: InheritedKind,
    /// AF_INET or AF_INET6.
    pub domain: i32,
    pub local: Option<SocketAddrV4>,
    pub remote: Option<SocketAddrV4>,
}

/// One inherited relayed connection (`client::relay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedRelay {
    /// Program descriptors referring to it (all without FD_CLOEXEC), at least one.
    pub fds: Vec<RawFd>,
    /// Inode of the socketpair end: the new image checks each of `fds` is it.
    pub ino: u64,
    /// AF_INET or AF_INET6.
    pub domain: i32,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
}

/// Everything handed to the next image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inheritance {
    /// The process that prepared the exec (the same process runs the new image).
    pub pid: u32,
    pub control: RawFd,
    pub upcall: RawFd,
    pub region: RawFd,
    pub stats: RawFd,
    /// Endpoints whose descriptors were all close-on-exec: closed by the new image.
    pub close: Vec<EndpointId>,
    pub sockets: Vec<InheritedSocket>,
    pub relays: Vec<InheritedRelay>,
}

/// Why an inheritance could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InheritError(pub &'static str);

impl std::fmt::Display for InheritError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad {ENV}: {}", self.0)
    }
}

fn fd(s: &str) -> Result<RawFd, InheritError> {
    s.parse::<RawFd>()
        .ok()
        .filter(|&f| f >= 0)
        .ok_or(InheritError("descriptor"))
}

fn addr(s: &str) -> Result<Option<SocketAddrV4>, InheritError> {
    if s == "-" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| InheritError("address"))
}

fn fds_field(v: &str) -> Result<Vec<RawFd>, InheritError> {
    let list = v.split('+').map(fd).collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() || list.len() > 1024 {
        return Err(InheritError("descriptor list"));
    }
    Ok(list)
}

fn domain_field(v: &str) -> Result<i32, InheritError> {
    let d: i32 = v.parse().map_err(|_| InheritError("domain"))?;
    if d != libc::AF_INET && d != libc::AF_INET6 {
        return Err(InheritError("domain"));
    }
    Ok(d)
}

fn join_fds(fds: &[RawFd]) -> String {
    let fds: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
    fds.join("+")
}

fn fmt_addr(a: Option<SocketAddrV4>) -> String {
    a.map_or_else(|| "-".to_string(), |a| a.to_string())
}

impl InheritedSocket {
    fn encode(&self, out: &mut String) {
        let _ = write!(
            out,
            " sock=fds:{},lib:{},ino:{},id:{},kind:{},dom:{},local:{},remote:{}",
            join_fds(&self.fds),
            self.lib,
            self.ino,
            self.id,
            self.kind.tag(),
            self.domain,
            fmt_addr(self.local),
            fmt_addr(self.remote),
        );
    }

    fn parse(value: &str) -> Result<InheritedSocket, InheritError> {
        let mut fds = None;
        let mut lib = None;
        let mut ino = None;
        let mut id = None;
        let mut kind = None;
        let mut domain = None;
        let mut local = None;
        let mut remote = None;
        for field in value.split(',') {
            let (key, v) = field.split_once(':').ok_or(InheritError("socket field"))?;
            match key {
                "fds" => fds = Some(fds_field(v)?),
                "lib" => lib = Some(fd(v)?),
                "ino" => ino = Some(v.parse().map_err(|_| InheritError("inode"))?),
                "id" => id = Some(v.parse().map_err(|_| InheritError("endpoint id"))?),
                "kind" => kind = Some(InheritedKind::from_tag(v)?),
                "dom" => domain = Some(domain_field(v)?),
                // "local:198.18.0.2:80": the value itself contains a colon.
                "local" => local = Some(addr(v)?),
                "remote" => remote = Some(addr(v)?),
                _ => return Err(InheritError("unknown socket field")),
            }
        }
        let missing = InheritError("missing socket field");
        Ok(InheritedSocket {
            fds: fds.ok_or(missing)?,
            lib: lib.ok_or(missing)?,
            ino: ino.ok_or(missing)?,
            id: id.ok_or(missing)?,
            kind: kind.ok_or(missing)?,
            domain: domain.ok_or(missing)?,
            local: local.ok_or(missing)?,
            remote: remote.ok_or(missing)?,
        })
    }
}

impl InheritedRelay {
    fn encode(&self, out: &mut String) {
        let _ = write!(
            out,
            " relay=fds:{},ino:{},dom:{},local:{},remote:{}",
            join_fds(&self.fds),
            self.ino,
            self.domain,
            self.local,
            self.remote,
        );
    }

    fn parse(value: &str) -> Result<InheritedRelay, InheritError> {
        let (mut fds, mut ino, mut domain, mut local, mut remote) = (None, None, None, None, None);
        for field in value.split(',') {
            let (key, v) = field.split_once(':').ok_or(InheritError("relay field"))?;
            match key {
                "fds" => fds = Some(fds_field(v)?),
                "ino" => ino = Some(v.parse().map_err(|_| InheritError("inode"))?),
                "dom" => domain = Some(domain_field(v)?),
                "local" => local = Some(v.parse().map_err(|_| InheritError("address"))?),
                "remote" => remote = Some(v.parse().map_err(|_| InheritError("address"))?),
                _ => return Err(InheritError("unknown relay field")),
            }
        }
        let missing = InheritError("missing relay field");
        Ok(InheritedRelay {
            fds: fds.ok_or(missing)?,
            ino: ino.ok_or(missing)?,
            domain: domain.ok_or(missing)?,
            local: local.ok_or(missing)?,
            remote: remote.ok_or(missing)?,
        })
    }
}

impl Inheritance {
    /// The variable's value.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "v1 pid={} ctl={} up={} region={} stats={}",
            self.pid, self.control, self.upcall, self.region, self.stats
        );
        if !self.close.is_empty() {
            let ids: Vec<String> = self.close.iter().map(|i| i.to_string()).collect();
            let _ = write!(out, " close={}", ids.join(","));
        }
        for s in &self.sockets {
            s.encode(&mut out);
        }
        for r in &self.relays {
            r.encode(&mut out);
        }
        out
    }

    /// Parses a value written by [`Inheritance::encode`] (any version-1 writer).
    pub fn parse(value: &str) -> Result<Inheritance, InheritError> {
        let mut words = value.split(' ');
        if words.next() != Some("v1") {
            return Err(InheritError("version"));
        }
        let (mut control, mut upcall, mut region, mut stats) = (None, None, None, None);
        let mut pid = None;
        let mut close = Vec::new();
        let mut sockets = Vec::new();
        let mut relays = Vec::new();
        for word in words {
            let (key, v) = word.split_once('=').ok_or(InheritError("word"))?;
            match key {
                "pid" => pid = Some(v.parse().map_err(|_| InheritError("pid"))?),
                "ctl" => control = Some(fd(v)?),
                "up" => upcall = Some(fd(v)?),
                "region" => region = Some(fd(v)?),
                "stats" => stats = Some(fd(v)?),
                "close" => {
                    for id in v.split(',') {
                        if close.len() >= MAX_SOCKETS {
                            return Err(InheritError("too many endpoints"));
                        }
                        close.push(id.parse().map_err(|_| InheritError("endpoint id"))?);
                    }
                }
                "sock" => {
                    if sockets.len() >= MAX_SOCKETS {
                        return Err(InheritError("too many sockets"));
                    }
                    sockets.push(InheritedSocket::parse(v)?);
                }
                "relay" => {
                    if sockets.len() + relays.len() >= MAX_SOCKETS {
                        return Err(InheritError("too many sockets"));
                    }
                    relays.push(InheritedRelay::parse(v)?);
                }
                _ => return Err(InheritError("unknown word")),
            }
        }
        let missing = InheritError("missing session descriptor");
        let inheritance = Inheritance {
            pid: pid.ok_or(InheritError("missing pid"))?,
            control: control.ok_or(missing)?,
            upcall: upcall.ok_or(missing)?,
            region: region.ok_or(missing)?,
            stats: stats.ok_or(missing)?,
            close,
            sockets,
            relays,
        };
        let mut seen = inheritance.descriptors();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(InheritError("a descriptor named twice"));
        }
        Ok(inheritance)
    }

    /// Every descriptor the inheritance names (session and sockets), to keep open across
    /// `execve` and to check in the new image.
    pub fn descriptors(&self) -> Vec<RawFd> {
        let mut all = vec![self.control, self.upcall, self.region, self.stats];
        for s in &self.sockets {
            all.push(s.lib);
            all.extend(&s.fds);
        }
        for r in &self.relays {
            all.extend(&r.fds);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inheritance {
        Inheritance {
            pid: 4242,
            control: 5,
            upcall: 6,
            region: 7,
            stats: 8,
            close: vec![21, 22],
            sockets: vec![
                InheritedSocket {
                    fds: vec![0, 1, 2],
                    lib: 9,
                    ino: 123_456,
                    id: 17,
                    kind: InheritedKind::Connection,
                    domain: libc::AF_INET,
                    local: Some("198.18.0.2:80".parse().unwrap()),
                    remote: Some("198.18.0.1:40000".parse().unwrap()),
                },
                InheritedSocket {
                    fds: vec![3],
                    lib: 10,
                    ino: 99,
                    id: 18,
                    kind: InheritedKind::Listener,
                    domain: libc::AF_INET6,
                    local: Some("0.0.0.0:80".parse().unwrap()),
                    remote: None,
                },
                InheritedSocket {
                    fds: vec![4],
                    lib: 11,
                    ino: 100,
                    id: 19,
                    kind: InheritedKind::Unconnected,
                    domain: libc::AF_INET,
                    local: None,
                    remote: None,
                },
            ],
            relays: vec![InheritedRelay {
                fds: vec![12, 13],
                ino: 5678,
                domain: libc::AF_INET6,
                local: "198.18.0.2:7".parse().unwrap(),
                remote: "198.18.0.1:4001".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let text = s.encode();
        assert!(text.is_ascii() && !text.contains('\n'));
        assert_eq!(Inheritance::parse(&text), Ok(s));
        let empty = Inheritance {
            close: vec![],
            sockets: vec![],
            relays: vec![],
            ..sample()
        };
        assert_eq!(Inheritance::parse(&empty.encode()), Ok(empty));
    }

    #[test]
    fn descriptors_lists_everything() {
        let d = sample().descriptors();
        assert_eq!(d, vec![5, 6, 7, 8, 9, 0, 1, 2, 10, 3, 11, 4, 12, 13]);
    }

    #[test]
    fn malformed_values_are_errors() {
        let good = sample().encode();
        let bad = [
            String::new(),
            "v2 pid=1 ctl=1 up=2 region=3 stats=4".to_string(),
            "v1 pid=1 ctl=1 up=2 region=3".to_string(),
            "v1 ctl=-1 up=2 region=3 stats=4".to_string(),
            "v1 ctl=x up=2 region=3 stats=4".to_string(),
            "v1 ctl=1 up=2 region=3 stats=4 what=1".to_string(),
            "v1 ctl=1 up=2 region=3 stats=4 close=1,,2".to_string(),
            "v1 ctl=1 up=2 region=3 stats=4 sock=fds:1".to_string(),
            good.replace("kind:c", "kind:z"),
            good.replace("dom:2", "dom:1"),
            good.replace("fds:0+1+2", "fds:"),
            good.replace("local:198.18.0.2:80", "local:nowhere"),
            good.replace(",ino:123456", ""),
            good.replace("ctl=5 ", "ctl=5  "),
            format!("{good} sock=fds:1,lib:2,ino:3,id:4,kind:c,dom:2,local:-,remote:-,x:1"),
            good.replace("relay=fds:12+13", "relay=fds:"),
            good.replace(",local:198.18.0.2:7,", ",local:-,"),
            good.replace("ino:5678,", ""),
            format!("{good} relay=fds:30,ino:1,dom:2,local:1.2.3.4:5,remote:1.2.3.4:6,id:1"),
            // A descriptor named by a socket and a relay.
            format!("{good} relay=fds:3,ino:1,dom:2,local:1.2.3.4:5,remote:1.2.3.4:6"),
        ];
        for b in bad {
            assert!(Inheritance::parse(&b).is_err(), "accepted {b:?}");
        }
    }

    #[test]
    fn socket_count_is_bounded() {
        let mut text = "v1 pid=1 ctl=1 up=2 region=3 stats=4".to_string();
        for i in 0..=MAX_SOCKETS {
            let _ = write!(
                text,
                " sock=fds:{i},lib:1,ino:1,id:{i},kind:u,dom:2,local:-,remote:-"
            );
        }
        assert_eq!(
            Inheritance::parse(&text),
            Err(InheritError("too many sockets"))
        );
    }
}
