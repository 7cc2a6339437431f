#!/usr/bin/env python3
"""The demo node booted directly (qemu -kernel/-initrd) from `netboot serve`, checked on its
console, over the network and on the server's status page:

1. network up, manifest verified, the Debian system flist mounted, sshd and the web server
   answer from the host; the node reported its stages to the server.
2. A tampered manifest (signature kept, text changed) is refused, the node says so, keeps
   serving, and applies the next valid one.
3. A chunk tampered in the store is never served: reading the file fails with EIO, the console
   says why, and other files still read.
4. `init ctl poweroff` (a oneshot in a newer manifest) stops everything and powers off cleanly.
5. Second boot with the server down: init retries until the server is back, then comes up.
Also: the initramfs builder gives the same bytes twice."""
import filecmp, json, os, subprocess, sys, tempfile, time

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
        with Vm(site, "direct", hostfwd=[(HTTP, 80), (SSH, 22)]) as vm:
            boot(vm, demo, c, first)
            tampered_manifest(vm, demo, c)
            tampered_chunk(vm, demo, c)
            poweroff(vm, demo, c)
        server_down_at_boot(demo, c)
    except TimeoutError as e:
        c.expect(False, str(e))
    finally:
        site.stop()
    c.finish(work)


def boot(vm, demo, c, manifest):
    vm.wait_for("service web: ready", 300)
    vm.wait_for("service sshd: ready", 60)
    c.expect(vm.first("boot: network done"), "network up")
    c.expect(vm.first(f"manifest version {manifest['version']} applied"), "manifest verified and applied")
    c.expect(vm.first("flist system: version") and vm.first("mounted on /mnt/system"), "system flist mounted")
    page = wait_http(f"http://127.0.0.1:{HTTP}/", 60)
    c.expect(page and "flint demo node" in page, f"the web server answers from the host: {page!r}")
    out = demo.ssh(SSH, "cat /etc/debian_version; hostname")
    c.expect(out.returncode == 0 and "flint-demo" in out.stdout, f"ssh with the manifest's key works: {out.stdout!r}")
    node = demo.site.status()["nodes"].get("127.0.0.1", {})
    stages = [s["stage"] for s in node.get("stages", [])]
    c.expect(node.get("mac") == "52:54:00:12:34:56", f"the server knows the node's MAC: {node.get('mac')}")
    c.expect({"network", "manifest", "applied", "service"} <= set(stages), f"the node reported its stages: {stages}")


def reload(vm, demo):
    """SIGHUP to PID 1 from a service (as an operator would over ssh): reconcile now."""
    t = vm.now()
    out = demo.ssh(SSH, "kill -HUP 1")
    return t if out.returncode == 0 else None


def tampered_manifest(vm, demo, c):
    path = os.path.join(demo.site.srv, "manifest.json")
    manifest = json.load(open(path))
    manifest["services"][2]["exec"] = ["/bin/sh", "-c", "echo owned"]
    json.dump(manifest, open(path, "w"))  # the old signature stays beside it
    t = reload(vm, demo)
    c.expect(t is not None, "SIGHUP sent to PID 1 over ssh")
    hit = vm.wait_for("refusing the manifest", 120, after=t)
    c.expect("signature" in hit[1], f"the tampered manifest is refused, and the console says why: {hit[1][-120:]}")
    page = http_get(f"http://127.0.0.1:{HTTP}/")
    c.expect(page and "flint demo node" in page, "the node keeps serving after the refusal")
    stages = [s["stage"] for s in demo.site.status()["nodes"]["127.0.0.1"]["stages"]]
    c.expect("error" in stages, "the refusal is reported to the server")
    good = demo.publish()
    t = reload(vm, demo)
    vm.wait_for(f"manifest version {good['version']} applied", 120, after=t)
    c.expect(True, "the next valid manifest is applied")


def tampered_chunk(vm, demo, c):
    """perl is in the image but nothing runs it: its chunks are neither cached nor read ahead."""
    stat = json.loads(run(os.path.join(ROOT, "target/release/flist"), "stat", "--json", "--chunks",
                          os.path.join(demo.site.srv, "system.fl"), "/usr/bin/perl"))
    chunk = stat["chunks"][len(stat["chunks"]) // 2]["id"]
    path = os.path.join(demo.site.srv, "store", chunk[:2], chunk)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    t = vm.now()
    out = demo.ssh(SSH, "md5sum /usr/bin/perl")
    c.expect(out.returncode != 0 and "Input/output error" in out.stderr,
             f"reading a file with a tampered chunk fails with EIO: {out.stderr.strip()!r}")
    logged = vm.wait_for(chunk[:16], 60, after=t)
    c.expect(logged, f"the console names the bad chunk: {logged[1][-160:]}")
    ok = demo.ssh(SSH, "md5sum /usr/sbin/sshd")
    c.expect(ok.returncode == 0, "other files still read")


def poweroff(vm, demo, c):
    down = demo.publish(extra_services=[{"name": "down", "oneshot": True, "after": ["web"],
                                         "exec": ["/init", "ctl", "poweroff"]}])
    t = reload(vm, demo)
    vm.wait_for(f"manifest version {down['version']} applied", 120, after=t)
    vm.wait_for("reboot: Power down", 120, after=t)
    c.expect(vm.first("every service is stopped", after=t), "init ctl poweroff: services stopped")
    c.expect(vm.wait_exit(60) == 0, "init ctl poweroff: qemu exited cleanly")


def server_down_at_boot(demo, c):
    site = demo.site
    site.stop()
    demo.publish()
    with Vm(site, "direct", hostfwd=[(HTTP, 80), (SSH, 22)], log="console-server-down.log") as vm:
        hit = vm.wait_for("the node loop retries", 300)
        c.expect(hit, "boot with the server down: the first look fails and init goes on")
        vm.wait_for("fetching the manifest", 120)
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


main()
