"""flint nodes under qemu, for `make qemu`, the boot tests and bench/boot.py.

A Site is a netboot root (WORK/srv) served by `netboot serve`: the Debian kernel, an initramfs
made by initramfs/build.sh with the site's key, flists packed into srv/store and a signed
manifest. A Vm boots it (the kernel directly, by PXE through qemu's iPXE ROM, or from a USB
stick under OVMF) and reads its serial console line by line, so tests wait for what the node
says instead of sleeping. Needs `make static` and `cargo build --release -p netboot -p flist`."""
import glob, json, os, re, shutil, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target/release")
INIT = os.path.join(ROOT, "target/x86_64-unknown-linux-musl/release/init")
# The host as qemu's user network shows it to the guest.
GUEST_HOST = "10.0.2.2"
# The kernel command line of every boot path; {server} is the boot server as the node reaches it.
CMDLINE = "console=ttyS0 quiet flint.manifest={server}/manifest.json flint.report={server}/report"


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


def pack_initrd(tree, out):
    """A directory as a zstd newc cpio owned by root, the form the kernel unpacks as an initramfs."""
    subprocess.run(f"cd {tree} && find . | cpio --quiet -o -H newc -R 0:0 | zstd -q -19 -f -o {out}", shell=True,
                   check=True)
    return out


def flist_entry(name, digest, mountpoint, writable=False):
    """The manifest entry of srv/NAME.fl, its chunks in srv/store (both relative to the manifest)."""
    entry = {"name": name, "url": f"{name}.fl", "digest": digest, "stores": ["store"], "mountpoint": mountpoint}
    if writable:
        entry["writable"] = True
    return entry


class Site:
    """A served netboot root with its signing key, kernel and initramfs."""

    def __init__(self, work, port=None):
        self.work = work
        self.srv = os.path.join(work, "srv")
        for d in ["boot", "store"]:
            os.makedirs(os.path.join(self.srv, d), exist_ok=True)
        self.port = port or 18000 + os.getpid() % 1000
        self.url = f"http://{GUEST_HOST}:{self.port}"
        self.key = os.path.join(work, "key")
        if not os.path.exists(self.key):
            run(os.path.join(REL, "netboot"), "keygen", self.key)
        self.kernel_root = run(os.path.join(ROOT, "tests/lib/kernel.sh")).strip()
        self.vmlinuz = os.path.join(self.srv, "boot/vmlinuz")
        shutil.copy(glob.glob(os.path.join(self.kernel_root, "boot/vmlinuz-*"))[0], self.vmlinuz)
        self.initrd = os.path.join(self.srv, "boot/initrd.zst")
        self.server = None
        self._accel = None
        json.dump({"profiles": {"default": {"kernel": "boot/vmlinuz", "initrd": "boot/initrd.zst", "cmdline": CMDLINE}}},
                  open(os.path.join(self.srv, "netboot.json"), "w"), indent=1)

    def build_initramfs(self):
        """The initramfs of this site (static init, stripped; the site's public key)."""
        stripped = os.path.join(self.work, "init")
        run("strip", "-o", stripped, INIT)
        run(os.path.join(ROOT, "initramfs/build.sh"), self.initrd, stripped, self.kernel_root, self.key + ".pub")
        return self

    @property
    def accel(self):
        if self._accel is None:
            self._accel = run(os.path.join(ROOT, "qemu/accel.sh"), self.vmlinuz).strip()
        return self._accel

    def pack(self, name, source, mountpoint, writable=False):
        """Packs a directory or tarball as srv/NAME.fl; returns its manifest entry."""
        out = json.loads(run(os.path.join(REL, "flist"), "pack", source, "-o", os.path.join(self.srv, f"{name}.fl"),
                             "--store", os.path.join(self.srv, "store"), "--record", f"{self.url}/store",
                             "--tag", f"name={name}", "--json"))
        return flist_entry(name, out["digest"], mountpoint, writable)

    def mini_flists(self, count=1):
        """`count` flists of a small root (dash, cat, sleep, /hello.txt) named sys0, sys1, …"""
        tree = os.path.join(self.work, "tree")
        if not os.path.exists(tree):
            mini_root(tree)
        return [self.pack(f"sys{i}", tree, f"/mnt/sys{i}") for i in range(count)]

    def publish(self, manifest):
        path = os.path.join(self.srv, "manifest.json")
        json.dump(manifest, open(path, "w"), indent=1)
        run(os.path.join(REL, "netboot"), "sign", path, "--key", self.key)

    def cmdline(self):
        return CMDLINE.format(server=self.url)

    def serve(self):
        """Starts `netboot serve` on 127.0.0.1 (the guest's 10.0.2.2); its log goes to WORK/netboot.log."""
        self.server = subprocess.Popen(
            [os.path.join(REL, "netboot"), "serve", "--root", self.srv, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, "netboot.log"), "a"), text=True)
        line = self.server.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"netboot serve did not start; see {self.work}/netboot.log")
        return self

    def stop(self):
        if self.server:
            self.server.kill()
            self.server.wait()
            self.server = None

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status.json", timeout=10) as r:
            return json.load(r)

    def usb_image(self, out):
        """A GPT disk image with an EFI system partition holding a unified kernel image."""
        run(os.path.join(ROOT, "qemu/usb.sh"), out, self.vmlinuz, self.initrd, self.cmdline())
        return out


