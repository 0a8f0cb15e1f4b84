//! The `msock` command: netserver daemon, `run`, `stat`, `route`, `testnet`.
fn main() {
    std::process::exit(msock::cli::main(std::env::args().collect()));
}
