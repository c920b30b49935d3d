//! kars-renderer: a policy repository tree in, an ordered list of Kubernetes objects out.
pub mod cel;
pub mod crds;
pub mod diagnostics;
pub mod schema;
pub mod time;
pub mod yaml;
