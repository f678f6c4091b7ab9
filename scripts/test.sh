#!/usr/bin/env bash
# Runs every check and test of sd: formatting, clippy, and the whole test suite.
# Installs the system packages the tests need when they are missing (as root, with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need, as "command:package" pairs. The description language
# needs none; later layers (QEMU, Chromium ...) add theirs here.
needed=()
missing=()
for pair in "${needed[@]+"${needed[@]}"}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The fuzz targets are a crate of their own (cargo fuzz needs that); make sure they build.
echo "== fuzz targets compile"
cargo check --manifest-path fuzz/Cargo.toml --locked --quiet

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: the sum of every test binary's "test result" line.
echo
grep -E '^test result:' "$log" | awk '{p+=$4; f+=$6; i+=$8} END {print "summary: " p " passed, " f " failed, " i " skipped"}'
exit "$status"
