#!/usr/bin/env bash
# Prints the qemu accelerator to use: kvm if a kernel really boots under it here, else tcg.
# /dev/kvm existing is not enough: nested KVM can fail on an MSR assertion or hang, so a kernel
# is booted without a root filesystem until it panics (which ends qemu, given -no-reboot).
# Usage: accel.sh VMLINUZ
set -u
vmlinuz=$1
if [ -w /dev/kvm ]; then
  out=$(timeout 20 qemu-system-x86_64 -accel kvm -m 256 -nographic -no-reboot -kernel "$vmlinuz" \
        -append "console=ttyS0 panic=-1" 2>&1)
  if grep -q "Kernel panic" <<<"$out"; then echo kvm; exit 0; fi
fi
echo tcg
