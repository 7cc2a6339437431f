#!/usr/bin/env python3
"""A node under qemu runs a Zero-OS flist as it is: the rfs `.fl` that rfs v2.0.6 made of a
busybox tree (flist/tests/rfs/busybox, blocks in rfs's flat store layout) is a workload flist of
the manifest, pinned by its BLAKE3 digest and mounted by PID 1 through the same FUSE server and
verified cache as flint's own. A service says `"image": "zos"` for it: its command, environment and
working directory come from the flist's `/.startup.toml` (busybox httpd on port 8080). The host
fetches the page through qemu's port forward and compares it with the tree the flist was made
from; a second service shows the environment and directory it was given."""
import json, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import ROOT, Checks, Site, Vm, wait_http  # noqa: E402

HTTP = 18580 + os.getpid() % 300
FIXTURE = os.path.join(ROOT, "flist/tests/rfs/busybox")


def blake3(path):
    out = subprocess.run([os.path.join(ROOT, "target/release/flist"), "inspect", "--json", path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["digest"]


def main():
    work = tempfile.mkdtemp(prefix="flint-rfs-")
    site = Site(work).build_initramfs()
    shutil.copy(os.path.join(FIXTURE, "busybox.fl"), os.path.join(site.srv, "zos.fl"))
    shutil.copytree(os.path.join(FIXTURE, "store"), os.path.join(site.srv, "rfs-store"))
    tree = os.path.join(work, "tree")
    os.makedirs(tree)
    subprocess.run(["tar", "--zstd", "-xpf", os.path.join(FIXTURE, "busybox.tar.zst"), "-C", tree], check=True)
    page = open(os.path.join(tree, "www/index.html")).read()
    # The digest a manifest pins is the BLAKE3 of the .fl file, as for flint's own.
    digest = blake3(os.path.join(site.srv, "zos.fl"))
    services = [
        {"name": "web", "image": "zos",
         "test": ["/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"]},
        {"name": "env", "image": "zos", "oneshot": True, "after": ["web"],
         "exec": ["/bin/sh", "-c", 'echo "rfs-env: greeting=[$GREETING] dir=[$(pwd)]" > /dev/console']},
    ]
    site.publish({"version": 1, "services": services, "flists": [
        {"name": "zos", "url": "zos.fl", "digest": digest, "stores": ["rfs-store"], "mountpoint": "/mnt/zos"}]})
    c = Checks("an rfs .fl as a workload flist under qemu")
    site.serve()
    try:
        with c.step("boot"), Vm(site, "direct", hostfwd=[(HTTP, 8080)], log="console-rfs.log") as vm:
            vm.wait_for("manifest version 1 applied", 400)
            ready = vm.wait_for("service web: ready", 300)
            c.expect(ready, "busybox httpd from the rfs flist, started from its /.startup.toml, is ready")
            got = wait_http(f"http://127.0.0.1:{HTTP}/index.html", 60)
            c.expect(got == page, f"the host gets the page the flist was made from: {got!r}")
            env = vm.wait_for("rfs-env:", 120)
            c.expect(env and "greeting=[hello from rfs]" in env[1] and "dir=[/www]" in env[1],
                     f"the image's environment and working directory reach the service: {env and env[1]}")
            c.expect(not vm.first("is corrupt"), "no block was refused")
    finally:
        site.stop()
    c.finish(work)


main()
