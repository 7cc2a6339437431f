"""flint nodes under qemu, for `make qemu`, the boot tests and bench/boot.py.

A Site is a netboot root (WORK/srv) served by `netboot serve`: the Debian kernel, an initramfs
made by initramfs/build.sh with the site's key, flists packed into srv/store and a signed
manifest. A Vm boots it (the kernel directly, by PXE through qemu's iPXE ROM, or from a USB
stick under OVMF) and reads its serial console line by line, so tests wait for what the node
says instead of sleeping. Needs `make static` and `cargo build --release -p netboot -p flist`."""
import atexit, contextlib, glob, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time, traceback, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target/release")
INIT = os.path.join(ROOT, "target/x86_64-unknown-linux-musl/pid1/init")
# The same, built with fault injection (`make static-faults`), for tests/boot/faults.py.
FAULTS_INIT = os.path.join(ROOT, "target/faults/x86_64-unknown-linux-musl/release/init")
# The host as qemu's user network shows it to the guest.
GUEST_HOST = "10.0.2.2"
# The kernel command line of every boot path; {server} is the boot server as the node reaches it.
CMDLINE = "console=ttyS0 quiet flint.manifest={server}/manifest.json flint.report={server}/report"


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def mini_root(root, tools=()):
    """dash, cat and sleep (and the host's `tools`, as /bin/NAME) with their libraries, and
    /hello.txt."""
    for d in ["bin", "dev", "proc", "sys"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    extra = [(shutil.which(t), f"bin/{t}") for t in tools]
    for src, dst in [("/bin/dash", "bin/sh"), ("/bin/cat", "bin/cat"), ("/bin/sleep", "bin/sleep")] + extra:
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
        # What direct boots pass the kernel (netboot.json and USB images keep CMDLINE).
        self.cmdline_template = CMDLINE
        # A site's nodes are taken as they come: a demo node makes its key at first boot.
        json.dump({"profiles": {"default": {"kernel": "boot/vmlinuz", "initrd": "boot/initrd.zst", "cmdline": CMDLINE}},
                   "enrollment": "open"},
                  open(os.path.join(self.srv, "netboot.json"), "w"), indent=1)

    def build_initramfs(self, init=INIT):
        """The initramfs of this site (static init, stripped; the site's public key)."""
        stripped = os.path.join(self.work, "init")
        run("strip", "-o", stripped, init)
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
        return self.cmdline_template.format(server=self.url)

    def serve(self):
        """Starts `netboot serve` on 127.0.0.1 (the guest's 10.0.2.2); its log goes to WORK/netboot.log."""
        self.server = subprocess.Popen(
            [os.path.join(REL, "netboot"), "serve", "--root", self.srv, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, "netboot.log"), "a"), text=True)
        _live.add(self.stop)
        line = self.server.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"netboot serve did not start; see {self.work}/netboot.log")
        # "admin on URL (token in …)": the dashboard and the admin API.
        self.admin_url = self.server.stdout.readline().split()[2]
        return self

    def stop(self):
        if self.server:
            self.server.kill()
            self.server.wait()
            self.server = None
        _live.discard(self.stop)

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status.json", timeout=10) as r:
            return json.load(r)

    def node(self):
        """The node's record: the one it signs its reports as (its node id), last seen first;
        the record of qemu's NAT address if none signed."""
        nodes = self.status()["nodes"].values()
        signed = sorted((n for n in nodes if n.get("node")), key=lambda n: n.get("last_seen", 0), reverse=True)
        return signed[0] if signed else self.status()["nodes"].get("127.0.0.1", {})

    def logs(self, node_id):
        """The log lines the server holds of node `node_id` (dicts: b, n, s, l), [] if none."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/logs/{node_id}?tail=100000", timeout=10) as r:
                return [json.loads(l) for l in r.read().decode().splitlines()]
        except (OSError, ValueError):
            return []

    def metrics(self, node_id):
        """The numbers node `node_id` last sent (Prometheus text), "" if none."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics/{node_id}", timeout=10) as r:
                return r.read().decode()
        except OSError:
            return ""

    def usb_image(self, out):
        """A GPT disk image with an EFI system partition holding a unified kernel image."""
        run(os.path.join(ROOT, "qemu/usb.sh"), out, self.vmlinuz, self.initrd, self.cmdline())
        return out


