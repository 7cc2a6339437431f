#!/usr/bin/env python3
"""A node with a blank cache disk under qemu: the manifest asks to format it, init does so on the
first boot (ext4 with fs-verity) and keeps the manifest's version there; on the second boot the
server offers an older manifest, init refuses it (rollback) and runs the version kept on the disk.

On both boots a service reads a 4 MiB file of an flist again and again, dropping the guest's page
cache before each read, and prints its SHA-256. On the first boot, once the file is passed through
to the kernel (assembled in the cache, sealed with fs-verity), the test changes a page of it in
the disk image under the live node, in every copy on the disk (the assembled file, and the
cached chunk holding it): no read may then print altered bytes, and the passthrough reads must fail (EIO) rather
than serve them. On the second boot the altered assembled file is found, dropped, and rebuilt
from chunks fetched again: reads give the true bytes."""
import hashlib, os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import Checks, Site, Vm, mini_root  # noqa: E402

PASSTHROUGH = "passthrough: the kernel reads assembled files directly"
ROUNDS = 30
# Reads /big once a second, its page cache dropped first, and says what it got on the console.
READER = f"""exec >/dev/console 2>&1
i=0
while [ $i -lt {ROUNDS} ]; do
  echo 3 > /proc/sys/vm/drop_caches
  echo "verity-read $i: $(sha256sum /big 2>&1)"
  i=$((i+1))
  sleep 1
done
exit 0"""
READ = re.compile(r"verity-read (\d+): (.*)")


def tamper(disk, page):
    """Flips a byte of every copy of `page` in the disk image; how many there were."""
    with open(disk, "r+b") as f:
        image = f.read()
        at, copies = image.find(page), 0
        while at >= 0:
            f.seek(at + 100)
            f.write(bytes([image[at + 100] ^ 0xFF]))
            copies += 1
            at = image.find(page, at + 1)
        f.flush()
        os.fsync(f.fileno())
    return copies


def main():
    work = tempfile.mkdtemp(prefix="flint-cache-disk-")
    site = Site(work).build_initramfs()
    flists = site.mini_flists()
    tree = os.path.join(work, "verity-tree")
    mini_root(tree, tools=["sha256sum"])
    big = os.urandom(4 << 20)
    open(os.path.join(tree, "big"), "wb").write(big)
    flists.append(site.pack("vfy", tree, "/mnt/vfy"))
    good = hashlib.sha256(big).hexdigest()
    disk = os.path.join(work, "disk.img")
    subprocess.run(["truncate", "-s", "256M", disk], check=True)
    # One GPT partition named flint-cache, no filesystem.
    subprocess.run(["sfdisk", "-q", disk], input=b"label: gpt\nsize=200M, name=flint-cache\n", check=True)

    def manifest(version):
        return {"version": version, "cache": {"format": True}, "flists": flists, "services": [
            {"name": "hello", "root": "sys0", "exec": ["/bin/sleep", "1000"],
             "test": ["/bin/cat", "/hello.txt"]},
            # Dropping the page cache takes sys_admin, outside the default capability set.
            {"name": "reader", "root": "vfy", "oneshot": True, "exec": ["/bin/sh", "-c", READER],
             "capabilities": {"add": ["sys_admin"]}},
            {"name": "down", "oneshot": True, "after": ["hello", "reader"], "exec": ["/init", "ctl", "poweroff"]}]}

    c = Checks("cache disk")

    def boot(log, during=None):
        """Boots until the node powers itself off (`during(vm)` runs meanwhile); a hung node
        fails the checks below, a dead one fails this boot's step."""
        with Vm(site, "direct", disk=disk, log=log) as vm:
            if during:
                during(vm)
            try:
                vm.wait_exit(300)
            except subprocess.TimeoutExpired:
                pass
            return vm

    def expect(vm, text, what):
        c.expect(vm.first(text), what)

    def reads(vm, after=0.0):
        """What the reader printed at or after `after`: [(round, sha256sum's output)]."""
        with vm.cond:
            return [(int(m[1]), m[2]) for t, l in vm.lines if t >= after and (m := READ.search(l))]

    def altered(got):
        return [r for r in got if re.search(r"\b[0-9a-f]{64}\b", r[1]) and good not in r[1]]

    tampered = {}

    def tamper_when_passed_through(vm):
        vm.wait_for(PASSTHROUGH, 300)
        # A read through the passthrough file before the change: it served the true bytes.
        vm.wait_for("verity-read", 120, after=vm.now())
        tampered["at"] = vm.now()
        tampered["copies"] = tamper(disk, big[2 << 20:(2 << 20) + 4096])
        print(f"changed a byte in {tampered['copies']} copies of a page of /big on the disk", flush=True)

    site.serve()
    try:
        with c.step("boot 1"):
            site.publish(manifest(2))
            boot1 = boot("boot1.log", tamper_when_passed_through)
            expect(boot1, "formatted (ext4) and mounted on /var/cache/flint; fs-verity: on",
                   "boot 1: the blank partition was formatted, with fs-verity")
            expect(boot1, "manifest version 2 applied", "boot 1: version 2 applied")
            expect(boot1, PASSTHROUGH, "boot 1: passthrough opens happened (the file was sealed and handed over)")
            after = reads(boot1, tampered["at"]) if "at" in tampered else []
            before = [r for r in reads(boot1) if r not in after]
            c.expect(before and all(good in r[1] for r in before), f"boot 1: reads before the change were true ({len(before)})")
            # The assembled file, and the cached chunk unless the page straddles two chunks.
            c.expect(tampered.get("copies", 0) >= 1, f"boot 1: the page was changed on the disk ({tampered.get('copies')} copies)")
            c.expect(not altered(reads(boot1)), f"boot 1: no read served altered bytes {altered(reads(boot1))}")
            c.expect(any("Input/output error" in r[1] for r in after),
                     f"boot 1: passthrough reads of the changed file failed with EIO ({after[:3]})")
            expect(boot1, "reboot: Power down", "boot 1: clean power off")
        with c.step("boot 2"):
            site.publish(manifest(1))
            boot2 = boot("boot2.log")
            expect(boot2, "(ext4) on /var/cache/flint", "boot 2: the cache disk mounted as is")
            expect(boot2, "older than the applied version 2: refused", "boot 2: the older manifest refused")
            expect(boot2, "last good manifest (version 2)", "boot 2: version 2 run from the disk")
            expect(boot2, "service hello: ready", "boot 2: the service runs (its readiness check read its flist)")
            got = reads(boot2)
            c.expect(not altered(got), f"boot 2: no read served altered bytes {altered(got)}")
            c.expect(len(got) == ROUNDS and all(good in r[1] for r in got),
                     f"boot 2: every read gave the true bytes (the altered file was dropped and rebuilt): {[r for r in got if good not in r[1]][:3]}")
            expect(boot2, "is corrupt (assembled file); dropped", "boot 2: the altered assembled file was dropped")
            expect(boot2, PASSTHROUGH, "boot 2: the rebuilt file was passed through again")
            expect(boot2, "reboot: Power down", "boot 2: clean power off")
    finally:
        site.stop()
    c.finish(work)


main()
