#!/usr/bin/env python3
"""The boot harness itself (qemu/flintnode.py), on real guests that die on purpose:

1. A guest kernel that dies before PID 1 (no init to run: `rdinit=` names a missing file) is
   booted again once, loudly, then the wait fails within seconds with the panic on show.
2. A guest kernel that dies after PID 1 started (a service writes `c` to /proc/sysrq-trigger) fails
   the wait within seconds, and is not booted again.
3. PID 1 in its rescue state (no `flint.manifest=`) fails the wait within seconds.
4. qemu exiting (the node powers itself off) fails a wait for a line that never came, at once.
5. A test's own exception inside a step is a failed check, the run goes on, and qemu's whole
   process group is gone.
Each case prints how long the failing wait went on after the guest died (a figure, not a check)."""
import contextlib, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import CMDLINE, Checks, GuestDied, Site, Vm  # noqa: E402

# Generous: these bound a broken harness, not the guest.
WAIT = 300
NEVER = "a line no node prints"


def main():
    work = tempfile.mkdtemp(prefix="flint-harness-")
    site = Site(work).build_initramfs()
    flists = site.mini_flists()
    c = Checks("boot harness")
    site.serve()
    try:
        with c.step("a kernel that dies before PID 1"):
            before_pid1(site, c)
        with c.step("a kernel that dies after PID 1"):
            after_pid1(site, flists, c)
        with c.step("PID 1 in rescue"):
            rescue(site, c)
        with c.step("qemu exits"):
            qemu_exits(site, flists, c)
        with c.step("an exception in a test"):
            test_exception(site, c)
    finally:
        site.stop()
    c.finish(work)


def failing_wait(vm, text):
    """Waits (up to WAIT) for text that must not come; returns (GuestDied or None, seconds the
    wait went on after the guest's death was seen). A GuestDied at all shows the wait did not run
    to its timeout; the seconds are a figure, never asserted."""
    try:
        vm.wait_for(text, WAIT)
    except GuestDied as e:
        return e, vm.now() - vm.death[0]
    return None, None


@contextlib.contextmanager
def booted_with(site, cmdline, log):
    """A direct boot of `site` with its kernel command line replaced."""
    site.cmdline_template = cmdline
    try:
        with Vm(site, "direct", log=log) as vm:
            yield vm
    finally:
        site.cmdline_template = CMDLINE


def before_pid1(site, c):
    with booted_with(site, "console=ttyS0 rdinit=/no/such/init init=/no/such/init", "console-before-pid1.log") as vm:
        died, late = failing_wait(vm, NEVER)
        c.expect(died and "Kernel panic" in str(died), f"the wait fails on the kernel's panic: {str(died)[:160]!r}")
        c.expect(vm.pre_pid1_crashes == 1, f"booted again once, not more ({vm.pre_pid1_crashes} reboot)")
        c.expect(vm.first("booting it again (1 of 1)"), "the reboot is said on the console log")
        print(f"figure: a crash before PID 1 fails the wait {late:.1f} s after the second panic", flush=True)


def after_pid1(site, flists, c):
    site.publish({"version": 1, "flists": flists, "services": [
        {"name": "crash", "oneshot": True, "root": "sys0", "exec": ["/bin/sh", "-c", "echo c > /proc/sysrq-trigger"]},
        {"name": "never", "after": ["crash"], "exec": ["/init", "ctl", "list"]}]})
    with Vm(site, "direct", log="console-after-pid1.log") as vm:
        died, late = failing_wait(vm, NEVER)
        c.expect(died and "sysrq triggered crash" in str(died), f"the wait fails on the crash: {str(died)[:160]!r}")
        c.expect(vm.pre_pid1_crashes == 0, "a crash after PID 1 is not booted again")
        print(f"figure: a crash after PID 1 fails the wait {late:.1f} s after the panic", flush=True)


def rescue(site, c):
    with booted_with(site, "console=ttyS0 quiet", "console-rescue.log") as vm:
        died, late = failing_wait(vm, NEVER)
        c.expect(died and "RESCUE" in str(died), f"the wait fails on the rescue state: {str(died)[:160]!r}")
        print(f"figure: PID 1's rescue state fails the wait {late:.1f} s after RESCUE", flush=True)


def qemu_exits(site, flists, c):
    site.publish({"version": 2, "flists": flists, "services": [
        {"name": "down", "oneshot": True, "exec": ["/init", "ctl", "poweroff"]}]})
    with Vm(site, "direct", log="console-exit.log") as vm:
        try:
            vm.wait_for(NEVER, WAIT)
            died = None
        except GuestDied as e:
            died = e
        c.expect(died and "qemu exited (status 0)" in str(died), f"the wait fails when qemu exits: {str(died)[:120]!r}")
        c.expect(vm.first("reboot: Power down"), "(the node powered off)")


def test_exception(site, c):
    inner = Checks("inner", echo=False)
    vm = None
    with inner.step("a step with a bug"):
        with Vm(site, "direct", log="console-exception.log") as vm:
            vm.wait_for("starting as PID 1", WAIT)
            page = None  # as when an HTTP check got no answer
            page.count("flint")  # the bug under test
    c.expect(len(inner.failed) == 1 and "AttributeError" in inner.failed[0] and "harness.py" in inner.failed[0],
             f"the exception is a failed check naming where it happened: {inner.failed}")
    time.sleep(0.5)
    try:
        os.killpg(vm.qemu.pid, 0)
        gone = False
    except ProcessLookupError:
        gone = True
    c.expect(gone, "qemu's process group is gone")
    left = subprocess.run(["pgrep", "-s", str(vm.qemu.pid)], capture_output=True, text=True).stdout.split()
    c.expect(not left, f"nothing is left of qemu's session: {left}")


main()
