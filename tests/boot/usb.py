#!/usr/bin/env python3
"""The demo node booted from the USB image (`make usb`) under OVMF: GPT, an EFI system
partition with a unified kernel image as /EFI/BOOT/BOOTX64.EFI, and a blank flint-cache
partition that the manifest has init format. The stick is a qemu-xhci usb-storage device. The
node comes up from the server named in the image's command line, answers, keeps its cache on
the stick, and powers off cleanly."""
import os, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import demo_boot_test  # noqa: E402


def body(vm, demo, c, manifest, http, ssh):
    pid1 = vm.wait_for("starting as PID 1", 600)
    c.expect(pid1, f"OVMF booted the unified kernel image from the USB stick ({pid1[0]:.1f} s)")
    demo.check_up(vm, c, manifest, http, ssh)
    c.expect(vm.first("formatted (ext4) and mounted on /var/cache/flint"),
             "the stick's blank flint-cache partition became the cache disk")
    demo.poweroff(vm, c, ssh)


demo_boot_test("USB boot", "usb", body, usb=True)
