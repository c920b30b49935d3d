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

step "unit tests (cargo test --workspace --exclude kars-e2e)"
cargo test --workspace --exclude kars-e2e --locked

step "building the binaries the end-to-end tests run (cargo build --workspace --bins)"
cargo build --workspace --bins --locked

step "end-to-end tests against a real control plane (cargo test -p kars-e2e)"
cargo test -p kars-e2e --locked -- --test-threads 4

step "all checks passed in $((SECONDS - t0))s"
