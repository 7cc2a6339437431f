#!/usr/bin/env python3
"""Mounted images, side by side in one run: flist mount vs native tmpfs, squashfuse and casync mount.

Same content for all: a 1 GiB file of random bytes, and a debootstrap'd Debian root. flist and
casync read their chunks from one local HTTP server (python3 http.server on 127.0.0.1); squashfuse
reads its image from tmpfs. Figures: mount time, `find -type f | xargs stat` walk time on a fresh
mount, cold and warm sequential reads of the 1 GiB file, and what `chroot MNT /usr/bin/env true`
and `apt-get --version` fetch, as a share of the image. Run as root (FUSE, chroot).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
FLIST = os.environ.get("FLIST", str(TOP / "target/release/flist"))
GIB = 1 << 30


def run(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def wait_mounted(path, proc=None, timeout=60):
    """Until `path` is a mount point that answers."""
    until = time.time() + timeout
    while time.time() < until:
        if subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0:
            os.listdir(path)
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount of {path} exited: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.01)
    raise RuntimeError(f"{path} never mounted")


def umount(path):
    subprocess.run(["umount", str(path)], stderr=subprocess.DEVNULL)
    until = time.time() + 10
    while subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0 and time.time() < until:
        time.sleep(0.05)


def read_file(path):
    """Sequential read with 1 MiB requests; returns MB/s."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        while os.read(fd, 1 << 20):
            pass
        return size / (time.perf_counter() - t0) / 1e6
    finally:
        os.close(fd)


def best_read(path, times=3):
    return max(read_file(path) for _ in range(times))


