#!/usr/bin/env python3
"""Boots a flint node under qemu (TCG unless KVM works) and times it: qemu start to PID 1, each
boot step init logs, PID 1 to every service up, and PID 1's memory with 3 flists mounted and 12
services. The node: Debian's 6.12 kernel, the initramfs from initramfs/build.sh, a signed
manifest and flists served over HTTP by python on 127.0.0.1 (qemu user networking).

Needs: make static, cargo build --release -p netboot -p flist, tests/lib/kernel.sh."""
import glob, json, os, re, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target/release")
INIT = os.path.join(ROOT, "target/x86_64-unknown-linux-musl/release/init")

def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout

def mini_root(root):
    """dash, cat, sleep and their libraries, and a file to read."""
    for d in ["bin", "dev", "proc", "sys"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for src, dst in [("/bin/dash", "bin/sh"), ("/bin/cat", "bin/cat"), ("/bin/sleep", "bin/sleep")]:
        shutil.copy(src, os.path.join(root, dst))
        for lib in re.findall(r"(/\S+)", run("ldd", src)):
            os.makedirs(os.path.dirname(root + lib), exist_ok=True)
            shutil.copy(lib, root + lib)
    open(os.path.join(root, "hello.txt"), "w").write("hello from the flist\n")

def main():
    kernel_root = run(os.path.join(ROOT, "tests/lib/kernel.sh")).strip()
    work = tempfile.mkdtemp(prefix="flint-boot-")
    srv = os.path.join(work, "srv")
    os.makedirs(os.path.join(srv, "store"))
    mini_root(os.path.join(work, "tree"))
    key = os.path.join(work, "key")
    run(os.path.join(REL, "netboot"), "keygen", key)
    port = 18000 + os.getpid() % 1000
    store = f"http://10.0.2.2:{port}/store"
    flists = []
    for i in range(3):
        out = json.loads(run(os.path.join(REL, "flist"), "pack", os.path.join(work, "tree"), "-o",
                             os.path.join(srv, f"sys{i}.fl"), "--store", os.path.join(srv, "store"),
                             "--record", store, "--tag", f"name=sys{i}", "--json"))
        flists.append({"name": f"sys{i}", "url": f"sys{i}.fl", "digest": out["digest"], "mountpoint": f"/mnt/sys{i}"})
    services = [{"name": f"s{i}", "root": f"sys{i % 3}", "test": ["/bin/cat", "/hello.txt"],
                 "exec": ["/bin/sh", "-c", "exec sleep 100000"]} for i in range(9)]
    services += [
        {"name": "list", "oneshot": True, "after": [f"s{i}" for i in range(9)], "exec": ["/init", "ctl", "list"]},
        {"name": "report", "oneshot": True, "after": ["list"], "root": "sys0",
         "exec": ["/bin/sh", "-c", "cat /proc/1/status > /dev/console; echo ALL-SERVICES-UP > /dev/console"]},
        {"name": "down", "oneshot": True, "after": ["report"], "exec": ["/init", "ctl", "poweroff"]},
    ]
    manifest = os.path.join(srv, "manifest.json")
    json.dump({"version": 1, "hostname": "bench", "flists": flists, "services": services}, open(manifest, "w"))
    run(os.path.join(REL, "netboot"), "sign", manifest, "--key", key)
    stripped = os.path.join(work, "init")
    run("strip", "-o", stripped, INIT)
    initrd = os.path.join(work, "initrd.zst")
    run(os.path.join(ROOT, "initramfs/build.sh"), initrd, stripped, kernel_root, key + ".pub")
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                               "--directory", srv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    vmlinuz = glob.glob(os.path.join(kernel_root, "boot/vmlinuz-*"))[0]
    accel = run(os.path.join(ROOT, "qemu/accel.sh"), vmlinuz).strip()
    t0 = time.monotonic()
    qemu = subprocess.Popen(["qemu-system-x86_64", "-accel", accel, "-m", "1024", "-smp", "2", "-nographic",
        "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd, "-append",
        f"console=ttyS0 quiet flint.manifest=http://10.0.2.2:{port}/manifest.json",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marks, status = {}, {}
    log = open(os.path.join(work, "console.log"), "w")
    deadline = t0 + 300
    for raw in qemu.stdout:
        line = raw.decode(errors="replace").rstrip()
        now = time.monotonic() - t0
        log.write(f"{now:7.2f} {line}\n")
        for key_, pat in [("pid1", "starting as PID 1"), ("steps", "steps before services"),
                          ("applied", "manifest version"), ("up", "ALL-SERVICES-UP"), ("off", "reboot: Power down")]:
            if pat in line and key_ not in marks:
                marks[key_] = (now, line)
        m = re.match(r"(VmRSS|VmHWM|Threads):\s+(\d+)", line)
        if m:
            status[m.group(1)] = int(m.group(2))
        if time.monotonic() > deadline:
            qemu.kill()
    qemu.wait()
    server.kill()
    print(f"accelerator: {accel}; console log: {log.name}")
    print(f"static init (stripped): {os.path.getsize(stripped):,} bytes; initramfs: {os.path.getsize(initrd):,} bytes")
    if "pid1" not in marks or "up" not in marks:
        print("the node did not come up; see the console log"); sys.exit(1)
    pid1 = marks["pid1"][0]
    print(f"qemu start -> PID 1:             {pid1:6.2f} s (firmware + kernel)")
    steps = re.search(r"services: (.*) \(init up", marks["steps"][1]).group(1)
    print(f"PID 1 steps:                     {steps}")
    print(f"PID 1 -> manifest applied:       {marks['applied'][0] - pid1:6.2f} s (fetch, verify, 3 flists mounted)")
    print(f"PID 1 -> all 9 services ready:   {marks['up'][0] - pid1:6.2f} s")
    if "off" in marks:
        print(f"poweroff request -> power down:  {marks['off'][0] - marks['up'][0]:6.2f} s (after the report)")
    print(f"PID 1 memory, 3 flists + 12 services: VmRSS {status.get('VmRSS', 0) / 1024:.1f} MiB, "
          f"peak {status.get('VmHWM', 0) / 1024:.1f} MiB, {status.get('Threads')} threads")

main()
