#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this):
#   setup (packages + pinned tools), dependency policy, rustfmt, clippy, unit tests,
#   end-to-end tests against a real local control plane.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n==> %s\n' "$*" >&2; }
t0=$SECONDS

step "setup: packages and pinned tools (ci/setup.sh)"
bash ci/setup.sh

step "dependency policy (ci/check-deps.sh)"
bash ci/check-deps.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build everything once (cargo build --workspace --all-targets): binaries the end-to-end tests run, and every test"
cargo build --workspace --all-targets --locked

step "unit tests and end-to-end tests against a real control plane (cargo test --workspace)"
cargo test --workspace --locked -- --test-threads 4

step "all checks passed in $((SECONDS - t0))s"
