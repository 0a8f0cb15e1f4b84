//! `msock stat` and `msock route`: ask the netserver of this namespace.

use crate::control::transport::{Connection, ControlAddress};
use crate::control::{Reply, Request, VERSION};
use crate::routing::region::RegionReader;

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

pub fn route_command(args: &[String]) -> i32 {
    let json = match super::parse_flags(args, &[], &["json"]) {
        Ok((flags, pos)) if pos.is_empty() => !flags.is_empty(),
        Ok(_) | Err(_) => {
            eprintln!("usage: msock route [--json]");
            return 2;
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
