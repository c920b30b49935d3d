//! kars-gitops-agent binary.
fn main() {}
