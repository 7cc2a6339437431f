#!/usr/bin/env python3
"""A fleet of 13 nodes on one `netboot serve`: 12 `init run` nodes, each in a network namespace of
its own (its own addresses, identity, state and cache) on a bridge, and one qemu node booted by
PXE. Their keys are allowed ahead of time in netboot.json; the qemu node, whose key is made at
boot, waits as pending until the operator accepts it.

Then two rollouts, driven with `netboot rollout` as an operator would:
1. version 2, whose service fails: the canaries (a group of two) roll back by themselves, the
   rollout pauses by itself, and no node outside the canaries ever applies version 2; aborted.
2. version 3 (`netboot rollout revert`: version 1's content, above 2), in three waves (canaries,
   50%, the rest): the server is killed with SIGKILL mid-way and started again; the rollout
   resumes where it was and every node ends healthy on 3.
The dashboard is loaded in headless Chromium (DOM dump checked, screenshot kept).

With `--postgres` the same runs on two servers sharing one PostgreSQL database (a throwaway
cluster of Debian's, run as `nobody`): half the nodes boot from each, and only server A is
killed. Run as root: `make test-fleet` (both; needs `make build static`). Figures are printed
as FIGURE lines."""
import glob, json, os, shutil, signal, socket, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
import flintnode  # noqa: E402
from flintnode import REL, Checks, Site, Vm, poll, run  # noqa: E402

HOST_NODES = 12
BRIDGE, NET = "flfleet0", "10.77.0"
SERVER_IP = f"{NET}.1"
NETBOOT, INIT = os.path.join(REL, "netboot"), os.path.join(REL, "init")
CHROMIUM = shutil.which("chromium")


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


class Postgres:
    """A throwaway cluster of Debian's PostgreSQL on a free 127.0.0.1 port, run as `nobody`."""

    def __init__(self, work):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed")
        self.bin = os.path.dirname(bins[-1])
        self.dir = os.path.join(work, "pg")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "data"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "nobody", "nogroup")
        shutil.chown(os.path.join(self.dir, "data"), "nobody", "nogroup")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._as_nobody("initdb", "-D", os.path.join(self.dir, "data"), "-U", "netboot", "--auth=trust", "--no-sync")
        self._as_nobody("pg_ctl", "-D", os.path.join(self.dir, "data"), "-l", os.path.join(self.dir, "log"), "-w",
                        "-o", f"-p {self.port} -h 127.0.0.1 -k {self.dir}", "start")
        self.url = f"postgres://netboot@127.0.0.1:{self.port}/postgres"

    def _as_nobody(self, tool, *args):
        sh("runuser", "-u", "nobody", "--", os.path.join(self.bin, tool), *args)

    def stop(self):
        self._as_nobody("pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate", "-w", "stop")