def qemu_args(site, mode="direct", disk=None, usb=None, hostfwd=(), memory=1024):
    """The qemu command line booting `site` by `mode` (direct, pxe, usb), serial console on stdio.
    hostfwd: (host port, guest port) pairs on 127.0.0.1."""
    netdev = "user,id=n0" + "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in hostfwd)
    args = ["qemu-system-x86_64", "-accel", site.accel, "-m", str(memory), "-smp", "2", "-nographic",
            "-no-reboot", "-device", "virtio-rng-pci"]
    if mode == "direct":
        args += ["-kernel", site.vmlinuz, "-initrd", site.initrd, "-append", site.cmdline()]
    elif mode == "pxe":
        # qemu's NIC ROM is iPXE: slirp's DHCP hands it the script's URL as boot file.
        netdev += f",bootfile={site.url}/boot.ipxe"
        args += ["-boot", "n"]
    elif mode == "usb":
        vars_copy = os.path.join(site.work, "OVMF_VARS.fd")
        shutil.copy("/usr/share/OVMF/OVMF_VARS_4M.fd", vars_copy)
        args += ["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                 "-drive", f"if=pflash,format=raw,file={vars_copy}",
                 "-drive", f"if=none,id=stick,format=raw,file={usb}",
                 "-device", "qemu-xhci", "-device", "usb-storage,drive=stick"]
    else:
        raise ValueError(f"unknown boot mode {mode!r}")
    args += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]
    if disk:
        args += ["-drive", f"file={disk},format=raw,if=virtio"]
    return args


class Vm:
    """A qemu booting a Site: `direct` (-kernel/-initrd), `pxe` (iPXE ROM, boot.ipxe over HTTP) or
    `usb` (OVMF, the image as a USB stick). The console is read by a thread and kept as
    [(seconds since start, line)], and written to WORK/LOG."""

    def __init__(self, site, mode="direct", disk=None, usb=None, hostfwd=(), log="console.log", memory=1024):
        self.site, self.mode, self.t0 = site, mode, time.monotonic()
        args = qemu_args(site, mode, disk, usb, hostfwd, memory)
        self.lines, self.cond = [], threading.Condition()
        self.log = os.path.join(site.work, log)
        self.qemu = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.log, "w") as out:
            for raw in self.qemu.stdout:
                # Firmware writes escape sequences; keep the text.
                line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", raw.decode(errors="replace")).rstrip()
                with self.cond:
                    self.lines.append((time.monotonic() - self.t0, line))
                    self.cond.notify_all()
                out.write(f"{self.lines[-1][0]:8.2f} {line}\n")
                out.flush()
        with self.cond:
            self.cond.notify_all()

    def first(self, text, after=0.0):
        """(seconds, line) of the first console line containing text (at or after `after`), or None."""
        with self.cond:
            return next(((t, l) for t, l in self.lines if text in l and t >= after), None)

    def wait_for(self, text, timeout=300, after=0.0):
        """Waits for a console line containing text; raises with the console's tail if it never comes."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = next(((t, l) for t, l in self.lines if text in l and t >= after), None)
                if hit:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0 or (self.qemu.poll() is not None and not self.reader.is_alive()):
                    tail = "\n".join(l for _, l in self.lines[-15:])
                    raise TimeoutError(f"no {text!r} on the console after {timeout} s (log {self.log}):\n{tail}")
                self.cond.wait(min(left, 1.0))

    def now(self):
        return time.monotonic() - self.t0

    def wait_exit(self, timeout=300):
        try:
            return self.qemu.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        if self.qemu.poll() is None:
            os.killpg(self.qemu.pid, 9)
            self.qemu.wait()
        self.reader.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def http_get(url, timeout=10):
    """The body of url (str), or None if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode(errors="replace")
    except OSError:
        return None