# Multi-threaded TCG (one host thread per vCPU) on a busy host: one early boot in 100 hung for good
# (RCU stall, CPU 1's timer never fired), and `Oops: int3` in early boot has been seen (the kernel's
# own code patching, text_poke's breakpoints, racing the other vCPU's translated code). One thread
# runs every vCPU instead: the guest still has 2 CPUs.
TCG = "tcg,thread=single"


def tcg_accel(accel):
    """The accelerator argument for qemu: TCG as above; KVM is unchanged."""
    return TCG if accel == "tcg" else accel


def qemu_args(site, mode="direct", disk=None, usb=None, hostfwd=(), memory=1024, rtc=None):
    """The qemu command line booting `site` by `mode` (direct, pxe, usb), serial console on stdio.
    hostfwd: (host port, guest port) pairs on 127.0.0.1; rtc: the time the guest's RTC starts at
    (qemu's `-rtc base=`), the host's by default."""
    netdev = "user,id=n0" + "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in hostfwd)
    args = ["qemu-system-x86_64", "-accel", tcg_accel(site.accel), "-m", str(memory), "-smp", "2", "-nographic",
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
    if rtc:
        args += ["-rtc", f"base={rtc}"]
    return args


class NodeFailure(Exception):
    """A wait on a node that cannot succeed: the text did not come in time, the guest died, or a
    step of the test could not be carried out."""


class GuestDied(NodeFailure):
    """The guest kernel crashed, PID 1 entered its rescue state, or qemu exited."""


# Console lines that mean the guest is dead or dying: the kernel's own reports, at the start of a
# line after its timestamp (so a service's output or a soft-lockup warning does not match), and
# PID 1's rescue state.
DEATH = re.compile(r"^(\[\s*\d+\.\d+\]\s*)?(Kernel panic - not syncing|Oops: |BUG: |kernel BUG at|"
                   r"general protection fault)|RESCUE: ")
# PID 1's first line: a crash before it is the emulator's or the kernel's, not the node's.
PID1_STARTED = "starting as PID 1"
# A guest stuck before PID 1: an RCU stall there means a vCPU stopped taking its timer (seen
# once in 100 early boots under multi-threaded TCG on a busy host: `timer wakeup didn't happen`
# on CPU 1, hung for good). After PID 1 a stall is only a warning; the waits' timeouts rule.
STALL_BEFORE_PID1 = re.compile(r"rcu: INFO: rcu_\w+ (detected|self-detected) stall")
# After a death line, the kernel's report (registers, call trace) is still coming: keep reading
# this long before failing, so the failure shows it.
DEATH_GRACE = 2.0
# Console lines shown when a wait fails.
TAIL = 25

# How to stop every qemu and server this process started: called at exit, whatever the way out.
_live = set()


def _kill_live():
    for stop in list(_live):
        try:
            stop()
        except Exception as e:  # noqa: BLE001 - at exit, one failure must not keep the rest alive
            print(f"cleanup: {e}", file=sys.stderr)


def _exit_on_signal(signum, _frame):
    # SystemExit runs every `finally` and `with` on the way out, then _kill_live.
    sys.exit(128 + signum)


atexit.register(_kill_live)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _exit_on_signal)


