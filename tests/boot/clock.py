#!/usr/bin/env python3
"""The clock under qemu when the RTC reads 2001, before the initramfs was built, and no SNTP
server answers (`flint.ntp=` names one that never does): the RTC is not trusted; the boot server's HTTP `Date` moves the clock forward
and makes it *coarse*, never trusted; a manifest that has expired by that clock is applied, not
refused, and the console says why. The boot does not wait on the clock."""
import datetime, os, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import Checks, Site, Vm  # noqa: E402


def main():
    work = tempfile.mkdtemp(prefix="flint-clock-")
    site = Site(work).build_initramfs()
    # Only a server that never answers (the discard port): the public pool, when the host is on
    # the internet, would make the clock trusted.
    site.cmdline_template += " flint.ntp=10.0.2.2:9"
    flists = site.mini_flists()
    c = Checks("a coarse clock under qemu")
    site.serve()
    try:
        expired = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        site.publish({"version": 1, "expires": expired, "flists": flists, "services": [
            {"name": "web", "root": "sys0", "exec": ["/bin/sh", "-c", "echo web up > /dev/console; exec sleep 100000"],
             "test": ["/bin/sh", "-c", "cat /hello.txt"]}]})
        with c.step("an RTC in 2001"), Vm(site, "direct", rtc="2001-01-01T00:00:00", log="coarse.log") as vm:
            coarse = vm.wait_for("clock: coarse", 300)
            c.expect(coarse and "the Date of http://10.0.2.2" in coarse[1], f"the server's Date makes it coarse: {coarse[1][-120:]}")
            c.expect(not vm.first("clock: trusted"), "the RTC in 2001 is not trusted, nor is the server's Date")
            applied = vm.wait_for("manifest version 1 applied", 300)
            said = vm.first("not refused on expiry")
            c.expect(said and "the clock is coarse" in said[1], f"the expired manifest is applied, and why: {said and said[1][-140:]}")
            c.expect(vm.wait_for("service web: ready", 120), "its service runs")
            year = str(datetime.datetime.now(datetime.timezone.utc).year)
            c.expect(applied[1].startswith(year), f"the clock moved forward to the server's: {applied[1][:30]}")
            early = next((l for _, l in vm.lines if "flint init" in l and "starting as PID 1" in l), "")
            # The first line may carry the firmware's last words and the console's reset sequence
            # (ESC c) before its time.
            stamp = early.rsplit("\x1bc", 1)[-1].split(" ", 1)[0]
            c.expect(stamp.endswith("Z") and stamp.startswith("2001-01-01T"), f"it read 2001 before: {early[:48]!r}")
            stages = {s["stage"]: s["detail"] for s in site.node().get("stages", [])}
            c.expect("coarse" in stages.get("clock", ""), f"the clock's state is reported: {stages.get('clock')}")
            timing = vm.first("boot: time done in")
            c.expect(timing and "done in 0.0" in timing[1], f"the boot does not wait on the clock: {timing and timing[1][-40:]}")
            vm.kill()
    finally:
        site.stop()
    c.finish(work)


if __name__ == "__main__":
    main()
