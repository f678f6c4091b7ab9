#!/usr/bin/env bash
# Builds the minimal test guest that sd's QEMU tests and examples boot (see docs/guest.md):
#   OUT_DIR/vmlinuz     the linux-image-cloud-amd64 kernel (newest one in /boot)
#   OUT_DIR/initrd.img  gzip'd cpio: busybox-static, the needed kernel modules, scripts/guest/*
#   OUT_DIR/disk.img    16 MiB ext2 image holding the marker file /sd-disk
#   OUT_DIR/VERSION     hash of all inputs: a re-run with the same inputs does nothing
# Usage: scripts/build-guest.sh [OUT_DIR]   (default $SD_GUEST_DIR, else /var/lib/sd/guest)
# Installs the Debian packages it needs when missing (as root, with apt-get).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${SD_GUEST_DIR:-/var/lib/sd/guest}}

# Modules the guest loads (those built into the kernel are skipped, dependencies are added).
modules="virtio_mmio virtio_pci virtio_net virtio_blk virtio_balloon button evdev pvpanic_mmio pvpanic_pci"

# --- packages -------------------------------------------------------------------------------
packages="linux-image-cloud-amd64 busybox-static cpio e2fsprogs gzip util-linux"
missing=()
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "build-guest: missing packages ${missing[*]} (run as root)" >&2; exit 1; }
  echo "build-guest: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

# --- inputs ---------------------------------------------------------------------------------
kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "build-guest: no /boot/vmlinuz-*-cloud-amd64" >&2; exit 1; }
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
busybox=/bin/busybox
"$busybox" --list-full >/dev/null 2>&1 ||
  { echo "build-guest: $busybox (busybox-static) missing" >&2; exit 1; }

# Module files in load order: for each wanted module, the dependencies modules.dep lists
# (last one first, as modprobe does), then the module itself; each file once.
ordered=()
add() { local f; for f in "${ordered[@]+"${ordered[@]}"}"; do [ "$f" = "$1" ] && return; done; ordered+=("$1"); }
for m in $modules; do
  pat="/${m//_/[-_]}\.ko(\.[a-z]+)?"
  grep -Eq "$pat\$" "$moddir/modules.builtin" 2>/dev/null && continue   # built in
  line=$(grep -E "$pat:" "$moddir/modules.dep" | head -n 1) ||
    { echo "build-guest: module $m neither built in nor in $moddir" >&2; exit 1; }
  read -r -a deps <<<"${line#*:}"
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add "${deps[i]}"; done
  add "${line%%:*}"
done
case "${ordered[*]}" in *.ko.*) echo "build-guest: compressed modules not supported" >&2; exit 1 ;; esac

# Everything the output depends on, hashed: rebuild only when one of them changes.
version=$(
  cd "$moddir" && sha256sum "$kernel" "$busybox" "$here/build-guest.sh" "$here"/guest/* \
    "${ordered[@]+"${ordered[@]}"}" | sed 's/ .*//' | sha256sum | cut -c1-16
)
version="$kver $version"
up_to_date() {
  [ -f "$out/VERSION" ] && [ "$(cat "$out/VERSION")" = "$version" ] &&
    [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/disk.img" ] &&
    echo "build-guest: guest in $out is up to date ($version)"
}
up_to_date && exit 0

# --- build ----------------------------------------------------------------------------------
# Tests run in parallel: one build at a time per OUT_DIR, files replaced by atomic renames.
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
up_to_date && exit 0
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,mnt,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
for path in $("$busybox" --list-full); do
  [ -e "$root/$path" ] || ln -s /bin/busybox "$root/$path"
done
for ko in "${ordered[@]+"${ordered[@]}"}"; do
  mkdir -p "$root/lib/modules/$(dirname "$ko")"
  cp "$moddir/$ko" "$root/lib/modules/$ko"
done
printf '%s\n' "${ordered[@]+"${ordered[@]}"}" >"$root/etc/sd-modules"
install -m 0755 "$here/guest/init" "$root/init"
install -m 0755 "$here/guest/sd-hello" "$here/guest/sd-crash" "$root/bin/"
# The kernel's built-in initramfs already provides /dev/console; owners are forced to root.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
  gzip -9 >"$tmp/initrd.img"

# The disk: ext2 (the kernel's ext4 driver mounts it), made without root from a directory.
mkdir "$tmp/disk"
echo "sd test disk $kver" >"$tmp/disk/sd-disk"
mke2fs -q -F -t ext2 -L sd-disk -d "$tmp/disk" "$tmp/disk.img" 16M >/dev/null

cp "$kernel" "$tmp/vmlinuz"
rm -f "$out/VERSION"
for f in vmlinuz initrd.img disk.img; do mv -f "$tmp/$f" "$out/$f"; done
echo "$version" >"$out/VERSION"
echo "build-guest: built guest in $out ($version; modules: ${#ordered[@]})"
