//! Focused tests of the TCP engine (one fixture per state, crafted segments) and whole
//! transfers through the seeded simulator.
mod rfc;

mod fixtures;
mod interop;
mod states;
mod transfers;
