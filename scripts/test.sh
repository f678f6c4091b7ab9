#!/usr/bin/env bash
# Runs every check and test of sd: formatting, clippy, and the whole test suite.
# Installs the system packages the tests need when they are missing (as root, with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need. QEMU comes from bookworm-backports so that it matches the
# qemu-utils (qemu-img) this machine kind ships; installing Debian's older qemu-system-x86
# alone would remove that qemu-img (see ../shared/DESIGN.md).
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v losetup >/dev/null 2>&1; then
  echo "== installing qemu-system-x86 and qemu-utils (bookworm-backports)"
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
      >/etc/apt/sources.list.d/sd-backports.list
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
    qemu-system-x86 qemu-utils mount >/dev/null
fi

# Partitions in the cluster tests are nftables rules between the agents' UDP ports.
if ! command -v nft >/dev/null 2>&1; then
  echo "== installing nftables"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null
fi

# The console's browser tests drive a real headless Chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The test guest the VM tests boot (kernel, busybox initramfs, disk); a no-op when current.
echo "== test guest"
export SD_GUEST_DIR=${SD_GUEST_DIR:-/var/lib/sd/guest}
scripts/build-guest.sh "$SD_GUEST_DIR"

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
