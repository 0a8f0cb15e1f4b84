//! `msock stat` and `msock route`: ask the netserver of this namespace.
//!
//! `msock route [show] [--json]` prints the shared routing region as a client maps it;
//! `msock route add|del` and `msock route neigh add|del` are typed control requests
//! ([`Request::RouteAdd`] and friends) that only root or the netserver's own user may make. A
//! refusal is printed as one line naming the errno and its likely cause.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use crate::control::transport::{Connection, ControlAddress};
use crate::control::{Reply, Request, VERSION};
use crate::routing::region::RegionReader;
use crate::wire::EthernetAddress;

fn connect() -> Result<Connection, String> {
    let address = ControlAddress::from_env();
    Connection::connect(&address).map_err(|e| format!("no netserver at {address}: {e}"))
}

pub fn stat_command(args: &[String]) -> i32 {
    let json = match super::parse_flags(args, &[], &["json"]) {
        Ok((flags, pos)) if pos.is_empty() => !flags.is_empty(),
        Ok(_) | Err(_) => {
            eprintln!("usage: msock stat [--json]");
            return 2;
        }
    };
    let result = connect().and_then(|conn| {
        conn.call(&Request::Stat { json }, &[])
            .map_err(|e| format!("stat: {e}"))
    });
    match result {
        Ok((Reply::Stat { text }, _)) => {
            print!("{text}");
            if json {
                println!();
            }
            0
        }
        Ok((other, _)) => {
            eprintln!("msock stat: unexpected reply {other:?}");
            1
        }
        Err(e) => {
            eprintln!("msock stat: {e}");
            1
        }
    }
}

const ROUTE_USAGE: &str = "\
usage: msock route [show] [--json]
       msock route add DEST/PLEN|default [via GATEWAY]
       msock route del DEST/PLEN|default
       msock route neigh add IP MAC
       msock route neigh del IP";

/// A parsed `msock route` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RouteCommand {
    Show { json: bool },
    Change(Request),
}

/// `A.B.C.D/N` (a bare address is /32) or `default` (0.0.0.0/0). The prefix length is not
/// checked against 32 here: the netserver answers EINVAL, as for any client.
fn parse_prefix(text: &str) -> Result<(Ipv4Addr, u8), String> {
    if text == "default" {
        return Ok((Ipv4Addr::UNSPECIFIED, 0));
    }
    let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
    let addr = addr
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("bad destination {text:?} (want A.B.C.D/N or default)"))?;
    let len = len
        .parse::<u8>()
        .map_err(|_| format!("bad prefix length in {text:?}"))?;
    Ok((addr, len))
}

fn parse_ip(text: &str, what: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("bad {what} {text:?} (want A.B.C.D)"))
}

fn parse_route_args(args: &[String]) -> Result<RouteCommand, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] => Ok(RouteCommand::Show { json: false }),
        ["--json"] | ["show", "--json"] => Ok(RouteCommand::Show { json: true }),
        ["show"] => Ok(RouteCommand::Show { json: false }),
        ["add", dest, rest @ ..] => {
            let (dest, prefix_len) = parse_prefix(dest)?;
            let gateway = match rest {
                [] => None,
                ["via", gw] => Some(parse_ip(gw, "gateway")?),
                _ => {
                    return Err(format!(
                        "unexpected {:?} after the destination",
                        rest.join(" ")
                    ));
                }
            };
            Ok(RouteCommand::Change(Request::RouteAdd {
                dest,
                prefix_len,
                gateway,
            }))
        }
        ["del", dest] => {
            let (dest, prefix_len) = parse_prefix(dest)?;
            Ok(RouteCommand::Change(Request::RouteDel { dest, prefix_len }))
        }
        ["neigh", "add", ip, mac] | ["neigh", "add", ip, "lladdr", mac] => {
            let ip = parse_ip(ip, "neighbour address")?;
            let mac = mac
                .parse::<EthernetAddress>()
                .map_err(|_| format!("bad MAC address {mac:?} (want aa:bb:cc:dd:ee:ff)"))?;
            Ok(RouteCommand::Change(Request::NeighAdd { ip, mac }))
        }
        ["neigh", "del", ip] => Ok(RouteCommand::Change(Request::NeighDel {
            ip: parse_ip(ip, "neighbour address")?,
        })),
        _ => Err("unknown route command".into()),
    }
}

/// The one-line explanation of a refused route change.
fn route_error(request: &Request, errno: i32) -> String {
    let what = match request {
        Request::NeighAdd { .. } | Request::NeighDel { .. } => "neighbour",
        _ => "route",
    };
    let why = match errno {
        libc::EPERM => {
            "permission denied: only root or the netserver's user may change routes".to_string()
        }
        libc::EINVAL => match request {
            Request::NeighAdd { .. } => {
                "invalid argument: the address must be a unicast address other than ours and the MAC a unicast MAC".into()
            }
            _ => "invalid argument: prefix length above 32, address bits set beyond the prefix, or a gateway that is not a unicast address other than ours".into(),
        },
        libc::ENETUNREACH => match request {
            Request::NeighAdd { .. } => "network unreachable: the neighbour is not on msock's link".into(),
            _ => "network unreachable: the gateway is not on msock's link".into(),
        },
        libc::ENOSPC => "no space: the routing region is full".into(),
        libc::ESRCH => format!("no such {what}"),
        other => std::io::Error::from_raw_os_error(other).to_string(),
    };
    format!("{what} change refused: {why}")
}