def wait_http(url, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http_get(url, timeout=5)
        if body is not None:
            return body
        time.sleep(1)
    return None


class Checks:
    """Named expectations of a test; prints each, exits 1 if any failed."""

    def __init__(self, name):
        self.name, self.failed = name, []

    def expect(self, ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            self.failed.append(what)

    def finish(self, work):
        if self.failed:
            print(f"{self.name}: FAILED ({work}): " + "; ".join(self.failed))
            sys.exit(1)
        print(f"{self.name}: ok")


# The demo node's system flist: a debootstrap'd Debian with an ssh daemon and busybox (for httpd).
DEMO_ROOTFS = ("bookworm-demo", "openssh-server,busybox")
# Run once on the writable system flist before the daemons: host keys, the operator's ssh key,
# a web page.
DEMO_SETUP = """set -e
mkdir -p /run/sshd /root/.ssh /srv/www
ssh-keygen -A
printf '%s\\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys
printf '<h1>flint demo node</h1><p>Debian %s on Linux %s, served from the system flist.</p>\\n' \\
  "$(cat /etc/debian_version)" "$(uname -r)" > /srv/www/index.html"""


def port_open(port):
    return ["/bin/bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]


class Demo:
    """The demo node of `make qemu` and the boot tests: a Site whose manifest mounts a Debian
    system flist (writable) and runs sshd and a web server from it."""

    def __init__(self, work, port=None):
        self.site = Site(work, port).build_initramfs()
        tarball = run(os.path.join(ROOT, "tests/lib/rootfs.sh"), *DEMO_ROOTFS).strip()
        system_fl = os.path.join(self.site.srv, "system.fl")
        digest_file = os.path.join(work, "system.digest")
        # Packing is deterministic: repack only when the tarball is newer than the flist.
        if not os.path.exists(digest_file) or os.path.getmtime(tarball) > os.path.getmtime(system_fl):
            entry = self.site.pack("system", tarball, "/mnt/system", writable=True)
            open(digest_file, "w").write(entry["digest"])
        self.system = flist_entry("system", open(digest_file).read().strip(), "/mnt/system", writable=True)
        self.system_size = self.flist_content_size(system_fl)
        self.ssh_key = os.path.join(work, "ssh_key")
        if not os.path.exists(self.ssh_key):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "flint-demo", "-f", self.ssh_key)
        self.version = int(time.time())

    @staticmethod
    def flist_content_size(fl):
        """Bytes of file content the flist describes (what a full download would be)."""
        info = json.loads(run(os.path.join(REL, "flist"), "inspect", fl, "--json"))
        return info["data_bytes"]

    def manifest(self, extra_services=(), version=None):
        """The demo manifest; each call without a version is newer than the last."""
        if version is None:
            self.version += 1
            version = self.version
        key = open(self.ssh_key + ".pub").read().strip()
        services = [
            {"name": "setup", "oneshot": True, "root": "system", "exec": ["/bin/sh", "-c", DEMO_SETUP],
             "env": {"AUTHORIZED_KEY": key}},
            {"name": "sshd", "root": "system", "after": ["setup"], "exec": ["/usr/sbin/sshd", "-D", "-e"],
             "test": port_open(22)},
            {"name": "web", "root": "system", "after": ["setup"],
             "exec": ["/bin/busybox", "httpd", "-f", "-v", "-p", "80", "-h", "/srv/www"], "test": port_open(80)},
        ]
        return {"version": version, "hostname": "flint-demo", "cache": {"format": True},
                "flists": [self.system], "services": services + list(extra_services)}

    def publish(self, **kw):
        manifest = self.manifest(**kw)
        self.site.publish(manifest)
        return manifest

    def check_up(self, vm, c, manifest, http_port, ssh_port):
        """Waits for the node to come up and checks it from every side: console, web server and
        sshd through qemu's forwarded ports, and the boot server's record of it."""
        vm.wait_for("service web: ready", 600)
        vm.wait_for("service sshd: ready", 120)
        c.expect(vm.first("boot: network done"), "network up")
        c.expect(vm.first(f"manifest version {manifest['version']} applied"), "manifest verified and applied")
        c.expect(vm.first("flist system: version") and vm.first("mounted on /mnt/system"), "system flist mounted")
        page = wait_http(f"http://127.0.0.1:{http_port}/", 60)
        c.expect(page and "flint demo node" in page, f"the web server answers from the host: {page!r}")
        out = self.ssh(ssh_port, "cat /etc/debian_version; hostname")
        c.expect(out.returncode == 0 and "flint-demo" in out.stdout, f"ssh with the manifest's key works: {out.stdout!r}")
        node = self.site.status()["nodes"].get("127.0.0.1", {})
        stages = [s["stage"] for s in node.get("stages", [])]
        c.expect(node.get("mac") == "52:54:00:12:34:56", f"the server knows the node's MAC: {node.get('mac')}")
        c.expect({"network", "manifest", "applied", "service"} <= set(stages), f"the node reported its stages: {stages}")
        return node

    def reload(self, vm, ssh_port):
        """SIGHUP to PID 1 from a service over ssh, as an operator would: reconcile now. Returns
        the console time it was sent at (None if ssh failed)."""
        vm.wait_for("service sshd: ready", 300)
        t = vm.now()
        return t if self.ssh(ssh_port, "kill -HUP 1").returncode == 0 else None

    def poweroff(self, vm, c, ssh_port):
        """Publishes a manifest whose last service runs `init ctl poweroff`, and checks the node
        stops its services and powers off."""
        down = self.publish(extra_services=[{"name": "down", "oneshot": True, "after": ["web"],
                                             "exec": ["/init", "ctl", "poweroff"]}])
        t = self.reload(vm, ssh_port)
        vm.wait_for(f"manifest version {down['version']} applied", 120, after=t)
        vm.wait_for("reboot: Power down", 120, after=t)
        c.expect(vm.first("every service is stopped", after=t), "init ctl poweroff: services stopped")
        c.expect(vm.wait_exit(60) == 0, "init ctl poweroff: qemu exited cleanly")

    def ssh(self, port, command, timeout=60):
        """Runs command on the node over ssh (forwarded to 127.0.0.1:port); CompletedProcess."""
        return subprocess.run(["ssh", "-q", "-i", self.ssh_key, "-p", str(port), "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "BatchMode=yes",
                               "root@127.0.0.1", command], capture_output=True, text=True, timeout=timeout)


def demo_boot_test(name, mode, body, usb=False):
    """One boot of the demo node by `mode` as a test: built in a temporary directory, served,
    booted with its web server and sshd forwarded, checked by body(vm, demo, checks, manifest,
    http_port, ssh_port); exits 1 if a check failed."""
    work = tempfile.mkdtemp(prefix=f"flint-{mode}-")
    demo = Demo(work)
    c = Checks(name)
    image = demo.site.usb_image(os.path.join(work, "usb.img")) if usb else None
    manifest = demo.publish()
    demo.site.serve()
    http, ssh = 18180 + os.getpid() % 800, 19180 + os.getpid() % 800
    try:
        with Vm(demo.site, mode, usb=image, hostfwd=[(http, 80), (ssh, 22)]) as vm:
            body(vm, demo, c, manifest, http, ssh)
    except TimeoutError as e:
        c.expect(False, str(e))
    finally:
        demo.site.stop()
    c.finish(work)
