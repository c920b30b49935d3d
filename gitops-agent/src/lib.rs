//! kars-gitops-agent library: the shared source → verify → render → apply → status pipeline.