class Fleet:
    def __init__(self, work):
        self.work = work
        self.site = Site(os.path.join(work, "site")).build_initramfs()
        self.port = self.site.port
        self.state = os.path.join(work, "state")
        self.ops = os.path.join(work, "ops")
        os.makedirs(self.ops, exist_ok=True)
        self.server = None
        self.pg = None
        self.nodes = []  # init run processes
        self.sys0 = self.site.mini_flists(1)[0]

    # The network: a bridge on the host, a veth into each node's namespace.
    def network(self):
        self.teardown_network()
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i in range(HOST_NODES):
            ns, host_end = f"flfleet-n{i}", f"flfv{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", host_end, "master", BRIDGE, "up")
            sh("ip", "-n", ns, "addr", "add", f"{NET}.{10 + i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def teardown_network():
        for i in range(HOST_NODES):
            sh("ip", "netns", "del", f"flfleet-n{i}", check=False)
            sh("ip", "link", "del", f"flfv{i}", check=False)
        sh("ip", "link", "del", BRIDGE, check=False)

    def identities(self):
        """Each host node's key, made ahead of time with init's key tool; their ids."""
        ids = []
        for i in range(HOST_NODES):
            # A node's state from an earlier run would keep its earlier key: each run starts clean.
            shutil.rmtree(os.path.join(self.work, f"n{i}"), ignore_errors=True)
            key = os.path.join(self.work, f"n{i}", "identity.key")
            os.makedirs(os.path.dirname(key))
            out = run(INIT, "identity", "new", key)
            # "node ID" and "public key HEX" lines.
            words = out.split()
            node_id = words[words.index("node") + 1] if "node" in words else None
            pub = next(w for w in words if len(w) == 64)
            ids.append((key, node_id, pub))
        return ids

    def configure(self, ids):
        canaries = [ids[0][1], ids[1][1]]
        config = json.load(open(os.path.join(self.site.srv, "netboot.json")))
        config.pop("enrollment", None)  # manual: the default
        config["allowed"] = [pub for _, _, pub in ids]
        config["groups"] = {"canary": canaries}
        # The qemu node checks for a new manifest as often as the host nodes do.
        profile = config["profiles"]["default"]
        profile["cmdline"] += " flint.interval=2"
        json.dump(config, open(os.path.join(self.site.srv, "netboot.json"), "w"), indent=1)

    def manifest(self, version, command, name):
        m = {"version": version, "flists": [self.sys0],
             "services": [{"name": "web", "root": "sys0", "exec": ["/bin/sh", "-c", command]}],
             "health": {"require": ["web"], "timeout": 60, "settle": 2, "restarts": 2}}
        path = os.path.join(self.ops, name)
        json.dump(m, open(path, "w"), indent=1)
        run(NETBOOT, "sign", path, "--key", self.site.key)
        return path

    def serve(self):
        """The boot server: one on SQLite, or two on one PostgreSQL database (`--postgres`): A on
        the bridge for the even nodes, B on the bridge for the odd ones and on 127.0.0.1 for the
        qemu node."""
        self.servers = []
        if self.pg is None:
            self.servers.append(self._serve(self.state, [f"{SERVER_IP}:{self.port}", f"127.0.0.1:{self.port}"]))
        else:
            self.servers.append(self._serve(self.state, [f"{SERVER_IP}:{self.port}"]))
            self.servers.append(self._serve(self.state + "-b", [f"{SERVER_IP}:{self.port + 1}", f"127.0.0.1:{self.port}"]))
        self.server, self.admin = self.servers[0]

    def _serve(self, state, listen):
        args = [NETBOOT, "serve", "--root", self.site.srv, "--state", state, "--manifest-key", self.site.key + ".pub"]
        for address in listen:
            args += ["--listen", address]
        if self.pg is not None:
            args += ["--db", self.pg.url]
        server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, "netboot.log"), "a"),
                                  text=True)
        line = server.stdout.readline()
        if "serving" not in line:
            raise RuntimeError("netboot serve did not start")
        return server, server.stdout.readline().split()[2].rstrip("/")

    def kill_server(self):
        """SIGKILL of server A (with PostgreSQL, B goes on meanwhile)."""
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()

    def restart_server(self):
        state = self.state
        listen = [f"{SERVER_IP}:{self.port}"] + ([] if self.pg else [f"127.0.0.1:{self.port}"])
        self.servers[0] = self._serve(state, listen)
        self.server, self.admin = self.servers[0]

    def stop_servers(self):
        for server, _ in getattr(self, "servers", []):
            server.kill()
            server.wait()

    def node_url(self, i):
        return f"http://{SERVER_IP}:{self.port + (i % 2 if self.pg else 0)}"

    def start_nodes(self, ids):
        for i, (key, _, _) in enumerate(ids):
            url = self.node_url(i)
            d = os.path.join(self.work, f"n{i}")
            for sub in ["state", "cache", "run", "log"]:
                os.makedirs(os.path.join(d, sub), exist_ok=True)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", f"flfleet-n{i}", INIT, "run", "--manifest", f"{url}/manifest.json",
                 "--key", self.site.key + ".pub", "--state", os.path.join(d, "state"), "--identity", key,
                 "--report", f"{url}/report", "--cache", os.path.join(d, "cache"), "--run-dir", os.path.join(d, "run"),
                 "--interval-secs", "2", "--socket", os.path.join(d, "ctl.sock"), "--log-dir", os.path.join(d, "log"),
                 "--backoff-ms", "200"],
                stdout=open(os.path.join(d, "init.log"), "w"), stderr=subprocess.STDOUT, start_new_session=True)
            self.nodes.append(proc)

    def stop_nodes(self):
        for p in self.nodes:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def cli(self, *args):
        out = run(NETBOOT, *args, "--state", self.state, "--json")
        return json.loads(out)

    def nodes_list(self):
        try:
            return {n["id"]: n for n in self.cli("nodes", "list") if n["signed"]}
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            return {}