class Vm:
    """A qemu booting a Site: `direct` (-kernel/-initrd), `pxe` (iPXE ROM, boot.ipxe over HTTP) or
    `usb` (OVMF, the image as a USB stick). The console is read by a thread and kept as
    [(seconds since start, line)], and written to WORK/LOG.

    The reader watches for the guest's death (DEATH lines, qemu exiting): every wait then fails
    within DEATH_GRACE seconds with the console's last lines. A guest whose kernel dies (or
    stalls) before PID 1 printed its first line is booted again, once, and said so loudly
    (`pre_pid1_crashes` counts it): that is the emulator's fault, not a test result. A death after PID 1 started is
    always a failure."""

    RETRIES_BEFORE_PID1 = 1

    def __init__(self, site, mode="direct", disk=None, usb=None, hostfwd=(), log="console.log", memory=1024, rtc=None):
        self.site, self.mode = site, mode
        self.args = qemu_args(site, mode, disk, usb, hostfwd, memory, rtc)
        self.t0 = time.monotonic()
        self.lines, self.cond = [], threading.Condition()
        self.log = os.path.join(site.work, log)
        self.pre_pid1_crashes = 0
        self.death = None  # (seconds, why) once the guest is dead for good
        self.exit_status = None  # qemu's status once it exited for good
        self._killed = False
        self._pid1 = False
        _live.add(self.kill)
        self.qemu = self._start()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _start(self):
        return subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def _note(self, out, line):
        """Keeps a console line (under the lock) and writes it to the log."""
        with self.cond:
            t = time.monotonic() - self.t0
            self.lines.append((t, line))
            self.cond.notify_all()
        out.write(f"{t:8.2f} {line}\n")
        out.flush()
        return t

    def _read(self):
        with open(self.log, "w") as out:
            while True:
                died = self._read_boot(out)
                with self.cond:
                    retry = (not self._killed and not self._pid1 and died is not None
                             and self.pre_pid1_crashes < self.RETRIES_BEFORE_PID1)
                    if not retry:
                        self.exit_status = self.qemu.returncode
                        if died is not None and not self._killed and self.death is None:
                            self.death = died
                        self.cond.notify_all()
                        return
                    self.pre_pid1_crashes += 1
                banner = (f"!!! the guest died before PID 1 started ({died[1]}): not a test result; "
                          f"booting it again ({self.pre_pid1_crashes} of {self.RETRIES_BEFORE_PID1})")
                print(banner, file=sys.stderr, flush=True)
                self._note(out, banner)
                with self.cond:
                    if self._killed:
                        return
                    self.qemu = self._start()

    def _read_boot(self, out):
        """Reads one qemu's console until it exits (or dies: then kills it after DEATH_GRACE).
        Returns (console seconds, why) if the guest died, None if it ended otherwise (power off,
        killed by us)."""
        qemu, died, killer = self.qemu, None, None
        for raw in qemu.stdout:
            # Firmware writes escape sequences; keep the text.
            line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", raw.decode(errors="replace")).rstrip()
            t = self._note(out, line)
            if PID1_STARTED in line:
                with self.cond:
                    self._pid1 = True
            if died is None and (DEATH.search(line) or (not self._pid1 and STALL_BEFORE_PID1.search(line))):
                died = (t, line.strip())
                with self.cond:
                    if self._pid1:
                        # Waiters fail now; the reader keeps the trace coming until the grace ends.
                        self.death = died
                        self.cond.notify_all()
                killer = threading.Timer(DEATH_GRACE, lambda: _killpg(qemu))
                killer.start()
        qemu.wait()
        if killer:
            killer.cancel()
        if died is None and not self._killed and not self._powered_off():
            died = (time.monotonic() - self.t0, f"qemu exited with status {qemu.returncode}")
        return died

    def _powered_off(self):
        with self.cond:
            return any("reboot: Power down" in l or "reboot: Restarting system" in l for _, l in self.lines[-20:])

    def first(self, text, after=0.0):
        """(seconds, line) of the first console line containing text (at or after `after`), or None."""
        with self.cond:
            return next(((t, l) for t, l in self.lines if text in l and t >= after), None)

    def _tail(self):
        return "\n".join(l for _, l in self.lines[-TAIL:])

    def _failed(self, what):
        """The exception for a wait that cannot succeed any more (under the lock), or None."""
        now = time.monotonic() - self.t0
        if self.death and (now >= self.death[0] + DEATH_GRACE or self.exit_status is not None):
            crashes = "; an earlier boot died before PID 1 too" if self.pre_pid1_crashes else ""
            return GuestDied(f"the guest died at {self.death[0]:.1f} s, waiting for {what}: {self.death[1]}"
                             f"{crashes} (log {self.log}):\n{self._tail()}")
        if self.exit_status is not None and not self.death:
            return GuestDied(f"qemu exited (status {self.exit_status}) before {what} (log {self.log}):\n{self._tail()}")
        return None

    def wait_for(self, text, timeout=300, after=0.0):
        """Waits for a console line containing text; raises NodeFailure with the console's tail if
        it does not come in time, and GuestDied within seconds once the guest is dead."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = next(((t, l) for t, l in self.lines if text in l and t >= after), None)
                if hit:
                    return hit
                failure = self._failed(repr(text))
                if failure:
                    raise failure
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeFailure(f"no {text!r} on the console after {timeout} s (log {self.log}):\n{self._tail()}")
                self.cond.wait(min(left, 0.5))

    def now(self):
        return time.monotonic() - self.t0

    def wait_exit(self, timeout=300):
        """qemu's exit status once the guest powered off; GuestDied if it died instead,
        subprocess.TimeoutExpired (after killing it) if it is still running after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.exit_status is None:
                failure = self._failed("qemu to exit")
                if failure:
                    raise failure
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
            if self.death:
                raise self._failed("qemu to exit")
            if self.exit_status is not None:
                return self.exit_status
        self.kill()
        raise subprocess.TimeoutExpired(self.args[0], timeout)

    def kill(self):
        with self.cond:
            self._killed = True
            qemu = self.qemu
        _killpg(qemu)
        self.reader.join(5)
        _live.discard(self.kill)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def _killpg(proc):
    """Kills a process started in its own session, and everything in its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def http_get(url, timeout=10):
    """The body of url (str), or None if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode(errors="replace")
    except OSError:
        return None


