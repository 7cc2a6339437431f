#!/usr/bin/env python3
"""The boot server under a fleet booting at once: `netboot serve` on 127.0.0.1 and N simulated
nodes (netboot/examples/load.rs), each on its own connection doing what a node does — boot
script and its own script by MAC, kernel, initramfs, signed manifest and signature, flist, a
working set of chunks, three signed reports and a signed log batch. The root is a real flint
site: Debian's kernel, the initramfs with the static init, a small flist and its chunks.

Prints requests/s, p50/p99 latency per kind, errors (the target is 0), the server's peak RSS and
CPU time, and the state database's size. RLIMIT_NOFILE is raised for both (500 nodes need more
than 1,024 descriptors). Usage: bench/load.py [NODES ...] (default 500)."""
import json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

from common import NETBOOT, TOP, sh

sys.path.insert(0, str(TOP / "qemu"))
from flintnode import Site  # noqa: E402

PORT = 18900 + os.getpid() % 500
WORKING_SET = 16


def proc_stats(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return hwm, cpu


def run_once(site, nodes, chunks_file):
    state = Path(tempfile.mkdtemp(prefix="flint-load-state-"))
    server = subprocess.Popen([NETBOOT, "serve", "--root", site.srv, "--listen", f"127.0.0.1:{PORT}",
                               "--state", state], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    server.stdout.readline()
    try:
        out = sh(TOP / "target/release/examples/load", "--server", f"http://127.0.0.1:{PORT}", "--nodes", nodes,
                 "--kernel", "boot/vmlinuz", "--initrd", "boot/initrd.zst", "--flist", "sys0.fl",
                 "--chunks", chunks_file, "--working-set", WORKING_SET).stdout
        time.sleep(1.5)  # the request counts are written a second later
        hwm, cpu = proc_stats(server.pid)
    finally:
        server.kill()
        server.wait()
    summary = json.loads(out)
    db = sum(f.stat().st_size for f in state.glob("netboot.db*"))
    shutil.rmtree(state)
    return summary, hwm, cpu, db


def main():
    counts = [int(a) for a in sys.argv[1:]] or [500]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(65536, soft), hard), hard))
    sh("cargo", "build", "-q", "--release", "--example", "load", "-p", "netboot", cwd=TOP)
    work = Path(tempfile.mkdtemp(prefix="flint-load-"))
    site = Site(str(work)).build_initramfs()
    entry = site.mini_flists(1)[0]
    site.publish({"version": 1, "flists": [entry], "services": []})
    config = json.load(open(Path(site.srv) / "netboot.json"))
    config["enrollment"] = "open"
    json.dump(config, open(Path(site.srv) / "netboot.json", "w"))
    chunks = sorted(str(p.relative_to(site.srv)) for p in (Path(site.srv) / "store").rglob("*") if p.is_file())
    chunks_file = work / "chunks.txt"
    chunks_file.write_text("\n".join(chunks) + "\n")
    kernel = os.path.getsize(Path(site.srv) / "boot/vmlinuz")
    initrd = os.path.getsize(Path(site.srv) / "boot/initrd.zst")
    print(f"root: kernel {kernel:,} B, initramfs {initrd:,} B, {len(chunks)} chunks (working set {WORKING_SET})")
    for n in counts:
        summary, hwm, cpu, db = run_once(site, n, chunks_file)
        errors = sum(summary["errors"].values())
        print(f"\n{n} nodes at once: {summary['requests']:,} requests in {summary['wall_s']:.2f} s = "
              f"{summary['requests_per_s']:,.0f} requests/s, {summary['bytes'] / 1e9:.2f} GB, {errors} errors")
        for kind, k in sorted(summary["kinds"].items()):
            print(f"  {kind:<9} {k['requests']:>6,} requests  p50 {k['p50_ms']:8.1f} ms  p99 {k['p99_ms']:8.1f} ms")
        for what, count in summary["errors"].items():
            print(f"  error: {what} ×{count}")
        print(f"  server: peak RSS {hwm / 1024:.1f} MiB, CPU {cpu:.2f} s; state database {db / 1024:.0f} KiB")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