def applied_versions(node):
    """Every manifest version the node reported applying."""
    out = []
    for s in node["stages"]:
        if s["stage"] == "applied" and s["detail"].startswith("manifest version "):
            out.append(int(s["detail"].split()[2].rstrip(":")))
    return out


def chromium(url, *args):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args, url],
                          capture_output=True, text=True, timeout=120).stdout


def main():
    if os.geteuid() != 0:
        sys.exit("the fleet test makes network namespaces: run it as root")
    postgres = "--postgres" in sys.argv[1:]
    c = Checks("fleet on PostgreSQL, two servers" if postgres else "fleet")
    work = os.path.join(flintnode.ROOT, "target/fleet-pg" if postgres else "target/fleet")
    for d in ["state", "state-b"]:
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    fleet = Fleet(work)
    if postgres:
        fleet.pg = Postgres(work)
    fleet.network()
    vm = None
    try:
        ids = fleet.identities()
        host_ids = [node_id for _, node_id, _ in ids]
        canaries = set(host_ids[:2])
        fleet.configure(ids)
        v1 = fleet.manifest(1, "exec sleep 100000", "v1.json")
        shutil.copy(v1, os.path.join(fleet.site.srv, "manifest.json"))
        shutil.copy(v1 + ".sig", os.path.join(fleet.site.srv, "manifest.json.sig"))
        fleet.serve()
        fleet.start_nodes(ids)
        vm = Vm(fleet.site, mode="pxe", log=os.path.join(work, "console.log"))

        with c.step("the fleet comes up"):
            def pending_vm(nodes):
                return [n for n in nodes.values() if n["id"] not in host_ids and n["enrollment"] == "pending"]
            nodes = poll(fleet.nodes_list, lambda n: pending_vm(n), 600, 2)
            qemu = pending_vm(nodes)
            c.expect(len(qemu) == 1, f"the PXE node shows up pending ({len(qemu)})")
            qemu_id = qemu[0]["id"]
            c.expect(not any(v for v in applied_versions(qemu[0])), "a pending node applies no manifest")
            fleet.cli("nodes", "accept", qemu_id)
            everyone = host_ids + [qemu_id]
            nodes = poll(fleet.nodes_list, lambda n: all(n.get(i, {}).get("state") == "healthy" for i in everyone),
                         600, 2)
            healthy = [i for i in everyone if nodes.get(i, {}).get("state") == "healthy"]
            c.expect(len(healthy) == 13, f"13 nodes healthy on version 1 ({len(healthy)})")
            c.expect(all(nodes[i]["enrollment"] == "accepted" for i in host_ids), "allowed keys are accepted")

        waves = ["--wave", "group:canary", "--wave", "50%", "--wave", "rest", "--wait", "3s", "--deadline", "300s"]
        with c.step("a bad version stops at the canaries"):
            bad = fleet.manifest(2, "exit 1", "v2.json")
            r = fleet.cli("rollout", "start", bad, *waves)
            c.expect(len(r["waves"][0]["nodes"]) == 2, "the canary wave is the group of two")
            r = poll(lambda: fleet.cli("rollout", "status", str(r["id"])), lambda r: r["state"] != "running", 300, 1)
            c.expect(r["state"] == "paused", f"the rollout paused by itself: {r['reason']}")
            nodes = fleet.nodes_list()
            rolled = [i for i in canaries if "rollback" in [s["stage"] for s in nodes[i]["stages"]]]
            c.expect(len(rolled) >= 1, f"a canary rolled back by itself ({len(rolled)})")
            # Time from the first canary's rollback report to the pause, both by the server's clock.
            backs = [s["at"] for i in canaries for s in nodes[i]["stages"] if s["stage"] in ("unhealthy", "rollback")]
            paused_at = [t for t, said in r["history"] if "paused by the server" in said]
            if backs and paused_at:
                print(f"FIGURE: canary rollback to pause: {paused_at[0] - min(backs):.2f} s")
            time.sleep(6)  # a few more of every node's manifest checks (every 2 s)
            nodes = fleet.nodes_list()
            outside = [i for i in nodes if i not in canaries and 2 in applied_versions(nodes[i])]
            c.expect(not outside, f"no node outside the canaries applied version 2 ({outside})")
            fleet.cli("rollout", "abort")

        with c.step("a good version reaches every node in waves, through a SIGKILL"):
            v3 = os.path.join(fleet.ops, "v3.json")
            run(NETBOOT, "rollout", "revert", "--key", fleet.site.key, "-o", v3, "--state", fleet.state)
            c.expect(json.load(open(v3))["version"] == 3, "revert made version 3 from version 1's content")
            started = time.monotonic()
            r = fleet.cli("rollout", "start", v3, *waves)
            rid = str(r["id"])
            r = poll(lambda: fleet.cli("rollout", "status", rid), lambda r: r["current_wave"] == 2, 300, 0.5)
            before = r
            fleet.kill_server()
            fleet.restart_server()
            after = fleet.cli("rollout", "status", rid)
            c.expect([w["nodes"] for w in after["waves"]] == [w["nodes"] for w in before["waves"]]
                     and after["waves"][1]["started"] == before["waves"][1]["started"],
                     "after SIGKILL the rollout is where it was (wave 2 started)")
            r = poll(lambda: fleet.cli("rollout", "status", rid), lambda r: r["state"] in ("done", "paused"), 900, 1)
            c.expect(r["state"] == "done", f"the rollout finished: {r['reason']}")
            print(f"FIGURE: 3-wave rollout over 13 nodes (3 s waits), start to done: {time.monotonic() - started:.1f} s")
            nodes = poll(fleet.nodes_list, lambda n: all(n.get(i, {}).get("version") == 3 and
                                                        n[i]["state"] == "healthy" for i in everyone), 120, 2)
            on3 = [i for i in everyone if nodes.get(i, {}).get("version") == 3 and nodes[i]["state"] == "healthy"]
            c.expect(len(on3) == 13, f"every node healthy on version 3 ({len(on3)} of 13)")
            c.expect(all(2 not in applied_versions(nodes[i]) for i in everyone if i not in canaries),
                     "still no node outside the canaries ever applied version 2")
            audit = fleet.cli("audit", "--limit", "1000")
            starts = [e["detail"] for e in audit if e["action"] == "rollout step" and "starts" in e["detail"]]
            c.expect(sorted(starts) == sorted(set(starts)) and len(starts) == 4,
                     f"each wave started once, by one server ({len(starts)} starts: canary, and 3 waves of rollout 2)")
            order = {i: min(s["at"] for s in nodes[i]["stages"] if s["detail"].startswith("manifest version 3"))
                     for i in everyone}
            c.expect(max(order[i] for i in canaries) < min(order[i] for i in everyone if i not in canaries),
                     "the canaries had version 3 before any other node")

        with c.step("the dashboard in a real browser"):
            if not CHROMIUM:
                raise RuntimeError("chromium is not installed (make test-fleet installs it)")
            dom = chromium(f"{fleet.admin}/", "--dump-dom")
            c.expect(dom.count('class="node" data-state="healthy"') == 13, "the fleet page shows 13 healthy nodes")
            c.expect("rollout 2" in dom and "rollout 1" in dom, "the fleet page lists both rollouts")
            dom = chromium(f"{fleet.admin}/rollouts/1", "--dump-dom")
            c.expect("paused by the server" in dom and "aborted by admin" in dom, "rollout 1's page tells its story")
            dom = chromium(f"{fleet.admin}/nodes/{host_ids[0]}", "--dump-dom")
            c.expect("version 2 failed its health check" in dom, "a canary's page shows its rollback")
            shot = os.path.join(work, "dashboard.png")
            chromium(f"{fleet.admin}/", f"--screenshot={shot}", "--window-size=1280,1400")
            c.expect(os.path.getsize(shot) > 10_000, f"a screenshot of the dashboard: {shot}")
    finally:
        if vm:
            vm.kill()
        fleet.stop_nodes()
        fleet.stop_servers()
        fleet.teardown_network()
        if fleet.pg:
            fleet.pg.stop()
    c.finish(work)


if __name__ == "__main__":
    main()
