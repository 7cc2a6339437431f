#!/usr/bin/env python3
"""The demo node booted from the USB image (`make usb`) under OVMF: GPT, an EFI system
partition with a unified kernel image as /EFI/BOOT/BOOTX64.EFI, and a blank flint-cache
partition that the manifest has init format. The stick is a qemu-xhci usb-storage device. The
node comes up from the server named in the image's command line, answers, keeps its cache on
the stick, and powers off cleanly."""
import os, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import Checks, Demo, Vm  # noqa: E402

HTTP, SSH = 18180 + os.getpid() % 400, 19180 + os.getpid() % 400


def main():
    work = tempfile.mkdtemp(prefix="flint-usb-")
    demo = Demo(work)
    c = Checks("USB boot")
    usb = demo.site.usb_image(os.path.join(work, "usb.img"))
    manifest = demo.publish()
    demo.site.serve()
    try:
        with Vm(demo.site, "usb", usb=usb, hostfwd=[(HTTP, 80), (SSH, 22)]) as vm:
            pid1 = vm.wait_for("starting as PID 1", 600)
            c.expect(pid1, f"OVMF booted the unified kernel image from the USB stick ({pid1[0]:.1f} s)")
            demo.check_up(vm, c, manifest, HTTP, SSH)
            c.expect(vm.first("formatted (ext4) and mounted on /var/cache/flint"),
                     "the stick's blank flint-cache partition became the cache disk")
            demo.poweroff(vm, c, SSH)
    except TimeoutError as e:
        c.expect(False, str(e))
    finally:
        demo.site.stop()
    c.finish(work)


main()
