#!/usr/bin/env python3
"""Services confined by their cgroups, under qemu (the node's kernel has the memory and pids
controllers; this host's cgroup2 has neither). One boot, with:

- a fork bomb (pids.max 32, half a CPU): it stays at 32 tasks, and the kernel counts its refused
  forks; stopping it (`init ctl stop`, from another service) kills its whole group;
- a memory hog (memory.max 32 MiB): the OOM killer ends it, init reports the OOM kill and starts
  it again with backoff, again and again;
- a service in namespaces of its own (pid, net, uts), which sees itself as pid 2 and only loopback.

While both offenders run, the node starts a service that waits for them and becomes ready, its
control socket answers, and it powers off cleanly when asked."""
import os, re, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import Checks, Site, Vm  # noqa: E402

GROUPS = "/sys/fs/cgroup/flint"
# Prints a cgroup file of a group on the console, on one line.
SHOW = ("""show() { printf 'confined: %s %s:' "$1" "$2"; """
        """while read -r k v; do printf ' %s%s' "$k" "${v:+=$v}"; done < GROUPS/$1/$2; echo; }""").replace("GROUPS", GROUPS)
CHECK = f"""exec >/dev/console 2>&1
{SHOW}
sleep 20
show bomb pids.current; show bomb pids.max; show bomb pids.events; show hog memory.events
exit 0"""
AFTER_STOP = f"""exec >/dev/console 2>&1
{SHOW}
show bomb pids.current; show bomb cgroup.procs
exit 0"""
INSIDE = """exec >/dev/console 2>&1
echo "confined: inside pid=$$ net=$(while read -r l; do case $l in *:*) printf '%s' "${l%%:*}";; esac; done < /proc/net/dev)"
exec sleep 1000"""


def field(line, key):
    m = re.search(rf"\b{key}=(\d+)", line or "")
    return int(m[1]) if m else None


def main():
    work = tempfile.mkdtemp(prefix="flint-confined-")
    site = Site(work).build_initramfs()
    flists = site.mini_flists()
    services = [
        # Its first shell stays; the background pipelines fork without end.
        {"name": "bomb", "root": "sys0", "exec": ["/bin/sh", "-c", "f() { f | f & }; f; exec sleep 1000"],
         "limits": {"pids": 32, "cpus": 0.5}},
        {"name": "hog", "root": "sys0", "exec": ["/bin/sh", "-c", "x=x; while :; do x=$x$x; done"],
         "limits": {"memory": "32M"}},
        {"name": "inside", "root": "sys0", "exec": ["/bin/sh", "-c", INSIDE], "namespaces": ["pid", "net", "uts"]},
        {"name": "check", "root": "sys0", "oneshot": True, "exec": ["/bin/sh", "-c", CHECK]},
        # Started while the offenders run: the node still brings services up.
        {"name": "later", "root": "sys0", "after": ["check"], "exec": ["/bin/sleep", "1000"],
         "test": ["/bin/cat", "/hello.txt"]},
        {"name": "stop-bomb", "oneshot": True, "after": ["later"], "exec": ["/init", "ctl", "stop", "bomb"]},
        {"name": "after-stop", "root": "sys0", "oneshot": True, "after": ["stop-bomb"],
         "exec": ["/bin/sh", "-c", "sleep 2; " + AFTER_STOP]},
        {"name": "down", "oneshot": True, "after": ["after-stop"], "exec": ["/init", "ctl", "poweroff"]},
    ]
    site.publish({"version": 1, "flists": flists, "services": services})
    c = Checks("confined services under qemu")
    site.serve()
    try:
        with c.step("one boot"), Vm(site, "direct", log="console-confined.log") as vm:
            vm.wait_for("reboot: Power down", 400)
            c.expect(vm.first("cgroups: services under /sys/fs/cgroup/flint (controllers:"),
                     f"the slice is made: {vm.first('cgroups: services under')}")
            controllers = (vm.first("cgroups: services under") or (0, ""))[1]
            c.expect(all(k in controllers for k in ["memory", "pids", "cpu"]), "memory, pids and cpu are handed to it")
            pids = vm.first("confined: bomb pids.current:")
            current = int(m[1]) if pids and (m := re.search(r"pids.current: (\d+)", pids[1])) else None
            c.expect(current is not None and 2 <= current <= 32, f"the fork bomb stays within pids.max 32: {current}")
            events = vm.first("confined: bomb pids.events:")
            c.expect(events and field(events[1], "max") and field(events[1], "max") > 0,
                     f"the kernel refused the bomb's forks: {events}")
            hog = vm.first("confined: hog memory.events:")
            c.expect(hog and field(hog[1], "oom_kill") and field(hog[1], "oom_kill") >= 1, f"the hog was OOM-killed: {hog}")
            oom = vm.first("service hog: the kernel:")
            c.expect(oom and "OOM kills at memory.max 33554432" in oom[1], f"init reports the OOM kill: {oom}")
            restarts = [l for _, l in vm.lines if "service hog: running" in l]
            c.expect(len(restarts) >= 3, f"the hog is started again and again with backoff ({len(restarts)} starts)")
            c.expect(vm.first("service later: ready"), "a service started while they run becomes ready")
            inside = vm.first("confined: inside")
            c.expect(inside and "pid=2 " in inside[1] and inside[1].endswith("net=lo"),
                     f"the namespaced service is pid 2 and sees only loopback: {inside}")
            stopped = vm.first("service bomb: stopped")
            c.expect(stopped, "init ctl stop bomb, over the control socket, stopped it")
            refused = vm.first("service bomb: the kernel:")
            c.expect(refused and "forks refused at pids.max 32" in refused[1], f"init reports the refused forks: {refused}")
            left = vm.first("confined: bomb pids.current:", after=stopped[0] if stopped else 0)
            procs = vm.first("confined: bomb cgroup.procs:")
            c.expect(left and left[1].rstrip().endswith("pids.current: 0"), f"nothing of the bomb is left: {left}")
            c.expect(procs and procs[1].rstrip().endswith("cgroup.procs:"), f"its group is empty: {procs}")
            c.expect(vm.first("every service is stopped"), "init ctl poweroff stops every service")
            c.expect(vm.wait_exit(60) == 0, "qemu exits cleanly")
    finally:
        site.stop()
    c.finish(work)


main()
