//! kars-router library.
