#!/usr/bin/env python3
"""The demo node booted by PXE: qemu's iPXE ROM gets boot.ipxe from `netboot serve` (slirp's
DHCP boot file), which chains to the node's own script by MAC address; kernel and initramfs come
over HTTP. The node comes up and answers, the server saw it fetch each piece, and a manifest
with `init ctl poweroff` powers it off cleanly."""
import os, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import demo_boot_test  # noqa: E402


def body(vm, demo, c, manifest, http, ssh):
    vm.wait_for("flint: node 52:54:00:12:34:56, profile default", 300)
    c.expect(True, "iPXE fetched the node's script by MAC")
    node = demo.check_up(vm, c, manifest, http, ssh)
    for kind, path in [("kernel", "boot/vmlinuz"), ("initrd", "boot/initrd.zst")]:
        want = os.path.getsize(os.path.join(demo.site.srv, path))
        got = node.get("by_kind", {}).get(kind, {}).get("bytes")
        c.expect(got == want, f"the server sent the whole {kind} over HTTP ({got} of {want} bytes)")
    demo.poweroff(vm, c, ssh)


demo_boot_test("PXE boot", "pxe", body)