/// `msock recall ID`: the netserver asks the process holding cached TCP endpoint ID (the `id`
/// column of `msock stat`) to flush it; it is then listed `FLUSHED`.
pub fn recall_command(args: &[String]) -> i32 {
    let [id] = args else {
        eprintln!("usage: msock recall ID");
        return 2;
    };
    let Ok(id) = id.parse::<u64>() else {
        eprintln!("msock recall: '{id}' is not an endpoint id\nusage: msock recall ID");
        return 2;
    };
    let result = connect().and_then(|conn| {
        conn.call(&Request::Recall { id }, &[])
            .map_err(|e| e.to_string())
    });
    match result {
        Ok((Reply::Ok, _)) => 0,
        Ok((Reply::Error { errno }, _)) => {
            let why = match errno {
                libc::ESRCH => "no such endpoint".to_string(),
                libc::EINVAL => "not a cached TCP connection".to_string(),
                libc::EPERM => "only root or the holder's user may recall it".to_string(),
                other => std::io::Error::from_raw_os_error(other).to_string(),
            };
            eprintln!("msock recall: {why}");
            1
        }
        Ok((other, _)) => {
            eprintln!("msock recall: unexpected reply {other:?}");
            1
        }
        Err(e) => {
            eprintln!("msock recall: {e}");
            1
        }
    }
}

pub fn route_command(args: &[String]) -> i32 {
    let command = match parse_route_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("msock route: {e}\n{ROUTE_USAGE}");
            return 2;
        }
    };
    let json = match command {
        RouteCommand::Show { json } => json,
        RouteCommand::Change(request) => {
            let result = connect()
                .and_then(|conn| conn.call(&request, &[]).map_err(|e| format!("route: {e}")));
            return match result {
                Ok((Reply::Ok, _)) => 0,
                Ok((Reply::Error { errno }, _)) => {
                    eprintln!("msock route: {}", route_error(&request, errno));
                    1
                }
                Ok((other, _)) => {
                    eprintln!("msock route: unexpected reply {other:?}");
                    1
                }
                Err(e) => {
                    eprintln!("msock route: {e}");
                    1
                }
            };
        }
    };
    let result = connect().and_then(|conn| {
        let hello = Request::Hello {
            version: VERSION,
            pid: std::process::id(),
        };
        match conn.call(&hello, &[]).map_err(|e| format!("hello: {e}"))? {
            (Reply::Hello { .. }, fds) => {
                let region = fds
                    .into_iter()
                    .next()
                    .ok_or("no region descriptor in reply")?;
                RegionReader::map(region).map_err(|e| format!("routing region: {e}"))
            }
            (other, _) => Err(format!("unexpected reply {other:?}")),
        }
    });
    match result {
        Ok(reader) => {
            let table = reader.snapshot();
            if json {
                println!("{}", table.to_json())
            } else {
                print!("{table}")
            }
            0
        }
        Err(e) => {
            eprintln!("msock route: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<RouteCommand, String> {
        let args: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        parse_route_args(&args)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    #[test]
    fn route_command_lines() {
        assert_eq!(parse(&[]), Ok(RouteCommand::Show { json: false }));
        assert_eq!(parse(&["--json"]), Ok(RouteCommand::Show { json: true }));
        assert_eq!(
            parse(&["show", "--json"]),
            Ok(RouteCommand::Show { json: true })
        );
        assert_eq!(
            parse(&["add", "198.18.0.128/25", "via", "198.18.0.1"]),
            Ok(RouteCommand::Change(Request::RouteAdd {
                dest: ip("198.18.0.128"),
                prefix_len: 25,
                gateway: Some(ip("198.18.0.1")),
            }))
        );
        assert_eq!(
            parse(&["add", "198.18.0.77"]),
            Ok(RouteCommand::Change(Request::RouteAdd {
                dest: ip("198.18.0.77"),
                prefix_len: 32,
                gateway: None,
            }))
        );
        assert_eq!(
            parse(&["del", "default"]),
            Ok(RouteCommand::Change(Request::RouteDel {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
            }))
        );
        // Left to the netserver (EINVAL), so every client gets the same answer.
        assert!(parse(&["del", "198.18.0.0/33"]).is_ok());
        assert_eq!(
            parse(&["neigh", "add", "198.18.0.1", "02:00:00:00:00:77"]),
            Ok(RouteCommand::Change(Request::NeighAdd {
                ip: ip("198.18.0.1"),
                mac: EthernetAddress([2, 0, 0, 0, 0, 0x77]),
            }))
        );
        assert_eq!(
            parse(&["neigh", "del", "198.18.0.1"]),
            Ok(RouteCommand::Change(Request::NeighDel {
                ip: ip("198.18.0.1")
            }))
        );
    }

    #[test]
    fn bad_route_command_lines() {
        for words in [
            &["add"][..],
            &["add", "198.18.0.0/x"],
            &["add", "198.18.0.0/999"],
            &["add", "300.1.1.1/24"],
            &["add", "198.18.0.0/24", "via"],
            &["add", "198.18.0.0/24", "via", "gw"],
            &["add", "198.18.0.0/24", "dev", "x"],
            &["del"],
            &["neigh", "add", "198.18.0.1"],
            &["neigh", "add", "198.18.0.1", "zz:00:00:00:00:00"],
            &["neigh", "del"],
            &["flush"],
        ] {
            assert!(parse(words).is_err(), "{words:?}");
        }
    }

    #[test]
    fn refusals_are_explained() {
        let add = Request::RouteAdd {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: None,
        };
        assert!(route_error(&add, libc::EPERM).contains("only root"));
        assert!(route_error(&add, libc::ENETUNREACH).contains("gateway is not on msock's link"));
        assert!(route_error(&add, libc::ENOSPC).contains("full"));
        let del = Request::NeighDel {
            ip: Ipv4Addr::LOCALHOST,
        };
        assert_eq!(
            route_error(&del, libc::ESRCH),
            "neighbour change refused: no such neighbour"
        );
    }
}
