#!/usr/bin/env python3
"""VMs from flists, on the host: `init run` (the supervisor, not PID 1) applies signed manifests
served by `netboot serve`; each VM is a real qemu guest (Debian's kernel, TCG unless KVM really
works) whose root filesystem is an flist mounted by init's FUSE server and shared by virtiofsd.

The guest's root is busybox with a /sbin/init that says hello on the serial console, then powers
off or serves: a web page through user-mode NAT, a shell on the console, and a power-button
handler (busybox acpid) so that a stop is a clean ACPI shutdown.

Checked: the console line of each guest in the VM's log; a guest powering off (restart
on-failure) ends done and sees its extra disks, on q35 (its kernel from an flist) and on microvm
(an initrd of the node's); the web page through a forwarded port (user-mode NAT) and through a
bridge of the host (a tap on it); typing on `init ctl vm console`;
a killed hypervisor restarted with backoff, its writable root's changes kept; `init ctl vm stop`
shuts the guest down cleanly within the grace period, `start` boots it again; a manifest that
adds a VM starts it, one that changes a VM restarts it (a wiped writable root), one that drops
it stops it. Prints the figures: manifest applied → first console line, and the host memory
(RSS) of the runner, virtiofsd and qemu per VM. Needs `cargo build --release` and virtiofsd."""
import glob, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import REL, Checks, Site, http_get, pack_initrd, run  # noqa: E402

INIT = os.path.join(REL, "init")
GUEST_INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
mode=$(sed -n 's/.*flint.guest=\([a-z]*\).*/\1/p' /proc/cmdline)
boots=-
if touch /var/.writable 2>/dev/null; then boots=$(( $(cat /var/boots 2>/dev/null || echo 0) + 1 )); echo $boots > /var/boots; fi
echo "flint-guest: hello from the flist ($mode, boot $boots, Linux $(uname -r))"
for d in /sys/block/vd*; do [ -e $d/serial ] && echo "flint-guest: disk ${d##*/} serial $(cat $d/serial) $(cat $d/size) sectors ro=$(cat $d/ro)"; done
if [ "$mode" = poweroff ]; then echo "flint-guest: powering off"; poweroff -f; fi
addr=$(sed -n 's/.*flint.ip=\([0-9./]*\).*/\1/p' /proc/cmdline)
ip link set lo up; ip link set eth0 up; ip addr add ${addr:-10.0.2.15/24} dev eth0; ip route add default via 10.0.2.2
mkdir -p /tmp/www; echo "flint guest, boot $boots" > /tmp/www/index.html
httpd -p 80 -h /tmp/www
acpid -f -l /tmp/acpid.log -c /etc/acpi &
# "serving" once acpid holds the power button's event device: a stop right after it must not be lost.
n=0; while [ $n -lt 50 ] && ! ls -l /proc/$!/fd 2>/dev/null | grep -q /dev/input/event; do sleep 0.1; n=$((n+1)); done
echo "flint-guest: serving"
while :; do sh; done
"""
POWER_BUTTON = """#!/bin/sh
echo "flint-guest: power button: shutting down" > /dev/console
sync; poweroff -f
"""


def module_bytes(path):
    """A kernel module, decompressed: busybox's insmod takes plain .ko files only."""
    if path.endswith(".xz"):
        return subprocess.run(["xz", "-dc", path], check=True, capture_output=True).stdout
    return open(path, "rb").read()


def busybox_tree(tree, dirs, applets, scripts):
    """A tree with static busybox in /bin, its `applets` linked to it, and executable `scripts`
    ({path: text})."""
    for d in ["bin", *dirs]:
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(tree, "bin/busybox"))
    for applet in applets:
        os.symlink("busybox", os.path.join(tree, "bin", applet))
    for path, text in scripts.items():
        with open(os.path.join(tree, path), "w") as f:
            f.write(text)
        os.chmod(os.path.join(tree, path), 0o755)
    return tree


def guest_tree(work, kernel_root):
    """busybox (every applet), /sbin/init, the power-button action, and the modules the guest
    loads (input events and the ACPI button for acpid, virtio-net, virtio-blk), decompressed."""
    tree = busybox_tree(os.path.join(work, "guest"),
                        ["sbin", "proc", "sys", "dev", "tmp", "var", "etc/acpi/PWRF", "lib/modules"],
                        [a for a in run("/bin/busybox", "--list").split() if a != "busybox"],
                        {"sbin/init": GUEST_INIT, "etc/acpi/PWRF/00000080": POWER_BUTTON})
    version = os.listdir(os.path.join(kernel_root, "lib/modules"))[0]
    order = []
    for line in run("modprobe", "-d", kernel_root, "-S", version, "--show-depends",
                    "-a", "evdev", "button", "virtio_net", "virtio_blk").splitlines():
        m = re.match(r"insmod (\S+)", line)
        if not m:
            continue
        name = os.path.basename(m.group(1)).split(".ko")[0] + ".ko"
        if name in order:
            continue
        open(os.path.join(tree, "lib/modules", name), "wb").write(module_bytes(m.group(1)))
        order.append(name)
    open(os.path.join(tree, "lib/modules/order"), "w").write("\n".join(order) + "\n")
    return tree


