#!/usr/bin/env python3
"""Boot figures under qemu (TCG unless KVM really works), all in one run on this machine:

- baseline: the same Debian kernel with a busybox-only initramfs that prints and powers off;
- the demo node (Debian system flist, sshd, web server) booted directly, by PXE and from the USB
  image: qemu start → firmware done → PID 1 → each init step → manifest applied → the web
  server answering the host; bytes the boot server sent vs the system flist's size;
- PID 1's memory with 3 flists mounted and 12 services (9 with readiness checks);
- `trace`: the direct boot on a blank cache disk, which records the system flist's prefetch
  trace there until the node is healthy, then the same boot on an empty cache with that trace
  published beside the flist (system.trace): PID 1 → web ready and the chunk requests made,
  without and with the trace;
- `pid1`: kernel → init of the busybox baseline and of flint's PID 1, in turn, 10 pairs.
Built and served by qemu/flintnode.py. Arguments name the boot paths to time (default: all)."""
import glob, json, os, re, shutil, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "qemu"))
from flintnode import Demo, Site, Vm, http_get, pack_initrd, tcg_accel  # noqa: E402

HTTP, SSH = 18380 + os.getpid() % 400, 19380 + os.getpid() % 400


def busybox_initrd(work):
    """An initramfs with static busybox as /init: prints the uptime (kernel → init) and powers off."""
    out = os.path.join(work, "busybox.cpio.zst")
    if os.path.exists(out):
        return out
    root = os.path.join(work, "bbroot")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "dev"))
    os.makedirs(os.path.join(root, "proc"))
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    subprocess.run(["mknod", os.path.join(root, "dev/console"), "c", "5", "1"], check=True)
    with open(os.path.join(root, "init"), "w") as f:
        f.write("#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n"
                "echo BUSYBOX-UP $(/bin/busybox cat /proc/uptime)\n/bin/busybox poweroff -f\n")
    os.chmod(os.path.join(root, "init"), 0o755)
    return pack_initrd(root, out)


def baseline(site):
    initrd = busybox_initrd(site.work)
    t0 = time.monotonic()
    out = subprocess.run(["qemu-system-x86_64", "-accel", tcg_accel(site.accel), "-m", "1024", "-smp", "2", "-nographic",
                          "-no-reboot", "-kernel", site.vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 quiet"],
                         capture_output=True, text=True, timeout=300)
    total = time.monotonic() - t0
    m = re.search(r"BUSYBOX-UP ([\d.]+)", out.stdout)
    return {"kernel": float(m.group(1)) if m else None, "total": total}


def init_started(site, initrd, cmdline, pattern):
    """Boots `initrd` directly and returns the kernel's uptime when its init printed `pattern` (a
    regex whose group is that uptime); qemu is killed then."""
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", tcg_accel(site.accel), "-m", "1024", "-smp", "2",
                             "-nographic", "-no-reboot", "-kernel", site.vmlinuz, "-initrd", initrd, "-append", cmdline],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace")
    timer = threading.Timer(300, proc.kill)
    timer.start()
    try:
        for text in proc.stdout:
            m = re.search(pattern, text)
            if m:
                return float(m.group(1))
        return None
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def paired(site, pairs=10):
    """Kernel → init for the busybox baseline and for flint's PID 1, boot after boot in turn, so
    that the host's drift over a run (it slows down as it works) falls on both alike."""
    busybox = busybox_initrd(site.work)
    cmdline = "console=ttyS0 quiet"
    diffs = []
    for n in range(pairs):
        base = init_started(site, busybox, cmdline, r"BUSYBOX-UP ([\d.]+)")
        flint = init_started(site, site.initrd, cmdline, r"starting as PID 1, ([\d.]+) s after the kernel")
        print(f"  pair {n + 1}: busybox {base:.2f} s, flint {flint:.2f} s: {flint - base:+.2f} s", flush=True)
        diffs.append(flint - base)
    diffs.sort()
    print(f"kernel → PID 1, flint against busybox over {pairs} pairs: mean {sum(diffs) / pairs:+.2f} s, "
          f"median {diffs[pairs // 2]:+.2f} s")


def answered_at(vm, url, stop):
    """Polls url from the host; sets vm.answered to the console time of the first answer."""
    while not stop.is_set():
        if http_get(url, timeout=2):
            vm.answered = vm.now()
            return
        time.sleep(0.2)


