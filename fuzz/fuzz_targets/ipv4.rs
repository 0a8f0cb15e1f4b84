//! Fuzzes `msock::wire::fuzzing::ipv4`: parse, and round-trip whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    msock::wire::fuzzing::ipv4(data);
});
