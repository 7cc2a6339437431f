#!/usr/bin/env python3
"""The demo node booted directly (qemu -kernel/-initrd) from `netboot serve`, checked on its
console, over the network and on the server's status page:

1. network up, manifest verified, the Debian system flist mounted, sshd and the web server
   answer from the host; the node reported its stages to the server.
2. A tampered manifest (signature kept, text changed) is refused, the node says so, retries
   with backoff, keeps serving, and applies the next valid one.
3. A chunk tampered in the store is never served: reading the file fails with EIO, the console
   says why, and other files still read.
4. `init ctl poweroff` (a oneshot in a newer manifest) stops everything and powers off cleanly.
5. Second boot with the server down: init retries until the server is back, then comes up.
Also: the initramfs builder gives the same bytes twice."""
import filecmp, json, os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import ROOT, Checks, Demo, Vm, http_get, run, wait_http  # noqa: E402

HTTP, SSH = 18080 + os.getpid() % 500, 19080 + os.getpid() % 500


def main():
    work = tempfile.mkdtemp(prefix="flint-direct-")
    demo = Demo(work)
    site = demo.site
    c = Checks("direct boot")

    again = os.path.join(work, "initrd-again.zst")
    run(os.path.join(ROOT, "initramfs/build.sh"), again, os.path.join(work, "init"), site.kernel_root, site.key + ".pub")
    c.expect(filecmp.cmp(again, site.initrd, shallow=False), "the initramfs builder is reproducible (same bytes twice)")

    first = demo.publish()
    site.serve()
    try:
        # Each part fails as a whole and the next one still runs (at once, if the guest is dead).
        with Vm(site, "direct", hostfwd=[(HTTP, 80), (SSH, 22)]) as vm:
            with c.step("first boot"):
                demo.check_up(vm, c, first, HTTP, SSH)
                modules_loaded(vm, demo, c)
                memory_cache(vm, c)
            with c.step("tampered manifest"):
                tampered_manifest(vm, demo, c)
            with c.step("tampered chunk"):
                tampered_chunk(vm, demo, c)
            with c.step("power off"):
                demo.poweroff(vm, c, SSH)
        with c.step("server down at boot"):
            server_down_at_boot(demo, c)
    finally:
        site.stop()
    c.finish(work)


def cpio_names(data):
    """The names in newc cpio archives one after another (the initramfs is two: /dev, the rest)."""
    names, at = [], 0
    while True:
        at = data.find(b"070701", at)
        if at < 0:
            return names
        size, name_size = int(data[at + 54:at + 62], 16), int(data[at + 94:at + 102], 16)
        name = data[at + 110:at + 110 + name_size - 1].decode()
        if name != "TRAILER!!!":
            names.append(name)
        at += (110 + name_size + 3) // 4 * 4
        at += (size + 3) // 4 * 4


def modules_loaded(vm, demo, c):
    """The initramfs holds its modules as zstd, which this kernel does not decompress: init does,
    and loads the NIC's driver and the background ones with no error from the kernel."""
    modules = [f for f in cpio_names(subprocess.run(["zstd", "-dc", demo.site.initrd], check=True,
                                                    capture_output=True).stdout) if ".ko" in f]
    c.expect(modules and all(f.endswith(".ko.zst") for f in modules),
             f"the initramfs's {len(modules)} modules are all .ko.zst")
    drivers = vm.first("device drivers (")
    c.expect(drivers and "virtio_net" in drivers[1] and "0 failures" in drivers[1],
             f"coldplug loaded the NIC's driver: {drivers and drivers[1][-100:]}")
    late = vm.first("fuse, overlay loaded in the background")
    c.expect(late and "0 failures" in late[1], "fuse and overlay loaded in the background, 0 failures")
    c.expect(not vm.first("compressed module"), "the kernel logged no module it could not decompress")
    # Coldplug reads the buses' and classes' uevents; a walk of the whole device tree in the
    # guest finds no modalias it missed.
    said = vm.first("device modaliases under /sys")
    found = said and re.search(r"(\d+) device modaliases", said[1]).group(1)
    walked = demo.ssh(SSH, "find /sys/devices -name modalias -exec cat {} + | sort -u | grep -c .").stdout.strip()
    c.expect(found and walked == found, f"coldplug saw every device's modalias: {found} (a walk of /sys/devices: {walked})")