def timed_boot(demo, mode, usb=None, disk=None, log=None, until_healthy=False):
    """Boots the demo node; returns its figures (seconds since qemu start unless said). With
    `until_healthy`, it runs until the node says it is healthy (where its trace is written)."""
    demo.publish()
    demo.site.stop()
    demo.site.serve()
    figures = {}
    log = log or f"console-{mode}.log"
    with Vm(demo.site, mode, usb=usb, disk=disk, hostfwd=[(HTTP, 80), (SSH, 22)], log=log) as vm:
        vm.answered, stop = None, threading.Event()
        poller = threading.Thread(target=answered_at, args=(vm, f"http://127.0.0.1:{HTTP}/", stop), daemon=True)
        poller.start()
        pid1 = vm.wait_for("starting as PID 1", 600)
        vm.wait_for("service web: ready", 600)
        poller.join(120)
        stop.set()
        kernel = float(re.search(r"([\d.]+) s after the kernel", pid1[1]).group(1))
        steps = re.search(r"services: (.*) \(init up", vm.first("steps before services")[1]).group(1)
        figures = {
            "pid1": pid1[0], "kernel": kernel, "firmware": pid1[0] - kernel, "steps": steps,
            "applied": vm.first("manifest version")[0] - pid1[0],
            "web_ready": vm.first("service web: ready")[0] - pid1[0],
            "answered": vm.answered,
        }
        if mode == "pxe":
            figures["ipxe_script"] = vm.first("flint: node")[0]
        node = demo.site.node()
        figures["fetched"] = {k: v["bytes"] for k, v in node.get("by_kind", {}).items()}
        figures["requests"] = {k: v["requests"] for k, v in node.get("by_kind", {}).items()}
        figures["replayed"] = bool(vm.first("replaying the trace"))
        if until_healthy:
            vm.wait_for("is healthy", 300)
            vm.wait_for("trace of", 60)
        demo.poweroff(vm, Quiet(), SSH)
    return figures


class Quiet:
    def expect(self, ok, what):
        if not ok:
            print(f"  (note: {what} did not hold)")


def memory(work):
    site = Site(work, port=None).build_initramfs()
    flists = site.mini_flists(3)
    services = [{"name": f"s{i}", "root": f"sys{i % 3}", "test": ["/bin/cat", "/hello.txt"],
                 "exec": ["/bin/sh", "-c", "exec sleep 100000"]} for i in range(9)]
    services += [
        {"name": "list", "oneshot": True, "after": [f"s{i}" for i in range(9)], "exec": ["/init", "ctl", "list"]},
        {"name": "report", "oneshot": True, "after": ["list"], "root": "sys0",
         "exec": ["/bin/sh", "-c", "cat /proc/1/status > /dev/console; echo ALL-SERVICES-UP > /dev/console"]},
        {"name": "down", "oneshot": True, "after": ["report"], "exec": ["/init", "ctl", "poweroff"]},
    ]
    site.publish({"version": 1, "hostname": "bench", "flists": flists, "services": services})
    site.serve()
    try:
        with Vm(site, "direct", log="console-memory.log") as vm:
            vm.wait_for("reboot: Power down", 600)
            status = {m.group(1): int(m.group(2)) for _, l in vm.lines
                      for m in [re.match(r"(VmRSS|VmHWM|Threads):\s+(\d+)", l)] if m}
            pid1, up = vm.first("starting as PID 1"), vm.first("ALL-SERVICES-UP")
    finally:
        site.stop()
    return status, up[0] - pid1[0]


def traced_boots(demo, work):
    """Boot 1 on a blank cache disk records the trace; it is taken off the disk and published as
    system.trace; boot 2, on an empty cache, replays it. Returns both boots' figures."""
    disk = os.path.join(work, "trace-disk.img")
    # Blank: a disk left by an earlier run keeps its trace, and the node would not record one.
    if os.path.exists(disk):
        os.remove(disk)
    subprocess.run(["truncate", "-s", "512M", disk], check=True)
    subprocess.run(["sfdisk", "-q", disk], input=b"label: gpt\nsize=400M, name=flint-cache\n", check=True)
    published = os.path.join(demo.site.srv, "system.trace")
    if os.path.exists(published):
        os.remove(published)
    recording = timed_boot(demo, "direct", disk=disk, log="console-trace-record.log", until_healthy=True)
    start = json.loads(subprocess.run(["sfdisk", "--json", disk], capture_output=True, check=True).stdout)
    offset = start["partitiontable"]["partitions"][0]["start"] * 512
    mnt = os.path.join(work, "trace-disk")
    os.makedirs(mnt, exist_ok=True)
    # noload: the node powered off without unmounting its cache disk; its journal stays as it is.
    subprocess.run(["mount", "-o", f"loop,ro,noload,offset={offset}", disk, mnt], check=True)
    try:
        traces = glob.glob(os.path.join(mnt, "state", "flists", "*.trace"))
        if not traces:
            raise RuntimeError("boot 1 recorded no trace")
        shutil.copy(traces[0], published)
    finally:
        subprocess.run(["umount", mnt], check=True)
    replaying = timed_boot(demo, "direct", log="console-trace-replay.log")
    return recording, replaying, os.path.getsize(published)


