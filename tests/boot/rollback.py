#!/usr/bin/env python3
"""Health-gated upgrades under qemu, on a cache disk (three boots of one node):

1. Version 1 becomes healthy. Version 2's web service never gets ready: when its 10 s health
   window ends the node goes back to version 1 by itself, reports why, and refuses version 2 at
   every later fetch. The gap without a ready web service is measured from the console.
2. Version 3 never gets ready either, and the power is cut (qemu killed) during its window. The
   next boot starts from version 1, then tries version 3 once more; the power is cut again.
3. The third boot, with the server down, goes back to version 1 from what the node kept (its
   readiness check reads the flist, from the cache); then, with the server up, it refuses
   version 3: a version is tried at most twice."""
import os, subprocess, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import Checks, Site, Vm  # noqa: E402

FETCH_EVERY = 5


def main():
    work = tempfile.mkdtemp(prefix="flint-rollback-")
    site = Site(work).build_initramfs()
    site.cmdline_template += f" flint.interval={FETCH_EVERY}"
    flists = site.mini_flists()
    disk = os.path.join(work, "disk.img")
    subprocess.run(["truncate", "-s", "256M", disk], check=True)
    subprocess.run(["sfdisk", "-q", disk], input=b"label: gpt\nsize=200M, name=flint-cache\n", check=True)

    def manifest(version, ready, window):
        web = f"echo web version {version} up > /dev/console; exec sleep 100000"
        return {"version": version, "cache": {"format": True}, "flists": flists,
                "health": {"require": ["web"], "timeout": window},
                "services": [{"name": "web", "root": "sys0", "exec": ["/bin/sh", "-c", web],
                              "test": ["/bin/sh", "-c", ready], "test_timeout": 3600}]}

    c = Checks("health-gated upgrades under qemu")
    site.serve()
    try:
        site.publish(manifest(1, "cat /hello.txt", 60))
        with c.step("boot 1: a rollback by health"), Vm(site, "direct", disk=disk, log="boot1.log") as vm:
            vm.wait_for("manifest version 1 is healthy", 300)
            site.publish(manifest(2, "exit 1", 10))
            applied = vm.wait_for("manifest version 2 applied", 60)
            c.expect(vm.wait_for("web version 2 up", 30, after=applied[0] - 5), "version 2's web service started")
            handed = vm.first("manifest version 2: handed to the supervisor")
            failed = vm.wait_for("manifest version 2 failed its health check", 60, after=applied[0])
            c.expect("not ready within the 10 s health window: web (testing)" in failed[1], f"the cause is named: {failed[1]}")
            back = vm.wait_for("rolled back to manifest version 1", 60, after=failed[0])
            ready = vm.wait_for("service web: ready", 60, after=back[0] - 1)
            c.expect(vm.wait_for("web version 1 up", 30, after=back[0] - 1), "version 1's web service runs again")
            print(f"upgrade applied → rolled back: {back[0] - applied[0]:.2f} s (10 s window); "
                  f"no ready web service from the hand-over of v2 to v1's readiness again: {ready[0] - handed[0]:.2f} s", flush=True)
            refused = vm.wait_for("refusing manifest version 2: version 2 failed its health check", 3 * FETCH_EVERY + 30,
                                  after=ready[0])
            c.expect(refused, "version 2 is refused at the next fetch")
            c.expect(site.node().get("node"), "the server knows the node by its key")
            stages = [s["stage"] for s in site.node().get("stages", [])]
            c.expect({"healthy", "unhealthy", "rollback"} <= set(stages), f"health and rollback were reported: {stages}")
            site.publish(manifest(3, "exit 1", 600))
            vm.wait_for("manifest version 3: health window of 600 s", 3 * FETCH_EVERY + 60)
            vm.kill()
        with c.step("boot 2: power lost in the window"), Vm(site, "direct", disk=disk, log="boot2.log") as vm:
            cut = vm.wait_for("the health window of version 3 was cut short", 300)
            c.expect("try 1 of 2 failed" in cut[1], f"a failed try is counted: {cut[1]}")
            vm.wait_for("rolled back to manifest version 1", 60)
            vm.wait_for("manifest version 3: try 2 of 2", 3 * FETCH_EVERY + 60)
            vm.wait_for("manifest version 3: health window of 600 s", 60)
            c.expect(not vm.first("is corrupt"), "no pinned chunk was lost to the power cut")
            vm.kill()
        # The server is down for the third boot: the rollback runs from what the node kept (the
        # manifest, the flist files, and the last good version's chunks pinned in its cache).
        site.stop()
        with c.step("boot 3: tried twice, failed"), Vm(site, "direct", disk=disk, log="boot3.log") as vm:
            vm.wait_for("rolled back to manifest version 1", 300)
            c.expect(vm.wait_for("service web: ready", 120), "with the server down, version 1 comes back from the cache")
            c.expect(vm.wait_for("fetching the manifest", 60), "the server was down")
            site.serve()
            refused = vm.wait_for("refusing manifest version 3: version 3 failed its health check", 3 * FETCH_EVERY + 60)
            c.expect(refused, "version 3, tried twice, is refused")
            c.expect(not vm.first("manifest version 3: try"), "and not tried a third time")
            # Every chunk is the last good version's (the versions share their flists), pinned and
            # so flushed to the disk: the power cuts must not have emptied any of them.
            c.expect(not vm.first("is corrupt"), "no pinned chunk was lost to the power cuts")
            vm.kill()
    finally:
        site.stop()
    c.finish(work)


if __name__ == "__main__":
    main()
