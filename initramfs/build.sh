#!/usr/bin/env bash
# Builds a flint initramfs: the static init as /init, the kernel modules a server or qemu needs
# (with their dependencies), a static mkfs.ext4 and the manifest public key (init carries the
# Mozilla CA roots itself; `flint.ca=` pins another). Same inputs, same bytes:
# sorted entries, fixed times and owners, cpio --reproducible, zstd. Every file's time is the
# build's (SOURCE_DATE_EPOCH, else the last commit's): a floor below which init never trusts its RTC.
# Usage: build.sh OUT.cpio.zst INIT_BINARY KERNEL_ROOT KEY_PUB [--allow-cmdline-key]
set -euo pipefail
out=$1 init=$2 kroot=$3 key=$4 allow=${5:-}
version=$(ls "$kroot/lib/modules")
moddir=$kroot/lib/modules/$version
# Drivers for qemu and common servers (NICs, disks, USB sticks), the cache disk's filesystems (and the crc32c they load
# through soft dependencies), and what init always loads.
wanted="virtio_net virtio_blk virtio_scsi virtio_rng virtio_console e1000 e1000e igb ixgbe i40e
  nvme ahci sd_mod xhci_pci ehci_pci usb_storage uas ext4 btrfs xfs overlay fuse crc32c_generic crc32c_intel"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{dev,proc,sys,run,tmp,etc/flint,lib/modules/$version,var/log}
install -m 0755 "$init" "$root/init"
install -m 0644 "$key" "$root/etc/flint/key.pub"
[ "$allow" = --allow-cmdline-key ] && touch "$root/etc/flint/allow-cmdline-key"
# mkfs.ext4 formats a blank cache partition when the manifest asks: a static mke2fs, built once.
mkdir -p "$root/sbin"
install -m 0755 "$("$(dirname "$0")/mke2fs.sh")" "$root/sbin/mkfs.ext4"
# The module closure: each wanted module's line in modules.dep names it and every dependency.
declare -A files=()
for m in $wanted; do
  line=$(grep -E "(^|/)${m//_/[-_]}\.ko(\.xz|\.zst)?:" "$moddir/modules.dep" || true)
  [ -n "$line" ] || continue   # built in, or absent from this kernel
  for f in ${line/:/}; do files[$f]=1; done
done
# Recompressed with zstd: init unpacks them itself (zstd decodes many times faster than the
# kernel's xz, which is all a distribution kernel may decompress), and they stay small in the
# memory the initramfs lives in.
stored() { echo "${1%.ko*}.ko.zst"; }
for f in "${!files[@]}"; do
  mkdir -p "$root/lib/modules/$version/$(dirname "$f")"
  case $f in
    *.xz) xz -dc "$moddir/$f" ;;
    *.zst) zstd -dcq "$moddir/$f" ;;
    *.gz) gzip -dc "$moddir/$f" ;;
    *) cat "$moddir/$f" ;;
  esac | zstd -q -19 -o "$root/lib/modules/$version/$(stored "$f")"
done
# Indexes restricted to what is in the image, so init never looks for a missing file.
for f in "${!files[@]}"; do grep -E "^$f:" "$moddir/modules.dep"; done | sed -E 's/\.ko(\.xz|\.zst|\.gz)?( |:|$)/.ko.zst\2/g' | sort > "$root/lib/modules/$version/modules.dep"
names=$(for f in "${!files[@]}"; do basename "$f" | sed -E 's/\.ko(\.xz|\.zst)?$//; s/-/_/g'; done | sort -u | paste -sd'|')
grep -E " ($names)\$" "$moddir/modules.alias" | sort > "$root/lib/modules/$version/modules.alias" || true
cp "$moddir/modules.builtin" "$moddir/modules.softdep" "$root/lib/modules/$version/"
when=${SOURCE_DATE_EPOCH:-$(git -C "$(dirname "$0")" log -1 --format=%ct 2>/dev/null || echo 0)}
find "$root" -exec touch -h -d "@$when" {} +
(cd "$root" && { echo .; find . -mindepth 1 | LC_ALL=C sort; } | \
  cpio --quiet --reproducible -o -H newc -R 0:0) > "$work/body.cpio"
# /dev/console must exist before init opens anything (the FUSE fd must not land on 0-2).
python3 - "$work/dev.cpio" <<'PY'
import sys, struct
def entry(name, mode, rdev_major=0, rdev_minor=0):
    name = name.encode() + b"\0"
    hdr = b"070701" + b"".join(b"%08X" % v for v in [0, mode, 0, 0, 1, 0, 0, 0, 0, rdev_major, rdev_minor, len(name), 0])
    data = hdr + name
    return data + b"\0" * ((4 - len(data) % 4) % 4)
with open(sys.argv[1], "wb") as f:
    f.write(entry("dev", 0o040755) + entry("dev/console", 0o020600, 5, 1) + entry("TRAILER!!!", 0))
PY
# The kernel unpacks concatenated archives in order: the device node first, then the body.
cat "$work/dev.cpio" "$work/body.cpio" | zstd -q -19 -T0 -f -o "$out"
ls -l "$out" | awk '{print $5" bytes: "$9}'
