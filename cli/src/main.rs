//! kars CLI.
fn main() {}