def poll(fetch, done, timeout, every):
    """fetch() every `every` seconds until done(its value) or `timeout` seconds have passed;
    returns the last value fetched."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(every)
        value = fetch()
    return value


def wait_http(url, timeout=120):
    return poll(lambda: http_get(url, timeout=5), lambda body: body is not None, timeout, 1)


class Checks:
    """Named expectations of a test; prints each, exits 1 if any failed."""

    def __init__(self, name, echo=True):
        self.name, self.failed, self.echo = name, [], echo

    def expect(self, ok, what):
        if self.echo:
            print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            self.failed.append(what)

    @contextlib.contextmanager
    def step(self, what):
        """A part of the test: whatever it raises becomes a failed check named `what`, and the test
        goes on to its next part (where a dead guest fails every wait at once)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - a test's own bug is a failed check too, not a traceback
            if isinstance(e, NodeFailure):
                why = str(e)
            else:
                frame = traceback.extract_tb(e.__traceback__)[-1]
                why = f"{type(e).__name__}: {e} (at {os.path.basename(frame.filename)}:{frame.lineno})"
            self.expect(False, f"{what}: {why}")

    def finish(self, work):
        if self.failed:
            print(f"{self.name}: FAILED ({work}): " + "; ".join(self.failed))
            sys.exit(1)
        print(f"{self.name}: ok")