MICRO_INIT = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t devtmpfs dev /dev
insmod /virtio_mmio.ko
mkdir -p /newroot
mount -t virtiofs rootfs /newroot || { echo "flint-initrd: no virtio-fs root"; poweroff -f; }
umount /proc /dev
exec switch_root /newroot /sbin/init
"""


def micro_initrd(work, kernel_root):
    """An initrd for microvm guests: Debian's kernel has virtio_mmio as a module, which must be
    loaded before the virtio-fs root can be found; then it switches to that root."""
    tree = busybox_tree(os.path.join(work, "initrd"), ["proc", "dev", "newroot"],
                        ["sh", "mount", "umount", "insmod", "mkdir", "switch_root", "poweroff"], {"init": MICRO_INIT})
    module = glob.glob(os.path.join(kernel_root, "lib/modules/*/kernel/drivers/virtio/virtio_mmio.ko*"))[0]
    open(os.path.join(tree, "virtio_mmio.ko"), "wb").write(module_bytes(module))
    return pack_initrd(tree, os.path.join(work, "micro-initrd.zst"))


class Node:
    """`init run` against the site's manifest, its stderr read line by line with arrival times."""

    def __init__(self, site, work):
        self.work, self.lines, self.lock = work, [], threading.Lock()
        self.socket = os.path.join(work, "init.sock")
        self.proc = subprocess.Popen(
            [INIT, "run", "--manifest", f"http://127.0.0.1:{site.port}/manifest.json", "--key", site.key + ".pub",
             "--state", os.path.join(work, "state"), "--cache", os.path.join(work, "cache"),
             "--run-dir", os.path.join(work, "run"), "--socket", self.socket,
             "--log-dir", os.path.join(work, "log"), "--backoff-ms", "2000", "--interval-secs", "3600"],
            stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with open(os.path.join(self.work, "init.log"), "w") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                with self.lock:
                    self.lines.append((time.monotonic(), line.rstrip()))

    def said(self, pattern, after=0.0):
        with self.lock:
            return next((t for t, l in self.lines if t >= after and re.search(pattern, l)), None)

    def wait_said(self, pattern, timeout=120, after=0.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.said(pattern, after)
            if t is not None:
                return t
            time.sleep(0.05)
        return None

    def ctl(self, *args, check=True):
        out = subprocess.run([INIT, "ctl", "--socket", self.socket, *args], capture_output=True, text=True,
                             timeout=330)
        if check and out.returncode != 0:
            raise RuntimeError(f"init ctl {' '.join(args)}: {out.stderr}")
        return out.stdout

    def vms(self):
        return {v["name"]: v for v in json.loads(self.ctl("--json", "vm", "list"))}

    def log(self, name):
        return self.ctl("vm", "log", name)

    def wait_log(self, name, pattern, timeout=180, count=1):
        """Polls the VM's log until `pattern` appears `count` times; the moment it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log(name))) >= count:
                return time.monotonic()
            time.sleep(0.1)
        return None

    def wait_state(self, name, state, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            vm = self.vms().get(name)
            if (vm and vm["state"] == state) or (vm is None and state is None):
                return time.monotonic()
            time.sleep(0.1)
        return None


def pids_of(comm):
    return [int(p) for p in subprocess.run(["pgrep", "-x", comm], capture_output=True, text=True).stdout.split()]


def rss_kib(pid):
    try:
        return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
    except (OSError, AttributeError):
        return 0


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def memory(node, name):
    """RSS in MiB of the VM's runner, virtiofsd and qemu."""
    pid = node.vms()[name]["pid"]
    out = {"runner": rss_kib(pid) / 1024}
    for child in children(pid):
        comm = open(f"/proc/{child}/comm").read().strip()
        out["qemu" if comm.startswith("flint-vm") or "qemu" in comm else comm] = rss_kib(child) / 1024
    return out


def main():
    work = tempfile.mkdtemp(prefix="flint-vm-")
    site = Site(work)
    mnt = os.path.join(work, "mnt")
    guest = site.pack("guest", guest_tree(work, site.kernel_root), os.path.join(mnt, "guest"))
    boot_dir = os.path.join(work, "bootfl")
    os.makedirs(boot_dir)
    shutil.copy(site.vmlinuz, os.path.join(boot_dir, "vmlinuz"))
    boot = site.pack("boot", boot_dir, os.path.join(mnt, "boot"))
    http_port = 18500 + os.getpid() % 400
    hello = {"name": "hello", "kernel": "boot:/vmlinuz", "root": "guest", "memory": 256, "restart": "on-failure",
             "cmdline": "console=ttyS0 quiet flint.guest=poweroff",
             "disks": [{"name": "data", "size_mib": 16}, {"name": "seed", "size_mib": 4, "read_only": True}]}
    web = {"name": "web", "kernel": site.vmlinuz, "root": "guest", "writable": True, "memory": 256,
           "cmdline": "console=ttyS0 quiet flint.guest=serve", "stop_timeout": 30,
           "network": {"mode": "user", "forward": [f"tcp:127.0.0.1:{http_port}-:80"]}}

    # A bridge of the host, as a node's uplink bridge would be, for a VM on a tap.
    bridge = "flintbr%d" % (os.getpid() % 1000)
    for cmd in (["link", "add", bridge, "type", "bridge"], ["addr", "add", "10.99.0.1/24", "dev", bridge],
                ["link", "set", bridge, "up"]):
        subprocess.run(["ip", *cmd], check=True)
    bridged = {"name": "br", "kernel": site.vmlinuz, "root": "guest", "memory": 192,
               "cmdline": "console=ttyS0 quiet flint.guest=serve flint.ip=10.99.0.2/24",
               "network": {"mode": "bridge", "bridge": bridge}}

    micro = {"name": "micro", "machine": "microvm", "kernel": site.vmlinuz, "initrd": micro_initrd(work, site.kernel_root),
             "root": "guest", "memory": 192, "restart": "on-failure", "network": {"mode": "none"},
             "cmdline": "console=ttyS0 quiet flint.guest=poweroff"}

    def publish(version, vms):
        site.publish({"version": version, "flists": [guest, boot], "vms": vms})

    c = Checks("vm")
    figures = {}
    publish(1, [hello, web, bridged, micro])
    site.serve()
    node = Node(site, work)
    try:
        c.expect(node.wait_said(r"manifest version 1 applied", 120) is not None, "init applied manifest 1")
        c.expect(node.wait_log("hello", r"flint-guest: hello from the flist \(poweroff") is not None,
                 "hello: the guest's console line (kernel from the boot flist) is in the VM's log")
        c.expect(node.wait_state("hello", "done", 60) is not None,
                 "hello: the guest powered off and, restart on-failure, the VM is done")
        c.expect(node.vms()["hello"]["starts"] == 1, "hello: started once")
        disks = re.findall(r"flint-guest: disk (vd\w+) serial (\w+) (\d+) sectors ro=(\d)", node.log("hello"))
        c.expect(sorted(d[1:] for d in disks) == [("data", "32768", "0"), ("seed", "8192", "1")],
                 f"hello: the guest sees its extra disks by serial, sized and read-only as asked ({disks})")
        c.expect(node.wait_log("micro", r"flint-guest: hello from the flist \(poweroff") is not None
                 and node.wait_state("micro", "done", 60) is not None,
                 "micro: a microvm guest (virtio-mmio, an initrd of the node's) booted from the flist and powered off")

        c.expect(node.wait_log("web", r"flint-guest: serving") is not None, "web: the guest serves")
        page = http_get(f"http://127.0.0.1:{http_port}/", timeout=30)
        c.expect("flint guest, boot 1" in page, f"web: its page through the forwarded port ({page.strip()!r})")
        figures["memory"] = memory(node, "web")
        c.expect(node.wait_log("br", r"flint-guest: serving") is not None, "br: the guest on the bridge serves")
        ports = os.listdir(f"/sys/class/net/{bridge}/brif")
        c.expect(len(ports) == 1 and ports[0].startswith("fl-"), f"br: its tap is a port of the bridge ({ports})")
        page = http_get("http://10.99.0.2/", timeout=30) or ""
        c.expect("flint guest" in page, "br: its page from the host, across the bridge")

        # The console: typed input reaches the guest's shell, its output comes back.
        con = subprocess.Popen([INIT, "ctl", "--socket", node.socket, "vm", "console", "web"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        con.stdin.write(b"echo console-says-$((6*7))\n")
        con.stdin.flush()
        seen, buf, deadline = False, b"", time.monotonic() + 60
        os.set_blocking(con.stdout.fileno(), False)
        while time.monotonic() < deadline and not seen:
            buf += con.stdout.read() or b""
            seen = b"console-says-42" in buf
            time.sleep(0.1)
        con.kill()
        c.expect(seen, "web: a command typed on `init ctl vm console` ran in the guest")

        # A crash: the hypervisor is killed; the runner fails, the supervisor restarts it after
        # its backoff, and the writable root kept the first boot's changes.
        killed = pids_of("flint-vm-web")
        c.expect(len(killed) == 1, "web: its qemu process is named flint-vm-web")
        for p in killed:
            os.kill(p, signal.SIGKILL)
        c.expect(node.wait_log("web", r"flint-guest: serving", count=2) is not None, "web: restarted after the crash")
        row = node.vms()["web"]
        c.expect(row["starts"] == 2 and row["failures"] >= 1, f"web: counted as a failure ({row['starts']} starts)")
        c.expect("[init] failed" in node.log("web"), "web: the log says it failed")
        c.expect("flint guest, boot 2" in http_get(f"http://127.0.0.1:{http_port}/", timeout=30),
                 "web: the writable root kept the guest's changes (boot 2)")

        # A clean stop: ACPI power button, handled by the guest within the grace period.
        asked = time.monotonic()
        node.ctl("vm", "stop", "web")
        stopped = node.wait_state("web", "stopped", 60)
        c.expect(stopped is not None, "web: `init ctl vm stop` stopped it")
        figures["stop"] = (stopped or asked) - asked
        log = node.log("web")
        c.expect("flint-guest: power button: shutting down" in log, "web: the guest shut down on the power button")
        c.expect("did not shut down in time" not in log, "web: within its grace period")
        web_fs = subprocess.run(["pgrep", "-f", "run/vm/web/fs.sock"], capture_output=True, text=True).stdout
        c.expect(not pids_of("flint-vm-web") and not web_fs.strip(), "web: no qemu or virtiofsd left")
        node.ctl("vm", "start", "web")
        c.expect(node.wait_log("web", r"flint-guest: serving", count=3) is not None, "web: `start` boots it again")

        # Reconcile: add a VM (time to its first console line), change one, drop one.
        extra = dict(hello, name="hello2", cmdline="console=ttyS0 quiet flint.guest=poweroff", memory=192)
        web_wiped = dict(web, keep=False)
        publish(2, [hello, web_wiped, extra])
        mark = time.monotonic()
        node.ctl("reload")
        applied = node.wait_said(r"manifest version 2 applied", 120, after=mark)
        first_line = node.wait_log("hello2", r"flint-guest: hello from the flist")
        c.expect(applied is not None and first_line is not None, "v2: the added VM ran")
        if applied and first_line:
            figures["first_line"] = first_line - applied
        c.expect(node.vms()["hello"]["starts"] == 1, "v2: the unchanged VM was left alone")
        # A changed VM is a new service (a new log ring): count in its log file, which stays.
        web_file = os.path.join(work, "log/web.log")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and open(web_file).read().count("flint-guest: serving") < 4:
            time.sleep(0.2)
        c.expect(open(web_file).read().count("flint-guest: serving") == 4, "v2: the changed VM restarted")
        c.expect("flint guest, boot 1" in http_get(f"http://127.0.0.1:{http_port}/", timeout=30),
                 "v2: keep false wiped the writable root (boot 1 again)")
        c.expect(node.wait_state("br", None, 120) is not None and not os.listdir(f"/sys/class/net/{bridge}/brif"),
                 "v2: the VM it no longer names stopped, its tap gone from the bridge")
        publish(3, [hello])
        node.ctl("reload")
        c.expect(node.wait_state("web", None, 120) is not None and "hello2" not in node.vms(),
                 "v3: the dropped VMs are gone")
        c.expect(not pids_of("flint-vm-web"), "v3: web's qemu is gone")
    finally:
        subprocess.run(["ip", "link", "del", bridge])
        try:
            node.ctl("shutdown", check=False)
            node.proc.wait(120)
        except Exception:
            node.proc.kill()
        site.stop()
    c.expect(node.proc.returncode == 0, "init run exited cleanly after shutdown")
    print(f"figures: manifest applied -> first console line of an added VM: "
          f"{figures.get('first_line', float('nan')):.2f} s (accel {open(os.path.join(work, 'run/vm/accel')).read()})")
    print(f"figures: stop (ACPI shutdown) took {figures.get('stop', float('nan')):.2f} s")
    print("figures: host memory of a running VM (256 MiB guest), RSS MiB: "
          + ", ".join(f"{k} {v:.1f}" for k, v in figures.get("memory", {}).items()))
    c.finish(work)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
