#!/usr/bin/env python3
"""A node with a blank cache disk under qemu: the manifest asks to format it, init does so on the
first boot and keeps the manifest's version there; on the second boot the server offers an older
manifest, init refuses it (rollback) and runs the version kept on the disk."""
import os, subprocess, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import Checks, Site, Vm  # noqa: E402


def main():
    work = tempfile.mkdtemp(prefix="flint-cache-disk-")
    site = Site(work).build_initramfs()
    flists = site.mini_flists()
    disk = os.path.join(work, "disk.img")
    subprocess.run(["truncate", "-s", "256M", disk], check=True)
    # One GPT partition named flint-cache, no filesystem.
    subprocess.run(["sfdisk", "-q", disk], input=b"label: gpt\nsize=200M, name=flint-cache\n", check=True)

    def manifest(version):
        return {"version": version, "cache": {"format": True}, "flists": flists, "services": [
            {"name": "hello", "root": "sys0", "exec": ["/bin/sleep", "1000"],
             "test": ["/bin/cat", "/hello.txt"]},
            {"name": "down", "oneshot": True, "after": ["hello"], "exec": ["/init", "ctl", "poweroff"]}]}

    c = Checks("cache disk")

    def boot(log):
        """Boots until the node powers itself off; a hung node fails the checks below, a dead
        one fails this boot's step."""
        with Vm(site, "direct", disk=disk, log=log) as vm:
            try:
                vm.wait_exit(300)
            except subprocess.TimeoutExpired:
                pass
            return vm

    def expect(vm, text, what):
        c.expect(vm.first(text), what)

    site.serve()
    try:
        with c.step("boot 1"):
            site.publish(manifest(2))
            boot1 = boot("boot1.log")
            expect(boot1, "formatted (ext4) and mounted on /var/cache/flint", "boot 1: the blank partition was formatted")
            expect(boot1, "manifest version 2 applied", "boot 1: version 2 applied")
            expect(boot1, "reboot: Power down", "boot 1: clean power off")
        with c.step("boot 2"):
            site.publish(manifest(1))
            boot2 = boot("boot2.log")
            expect(boot2, "(ext4) on /var/cache/flint", "boot 2: the cache disk mounted as is")
            expect(boot2, "older than the applied version 2: refused", "boot 2: the older manifest refused")
            expect(boot2, "last good manifest (version 2)", "boot 2: version 2 run from the disk")
            expect(boot2, "service hello: ready", "boot 2: the service runs (its readiness check read its flist)")
            expect(boot2, "reboot: Power down", "boot 2: clean power off")
    finally:
        site.stop()
    c.finish(work)


main()
