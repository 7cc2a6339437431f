#!/usr/bin/env bash
# Builds a bootable USB disk image: GPT with an EFI system partition holding a unified kernel
# image (systemd's EFI stub + kernel + initramfs + command line, made with objcopy) as the
# removable-media boot path /EFI/BOOT/BOOTX64.EFI, and a blank partition named flint-cache that
# a manifest with "cache": {"format": true} turns into the node's cache disk.
# Usage: usb.sh OUT.img VMLINUZ INITRD CMDLINE
set -euo pipefail
out=$1 vmlinuz=$2 initrd=$3 cmdline=$4
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Each section goes after the previous one, aligned to the stub's section alignment.
printf '%s' "$cmdline" > "$work/cmdline"
printf 'NAME=flint\nID=flint\n' > "$work/os-release"
align=$((16#$(objdump -p "$stub" | awk '$1 == "SectionAlignment" {print $2}')))
offset=0
# objdump -h: "Idx Name Size VMA LMA File-off Algn"; the new sections go after the last one.
while read -r _ _ size vma _; do offset=$(( 16#$size + 16#$vma )); done \
  < <(objdump -h "$stub" | awk 'NF == 7 && $1 ~ /^[0-9]+$/')
args=()
for section in osrel:"$work/os-release" cmdline:"$work/cmdline" linux:"$vmlinuz" initrd:"$initrd"; do
  name=${section%%:*} file=${section#*:}
  offset=$(( (offset + align - 1) / align * align ))
  args+=(--add-section ".$name=$file" --change-section-vma ".$name=$(printf 0x%x "$offset")")
  offset=$(( offset + $(stat -Lc %s "$file") ))
done
objcopy "${args[@]}" "$stub" "$work/BOOTX64.EFI"

# The EFI system partition: FAT32, big enough for the image and some slack.
uki_mib=$(( $(stat -c %s "$work/BOOTX64.EFI") / 1048576 + 1 ))
esp_mib=$(( uki_mib + 40 ))
mkfs.fat -C -F 32 -n FLINT -i 0f1a7000 "$work/esp.img" $(( esp_mib * 1024 )) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# GPT: the ESP at 1 MiB, then 256 MiB for the cache.
rm -f "$out"
truncate -s $(( 1 + esp_mib + 256 + 1 ))M "$out"
sfdisk -q "$out" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
size=256MiB, name=flint-cache
EOF
dd if="$work/esp.img" of="$out" bs=1M seek=1 conv=notrunc status=none
ls -l "$out" | awk '{print $5" bytes: "$9}'
