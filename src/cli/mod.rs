//! The `msock` command line: `netserver`, `run`, `stat`, `route`, `testnet`.
//!
//! Each subcommand parses its own flags and returns a process exit status; errors are printed
//! as one line on stderr (`msock: ...`).

mod run;
mod stat;
mod tcp;

/// Entry point; `args[0]` is the program name.
pub fn main(args: Vec<String>) -> i32 {
    let rest = args.get(2..).unwrap_or(&[]);
    match args.get(1).map(String::as_str) {
        Some("netserver") => crate::netserver::command(rest),
        Some("run") => run::command(rest),
        Some("stat") => stat::stat_command(rest),
        Some("route") => stat::route_command(rest),
        Some("recall") => stat::recall_command(rest),
        Some("testnet") => crate::testnet::command(rest),
        Some("tcp") => tcp::command(rest),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            0
        }
        Some("--version") | Some("version") => {
            println!("msock {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some(other) => {
            eprintln!("msock: unknown command '{other}'\n{USAGE}");
            2
        }
        None => {
            eprint!("{USAGE}");
            2
        }
    }
}

const USAGE: &str = "\
usage: msock <command> [args]
  netserver --iface IF --addr A.B.C.D/N [--gateway G]   run the per-namespace netserver
  run [--lib PATH] -- PROG [ARGS...]                    run PROG with libmsock.so preloaded
  stat [--json]                                         endpoints and counters (netstat for msock)
  route [--json]                                        the shared routing region
  route add DEST/N|default [via GW] | route del DEST/N  change routes (root)
  route neigh add IP MAC | route neigh del IP           permanent neighbour entries (root)
  recall ID                                             ask the holder of cached TCP endpoint ID to flush it
  tcp connect ADDR:PORT | tcp listen PORT [options]       netcat over the msock TCP engine (stdin/stdout)
  testnet up|down|stats --name N [--impair SPEC] [--nft-drop P%]
                                                        test namespaces N-a / N-b joined by veth,
                                                        optionally through a link emulator
";

/// Parsed command line: `(name, value)` flags (switches have an empty value) and positionals.
pub(crate) type ParsedArgs = (Vec<(String, String)>, Vec<String>);

/// Splits `--flag value` / `--flag=value` pairs; returns (flags, positional).
pub(crate) fn parse_flags(
    args: &[String],
    with_value: &[&str],
    switches: &[&str],
) -> Result<ParsedArgs, String> {
    let mut flags = Vec::new();
    let mut positional = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(name) = arg.strip_prefix("--") {
            if name.is_empty() {
                positional.extend(iter.by_ref().cloned());
                break;
            }
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if with_value.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or(format!("--{name} needs a value"))?,
                };
                flags.push((name.to_string(), value));
            } else if switches.contains(&name) && inline.is_none() {
                flags.push((name.to_string(), String::new()));
            } else {
                return Err(format!("unknown option --{name}"));
            }
        } else {
            positional.push(arg.clone());
        }
    }
    Ok((flags, positional))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_positional() {
        let (flags, pos) = parse_flags(
            &strings(&["--iface", "a0", "--addr=1.2.3.4/24", "x"]),
            &["iface", "addr"],
            &[],
        )
        .unwrap();
        assert_eq!(
            flags,
            vec![
                ("iface".into(), "a0".into()),
                ("addr".into(), "1.2.3.4/24".into())
            ]
        );
        assert_eq!(pos, strings(&["x"]));
    }

    #[test]
    fn double_dash_ends_flags() {
        let (flags, pos) =
            parse_flags(&strings(&["--json", "--", "--iface"]), &[], &["json"]).unwrap();
        assert_eq!(flags.len(), 1);
        assert_eq!(pos, strings(&["--iface"]));
    }

    #[test]
    fn errors() {
        assert!(parse_flags(&strings(&["--iface"]), &["iface"], &[]).is_err());
        assert!(parse_flags(&strings(&["--bogus"]), &[], &[]).is_err());
        assert!(parse_flags(&strings(&["--json=1"]), &[], &["json"]).is_err());
    }
}