def mib(b):
    return f"{b / (1 << 20):.2f} MiB"


def main():
    work = tempfile.mkdtemp(prefix="flint-bench-boot-")
    demo = Demo(work)
    site = demo.site
    print(f"accelerator: {site.accel}; logs in {work}")
    stripped = os.path.getsize(os.path.join(work, "init"))
    print(f"static init (stripped): {stripped:,} bytes; initramfs: {os.path.getsize(site.initrd):,} bytes "
          f"(zstd -19); kernel: {os.path.getsize(site.vmlinuz):,} bytes")
    base = baseline(site)
    print(f"\nbaseline, kernel + busybox initramfs: qemu start → power off {base['total']:.2f} s; "
          f"kernel → busybox init {base['kernel']:.2f} s")
    system_bytes = demo.system_size
    modes = sys.argv[1:] or ["direct", "pxe", "usb", "trace", "pid1"]
    if "pid1" in modes:
        print("\nkernel → init, the same kernel and command line, busybox and flint boots in turn:")
        paired(site)
        modes = [m for m in modes if m != "pid1"]
        if not modes:
            site.stop()
            return
    usb = site.usb_image(os.path.join(work, "usb.img")) if "usb" in modes else None
    rows = {}
    for mode in [m for m in modes if m != "trace"]:
        rows[mode] = timed_boot(demo, mode, usb=usb)
    if "trace" in modes:
        recording, replaying, trace_size = traced_boots(demo, work)
        rows["direct, recording a trace"] = recording
        rows["direct, with the trace"] = replaying
    print("\n| seconds (qemu start = 0) | " + " | ".join(rows) + " |\n|---|" + "---|" * len(rows))
    line = lambda name, f: print(f"| {name} | " + " | ".join(f(r) for r in rows.values()) + " |")  # noqa: E731
    line("firmware (SeaBIOS/iPXE/OVMF) + loading", lambda r: f"{r['firmware']:.2f}")
    line("kernel → PID 1", lambda r: f"{r['kernel']:.2f}")
    line("PID 1 starts", lambda r: f"{r['pid1']:.2f}")
    line("PID 1 → manifest applied, system flist mounted", lambda r: f"+{r['applied']:.2f}")
    line("PID 1 → web server ready", lambda r: f"+{r['web_ready']:.2f}")
    line("web server answers the host", lambda r: f"{r['answered']:.2f}" if r["answered"] else "-")
    for mode, r in rows.items():
        print(f"{mode}: init steps: {r['steps']}" + (f"; iPXE got the node script at {r['ipxe_script']:.2f} s"
                                                     if "ipxe_script" in r else ""))
    for mode, r in rows.items():
        f = r["fetched"]
        chunks = f.get("chunk", 0)
        print(f"{mode}: fetched from the server: chunks {mib(chunks)} in {r['requests'].get('chunk', 0)} requests "
              f"({100 * chunks / system_bytes:.1f}% of the "
              f"system flist's {mib(system_bytes)}), flist {f.get('flist', 0):,} B, manifest {f.get('manifest', 0):,} B, "
              f"kernel {mib(f.get('kernel', 0))}, initramfs {mib(f.get('initrd', 0))}")
    if "trace" in modes:
        print(f"trace: {trace_size:,} bytes; replayed on the second boot: {rows['direct, with the trace']['replayed']}")
    site.stop()
    status, up = memory(os.path.join(work, "memory"))
    print(f"\nPID 1 with 3 flists + 12 services (all up {up:.2f} s after PID 1): VmRSS "
          f"{status.get('VmRSS', 0) / 1024:.1f} MiB, peak {status.get('VmHWM', 0) / 1024:.1f} MiB, "
          f"{status.get('Threads')} threads")


if __name__ == "__main__":
    main()
