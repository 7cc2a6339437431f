"""What the Python benchmarks share: the built binaries, running and timing commands, the demo's
Debian root, `netboot serve` on 127.0.0.1 and an `flist mount` that is ready when it returns."""
import json, re, subprocess, time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
FLIST, NETBOOT = TOP / "target/release/flist", TOP / "target/release/netboot"


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def demo_root(tree):
    """Unpacks the demo node's Debian root (built once by tests/lib/rootfs.sh) into `tree`."""
    tar = sh(TOP / "tests/lib/rootfs.sh", "bookworm-demo", "openssh-server,busybox").stdout.decode().strip()
    Path(tree).mkdir(parents=True)
    sh("tar", "-xf", tar, "-C", tree)


def serve(root, port):
    """`netboot serve` of `root` on 127.0.0.1:`port`, answering once this returns; kill() it."""
    server = subprocess.Popen([NETBOOT, "serve", "--root", root, "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    server.stdout.readline()
    return server


class Mount:
    """`flist -v mount FL MNT --cache CACHE EXTRA…`; `took` is the time until MNT was a mount point."""

    def __init__(self, fl, mnt, cache, *extra):
        Path(mnt).mkdir(parents=True, exist_ok=True)
        self.mnt, self.log = str(mnt), f"{mnt}.log"
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(a) for a in (FLIST, "-v", "mount", fl, mnt, "--cache", cache, *extra)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        until = time.time() + 30
        while subprocess.run(["mountpoint", "-q", self.mnt]).returncode != 0:
            if time.time() > until or self.proc.poll() is not None:
                raise RuntimeError(f"flist mount of {fl} failed: {open(self.log).read()}")
            time.sleep(0.005)
        self.took = time.perf_counter() - t0

    def rss_kb(self):
        status = open(f"/proc/{self.proc.pid}/status").read()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))

    def close(self):
        """Unmounts; returns the mount's fetch stats ({} if it printed none)."""
        subprocess.run(["umount", self.mnt], check=True)
        self.proc.wait(30)
        m = re.search(r"fetch stats: (\{.*\})", open(self.log).read())
        return json.loads(m.group(1)) if m else {}