# The demo node's system flist: a debootstrap'd Debian with an ssh daemon and busybox (for httpd).
DEMO_ROOTFS = ("bookworm-demo", "openssh-server,busybox")
# Run once on the writable system flist before the daemons, as two steps so that neither waits
# for the other: sshd's host keys (ssh-keygen -A makes an RSA key too, over a second of emulated
# CPU under TCG) with the operator's key, and the web page, which names the system it is served
# from.
DEMO_KEYS = """set -e
mkdir -p /run/sshd /root/.ssh
ssh-keygen -A
printf '%s\\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys"""
DEMO_PAGE = """set -e
mkdir -p /srv/www
printf '<h1>flint demo node</h1><p>Debian %s on Linux %s, served from the system flist.</p>\\n' \\
  "$(cat /etc/debian_version)" "$(uname -r)" > /srv/www/index.html"""


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
            # Making keys is background work: the least share of a contended CPU.
            {"name": "keys", "oneshot": True, "root": "system", "exec": ["/bin/sh", "-c", DEMO_KEYS],
             "env": {"AUTHORIZED_KEY": key}, "limits": {"cpu_weight": 1}},
            {"name": "page", "oneshot": True, "root": "system", "exec": ["/bin/sh", "-c", DEMO_PAGE]},
            # Readiness by port, tried by init itself: a shell started for each check took a
            # good part of a second under emulation.
            {"name": "sshd", "root": "system", "after": ["keys"], "exec": ["/usr/sbin/sshd", "-D", "-e"],
             "test_port": 22},
            {"name": "web", "root": "system", "after": ["page"],
             "exec": ["/bin/busybox", "httpd", "-f", "-v", "-p", "80", "-h", "/srv/www"], "test_port": 80},
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
        # qemu's RTC is the host's clock: later than the build, so trusted without waiting for SNTP.
        clock = vm.first("clock: trusted")
        c.expect(clock, f"the clock is trusted: {clock}")
        c.expect(vm.first("boot: time done in 0.0"), "SNTP is not on the boot's critical path")
        c.expect(vm.first(f"manifest version {manifest['version']} applied"), "manifest verified and applied")
        c.expect(vm.first("flist system: version") and vm.first("mounted on /mnt/system"), "system flist mounted")
        page = wait_http(f"http://127.0.0.1:{http_port}/", 60)
        c.expect(page and "flint demo node" in page, f"the web server answers from the host: {page!r}")
        out = self.ssh(ssh_port, "cat /etc/debian_version; hostname")
        c.expect(out.returncode == 0 and "flint-demo" in out.stdout, f"ssh with the manifest's key works: {out.stdout!r}")
        c.expect(vm.wait_for("is healthy", 120), "the manifest's health window passed")
        # The console says "is healthy" before the report that says so reaches the server.
        want = {"network", "identity", "applied", "service", "clock", "healthy"}
        node = poll(self.site.node, lambda n: want <= {s["stage"] for s in n.get("stages", [])}, 30, 0.5)
        stages = [s["stage"] for s in node.get("stages", [])]
        c.expect(node.get("mac") == "52:54:00:12:34:56", f"the server knows the node's MAC: {node.get('mac')}")
        # The console says who the node is; the server must know it by that id and this boot
        # (a node with no disk for its key has a new one every boot, with boot id 0).
        line = vm.first("identity: node")
        said = re.search(r"identity: node (\S+) \((EPHEMERAL|.*; boot (\d+)\))", line[1]) if line else None
        ident, boot = (said[1], int(said[3] or 0)) if said else (None, None)
        c.expect(ident and node.get("node") == ident and node.get("boot") == boot,
                 f"the node signs its reports with its own key: node {node.get('node')}, boot {node.get('boot')}"
                 f" (console: {line and line[1][-120:]})")
        c.expect(want <= set(stages),
                 f"the node reported its stages: {stages}")
        # Its console (from PID 1's first line) and its services' output (httpd logs the page
        # fetched above) reach the server.
        def shipped(logs):
            sources = {l.get("s") for l in logs}
            return {"console", "web"} <= sources and any("starting as PID 1" in l.get("l", "") for l in logs)
        logs = poll(lambda: self.site.logs(ident) if ident else [], shipped, 60, 1)
        sources = sorted({l.get("s") for l in logs if l.get("s")})
        c.expect(shipped(logs), f"the server holds the node's log: {len(logs)} lines from {sources}")
        numbers = self.site.metrics(ident) if ident else ""
        own = {k: v for k, v in (l.split(" ", 1) for l in numbers.splitlines() if l.startswith("flint_init_"))}
        print(f"figure: PID 1 with log shipping on: RSS {int(own.get('flint_init_resident_bytes', 0)) / 1e6:.1f} MB, "
              f"{own.get('flint_init_threads', '?')} threads ({len(logs)} log lines shipped)", flush=True)
        return node

    def reload(self, vm, ssh_port):
        """SIGHUP to PID 1 from a service over ssh, as an operator would: reconcile now. Returns
        the console time it was sent at; NodeFailure if ssh failed."""
        vm.wait_for("service sshd: ready", 300)
        t = vm.now()
        out = self.ssh(ssh_port, "kill -HUP 1")
        if out.returncode != 0:
            raise NodeFailure(f"SIGHUP to PID 1 over ssh failed ({out.returncode}): {out.stderr.strip()!r}")
        return t

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
        with c.step(f"{mode} boot"), Vm(demo.site, mode, usb=image, hostfwd=[(http, 80), (ssh, 22)]) as vm:
            body(vm, demo, c, manifest, http, ssh)
    finally:
        demo.site.stop()
    c.finish(work)
