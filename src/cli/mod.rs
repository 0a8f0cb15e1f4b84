//! The `msock` command line (being written).
pub fn main(_args: Vec<String>) -> i32 {
    0
}