def memory_cache(vm, c):
    """Without a cache disk the cache is a tmpfs with large folios for its chunk files."""
    said = vm.first("a tmpfs (")
    c.expect(said and "huge=within_size" in said[1], f"the cache is a tmpfs mounted huge=within_size: {said and said[1][-120:]}")


def tampered_manifest(vm, demo, c):
    path = os.path.join(demo.site.srv, "manifest.json")
    manifest = json.load(open(path))
    manifest["services"][2]["exec"] = ["/bin/sh", "-c", "echo owned"]
    json.dump(manifest, open(path, "w"))  # the old signature stays beside it
    t = demo.reload(vm, SSH)
    hit = vm.wait_for("refusing the manifest", 120, after=t)
    c.expect("signature" in hit[1], f"the tampered manifest is refused, and the console says why: {hit[1][-120:]}")
    again = vm.wait_for("refusing the manifest", 60, after=hit[0] + 0.5)
    c.expect(again, f"init retries by itself (again {again[0] - hit[0]:.1f} s later) and refuses again")
    page = http_get(f"http://127.0.0.1:{HTTP}/")
    c.expect(page and "flint demo node" in page, "the node keeps serving after the refusal")
    stages = [s["stage"] for s in demo.site.node()["stages"]]
    c.expect("error" in stages, "the refusal is reported to the server")
    good = demo.publish()
    t = demo.reload(vm, SSH)
    vm.wait_for(f"manifest version {good['version']} applied", 120, after=t)
    c.expect(True, "the next valid manifest is applied")


def tampered_chunk(vm, demo, c):
    """perl is in the image but nothing runs it: its chunks are neither cached nor read ahead."""
    stat = json.loads(run(os.path.join(ROOT, "target/release/flist"), "stat", "--json", "--chunks",
                          os.path.join(demo.site.srv, "system.fl"), "/usr/bin/perl"))
    chunk = stat["chunks"][len(stat["chunks"]) // 2]["id"]
    path = os.path.join(demo.site.srv, "store", chunk[:2], chunk)
    # A well-formed object (zstd, the right length) with one byte changed: only its hash gives it away.
    plain = bytearray(subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout)
    plain[len(plain) // 2] ^= 0xFF
    open(path, "wb").write(subprocess.run(["zstd", "-c"], input=bytes(plain), check=True, capture_output=True).stdout)
    t = vm.now()
    out = demo.ssh(SSH, "md5sum /usr/bin/perl")
    c.expect(out.returncode != 0 and "Input/output error" in out.stderr,
             f"reading a file with a tampered chunk fails with EIO: {out.stderr.strip()!r}")
    logged = vm.wait_for(f"chunk {chunk} is corrupt", 60, after=t)
    c.expect(logged, f"the console names the bad chunk: {logged[1][-160:]}")
    ok = demo.ssh(SSH, "md5sum /usr/sbin/sshd")
    c.expect(ok.returncode == 0, "other files still read")


def server_down_at_boot(demo, c):
    site = demo.site
    site.stop()
    demo.publish()
    with Vm(site, "direct", hostfwd=[(HTTP, 80), (SSH, 22)], log="console-server-down.log") as vm:
        hit = vm.wait_for("fetching the manifest", 300)
        c.expect(hit, f"boot with the server down: the fetch fails and init goes on: {hit and hit[1][-90:]}")
        t = vm.now()
        time.sleep(5)
        c.expect(not vm.first("applied", after=0), "nothing is applied while the server is down")
        site.serve()
        vm.wait_for("applied", 300, after=t)
        vm.wait_for("service web: ready", 300, after=t)
        page = wait_http(f"http://127.0.0.1:{HTTP}/", 60)
        c.expect(page and "flint demo node" in page, "once the server is back the node comes up and answers")
        retries = [l for _, l in vm.lines if "fetching the manifest" in l]
        c.expect(len(retries) >= 2, f"init retried ({len(retries)} attempts logged)")


if __name__ == "__main__":
    main()
