//! kars-router binary.
fn main() {}
