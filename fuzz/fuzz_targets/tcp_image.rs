//! Fuzzes `msock::stack::tcp::fuzzing::image`: see that module for the script format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    msock::stack::tcp::fuzzing::image(data);
});
