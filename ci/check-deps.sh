#!/usr/bin/env bash
# Fails when OpenSSL, native-tls or a second rustls crypto provider (ring) enters the Rust
# dependency tree. The project uses rustls with aws-lc-rs only (docs/architecture.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bad=0
for crate in openssl-sys openssl native-tls ring; do
  if out="$(cargo tree --workspace --all-targets --edges normal,build,dev -i "$crate" 2>/dev/null)" && [ -n "$out" ]; then
    echo "forbidden crate in the dependency tree: $crate" >&2
    echo "$out" | head -n 20 >&2
    bad=1
  fi
done
if ! cargo tree --workspace -i aws-lc-rs >/dev/null 2>&1; then
  echo "aws-lc-rs is not in the tree: the rustls crypto provider changed; update docs/architecture.md" >&2
  bad=1
fi
[ $bad -eq 0 ] && echo "dependency check: rustls + aws-lc-rs only (no OpenSSL, native-tls or ring)"
exit $bad
