//! Fuzzes `msock::wire::fuzzing::control_decode`: the control-protocol decoders, with their
//! re-encode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    msock::wire::fuzzing::control_decode(data);
});
