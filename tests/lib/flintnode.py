"""Builds and boots a flint node under qemu for the boot tests and bench/boot.py: a mini root
flist (dash, cat, sleep), flists packed into a store served over HTTP by python, a signed
manifest, the initramfs from initramfs/build.sh, and qemu (KVM only if qemu/accel.sh says so).
Needs: make static, cargo build --release -p netboot -p flist, tests/lib/kernel.sh."""
import glob, json, os, re, shutil, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.path.join(ROOT, "target/release")
INIT = os.path.join(ROOT, "target/x86_64-unknown-linux-musl/release/init")


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def mini_root(root):
    """dash, cat and sleep with their libraries, and /hello.txt."""
    for d in ["bin", "dev", "proc", "sys"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for src, dst in [("/bin/dash", "bin/sh"), ("/bin/cat", "bin/cat"), ("/bin/sleep", "bin/sleep")]:
        shutil.copy(src, os.path.join(root, dst))
        for lib in re.findall(r"(/\S+)", run("ldd", src)):
            os.makedirs(os.path.dirname(root + lib), exist_ok=True)
            shutil.copy(lib, root + lib)
    open(os.path.join(root, "hello.txt"), "w").write("hello from the flist\n")


class Node:
    """A work directory with a signing key, a served store, an initramfs and a kernel."""

    def __init__(self, work, flists=1):
        self.work = work
        self.srv = os.path.join(work, "srv")
        os.makedirs(os.path.join(self.srv, "store"))
        self.kernel_root = run(os.path.join(ROOT, "tests/lib/kernel.sh")).strip()
        self.vmlinuz = glob.glob(os.path.join(self.kernel_root, "boot/vmlinuz-*"))[0]
        self.key = os.path.join(work, "key")
        run(os.path.join(REL, "netboot"), "keygen", self.key)
        self.port = 18000 + os.getpid() % 1000
        tree = os.path.join(work, "tree")
        mini_root(tree)
        self.flists = []
        for i in range(flists):
            out = json.loads(run(os.path.join(REL, "flist"), "pack", tree, "-o", os.path.join(self.srv, f"sys{i}.fl"),
                                 "--store", os.path.join(self.srv, "store"), "--record",
                                 f"http://10.0.2.2:{self.port}/store", "--tag", f"name=sys{i}", "--json"))
            self.flists.append({"name": f"sys{i}", "url": f"sys{i}.fl", "digest": out["digest"],
                                "mountpoint": f"/mnt/sys{i}"})
        self.stripped = os.path.join(work, "init")
        run("strip", "-o", self.stripped, INIT)
        self.initrd = os.path.join(work, "initrd.zst")
        run(os.path.join(ROOT, "initramfs/build.sh"), self.initrd, self.stripped, self.kernel_root, self.key + ".pub")
        self.accel = run(os.path.join(ROOT, "qemu/accel.sh"), self.vmlinuz).strip()
        self.server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port),
                                        "--directory", self.srv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def publish(self, manifest):
        path = os.path.join(self.srv, "manifest.json")
        json.dump(manifest, open(path, "w"))
        run(os.path.join(REL, "netboot"), "sign", path, "--key", self.key)

    def boot(self, disk=None, timeout=300, log="console.log"):
        """Boots until qemu exits (the manifest should power off); returns [(seconds, line)]."""
        args = ["qemu-system-x86_64", "-accel", self.accel, "-m", "1024", "-smp", "2", "-nographic", "-no-reboot",
                "-kernel", self.vmlinuz, "-initrd", self.initrd, "-append",
                f"console=ttyS0 quiet flint.manifest=http://10.0.2.2:{self.port}/manifest.json",
                "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"]
        if disk:
            args += ["-drive", f"file={disk},format=raw,if=virtio"]
        t0 = time.monotonic()
        qemu = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killer = subprocess.Popen(["sh", "-c", f"sleep {timeout}; kill {qemu.pid} 2>/dev/null"])
        lines = []
        with open(os.path.join(self.work, log), "w") as out:
            for raw in qemu.stdout:
                line = raw.decode(errors="replace").rstrip()
                lines.append((time.monotonic() - t0, line))
                out.write(f"{lines[-1][0]:7.2f} {line}\n")
        qemu.wait()
        killer.kill()
        return lines

    def close(self):
        self.server.kill()


def first(lines, text):
    """(seconds, line) of the first console line containing text, or None."""
    return next(((t, l) for t, l in lines if text in l), None)