def daemon_cpu(mountpoint):
    """CPU seconds used so far by the `flist mount` serving `mountpoint`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if str(mountpoint).encode() in cmd and b"mount" in cmd:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    raise RuntimeError(f"no flist daemon for {mountpoint}")


def wait_idle(mountpoint):
    """Until the daemon stops working in the background (assembling, verifying)."""
    last = daemon_cpu(mountpoint)
    while True:
        time.sleep(0.5)
        now = daemon_cpu(mountpoint)
        if now - last < 0.01:
            return
        last = now


def walk(root):
    return timed(lambda: subprocess.run(
        f"cd '{root}' && find . -type f -print0 | xargs -0 -r stat > /dev/null", shell=True, check=True))


class Bench:
    def __init__(self, work):
        self.work = work
        self.port = None
        self.mounts = []

    def serve(self):
        s = __import__("socket").socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.http = subprocess.Popen(
            [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", str(self.work), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.time() + 10
        while time.time() < until:
            if subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{self.port}/"]).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("http server did not start")

    def mnt(self, name):
        p = self.work / "mnt" / name
        p.mkdir(parents=True, exist_ok=True)
        self.mounts.append(p)
        return p

    def flist_mount(self, image, name, cache, *extra):
        m = self.mnt(name)
        t = timed(lambda: run(FLIST, "mount", "-d", self.work / "fl" / f"{image}.fl", m,
                              "--store", f"http://127.0.0.1:{self.port}/fl/store", "--cache", cache, *extra))
        return m, t

    def squash_mount(self, image, name):
        m = self.mnt(name)
        t = timed(lambda: (run("squashfuse", self.work / f"{image}.sqfs", m), wait_mounted(m)))
        return m, t

    def casync_mount(self, image, name):
        m = self.mnt(name)

        def go():
            self.procs = getattr(self, "procs", [])
            p = subprocess.Popen(["casync", "mount", f"--store=http://127.0.0.1:{self.port}/ca/store/",
                                  str(self.work / "ca" / f"{image}.caidx"), str(m)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.procs.append(p)
            wait_mounted(m, p)
        return m, timed(go)

    def cleanup(self):
        for m in reversed(self.mounts):
            umount(m)
        for p in getattr(self, "procs", []):
            p.kill()
        if getattr(self, "http", None):
            self.http.kill()


def cache_bytes(cache):
    s = json.loads(run(FLIST, "cache", "stats", "--json", "--cache", cache).stdout)
    return s["bytes"]


def main():
    tar = run(TOP / "tests/lib/rootfs.sh", "bookworm-minbase").stdout.decode().strip()
    work = Path(tempfile.mkdtemp(prefix="flint-bench-mount.", dir="/dev/shm"))
    b = Bench(work)
    try:
        measure(b, work, tar)
    finally:
        b.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def measure(b, work, tar):
    big = work / "big"
    big.mkdir()
    run("dd", "if=/dev/urandom", f"of={big / 'file'}", "bs=1M", f"count={GIB >> 20}")
    root = work / "root"
    root.mkdir()
    run("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", tar, "-C", root)
    print("building images (flist pack, mksquashfs zstd-3, casync make) ...", file=sys.stderr)
    for name, src in (("big", big), ("root", root)):
        run(FLIST, "pack", src, "-o", work / "fl" / f"{name}.fl", "--store", f"dir://{work / 'fl' / 'store'}")
        run("mksquashfs", src, work / f"{name}.sqfs", "-comp", "zstd", "-Xcompression-level", "3", "-noappend", "-quiet")
        (work / "ca").mkdir(exist_ok=True)
        run("casync", "make", f"--store={work / 'ca' / 'store'}", work / "ca" / f"{name}.caidx", src)
    root_info = json.loads(run(FLIST, "inspect", "--json", work / "fl" / "root.fl").stdout)
    b.serve()

    # Mount time and tree walk, each on a fresh mount of the root image.
    rows = [("tmpfs (native)", None, walk(root))]
    for label, mount in (("squashfuse", lambda: b.squash_mount("root", "sq-root")),
                         ("casync mount (HTTP store)", lambda: b.casync_mount("root", "ca-root")),
                         ("flist mount (HTTP store)", lambda: b.flist_mount("root", "fl-root", work / "cache-walk"))):
        m, t = mount()
        rows.append((label, t, walk(m)))
    print(f"\nMount and walk: debootstrap bookworm minbase, {root_info['entries']} entries, fresh mounts")
    print(f"  {'':28} {'mount s':>8} {'walk s':>8} {'walk vs squashfuse':>19}")
    sq_walk = rows[1][2]
    for label, t, w in rows:
        ts = "-" if t is None else f"{t:.3f}"
        print(f"  {label:28} {ts:>8} {w:8.3f} {w / sq_walk:18.2f}x")

    # What running a program costs: chroot into a fresh mount with an empty cache.
    cache = work / "cache-chroot"
    m, _ = b.flist_mount("root", "fl-chroot", cache)
    data = root_info["data_bytes"]
    t_env = timed(lambda: run("chroot", m, "/usr/bin/env", "true"))
    env_bytes = cache_bytes(cache)
    t_apt = timed(lambda: run("chroot", m, "/usr/bin/apt-get", "--version"))
    apt_bytes = cache_bytes(cache)
    print(f"\nOn-demand fetch, fresh mount and empty cache (image: {data / 1e6:.1f} MB of file data)")
    print(f"  chroot MNT /usr/bin/env true     {t_env:6.3f} s, {env_bytes / 1e6:6.2f} MB fetched = {100 * env_bytes / data:5.2f}% of the image")
    print(f"  then apt-get --version           {t_apt:6.3f} s, {apt_bytes / 1e6:6.2f} MB in all   = {100 * apt_bytes / data:5.2f}% of the image")

    # The 1 GiB file: cold (from the HTTP store) and warm (best of 3).
    results = []
    tmpfs_warm = best_read(big / "file")
    results.append(("tmpfs (native)", None, tmpfs_warm))
    m, _ = b.squash_mount("big", "sq-big")
    results.append(("squashfuse (image in tmpfs)", read_file(m / "file"), best_read(m / "file")))
    m, _ = b.casync_mount("big", "ca-big")
    results.append(("casync mount (HTTP store)", read_file(m / "file"), best_read(m / "file")))
    cache = work / "cache-big"
    m, _ = b.flist_mount("big", "fl-big", cache)
    results.append(("flist (HTTP store; page cache)", read_file(m / "file"), best_read(m / "file")))
    # New mounts over the warm disk cache: the first open is served from the disk cache; its
    # release assembles the file (once) or verifies the assembled file (once per mount); later
    # opens are passed through to the kernel.
    wait_idle(m)
    for name in ("fl-big2", "fl-big3"):
        m, _ = b.flist_mount("big", name, cache)
        first = read_file(m / "file")
        wait_idle(m)
        passthrough = best_read(m / "file")
    results.append(("flist (new mount, disk cache)", first, passthrough))
    print("\nSequential read of a 1 GiB file (random bytes), 1 MiB requests; flist's last row: first")
    print("read from the disk cache, then reads passed through to the assembled file")
    print(f"  {'':32} {'cold MB/s':>10} {'warm MB/s':>10} {'warm vs tmpfs':>14} {'vs squashfuse':>14}")
    sq = results[1][2]
    for label, cold, warm in results:
        cs = "-" if cold is None else f"{cold:.0f}"
        print(f"  {label:32} {cs:>10} {warm:10.0f} {100 * warm / tmpfs_warm:13.0f}% {warm / sq:13.2f}x")


if __name__ == "__main__":
    main()
