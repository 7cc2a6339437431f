#!/usr/bin/env python3
"""The scale-out path: flists on garage, a real distributed S3 store, with 3 nodes on 127.0.0.1-3
(replication factor 3). `flist pack` writes the chunks through one node; `flist mount` reads with
every node as a replica. One node is killed while a large file is being read: the read goes on
from the others and the content is exact; the mount says the store is failing and, once the node
is back, that it answers again; `flist verify --all-replicas` then finds every chunk on every node.
Prints the figures: pack time and throughput, read throughput before and after the failure.
Needs `cargo build --release -p flist` and garage (`cargo install garage`, done by make test-garage)."""
import hashlib, os, re, secrets, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLIST = os.path.join(ROOT, "target/release/flist")
GARAGE = shutil.which("garage") or os.path.expanduser("~/.cargo/bin/garage")
sys.path.insert(0, os.path.join(ROOT, "qemu"))
from flintnode import Checks  # noqa: E402

CONFIG = """metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "{ip}:3901"
rpc_public_addr = "{ip}:3901"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "{ip}:3900"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "{ip}:3903"
admin_token = "{token}"
"""


class Cluster:
    def __init__(self, work, size=3):
        self.work, self.secret, self.token = work, secrets.token_hex(32), secrets.token_hex(16)
        self.ips = [f"127.0.0.{i + 1}" for i in range(size)]
        self.procs = [None] * size
        for i, ip in enumerate(self.ips):
            d = os.path.join(work, f"garage{i}")
            os.makedirs(d)
            with open(self.config(i), "w") as f:
                f.write(CONFIG.format(dir=d, ip=ip, secret=self.secret, token=self.token))
            os.chmod(self.config(i), 0o600)

    def config(self, i):
        return os.path.join(self.work, f"garage{i}/garage.toml")

    def start(self, i):
        log = open(os.path.join(self.work, f"garage{i}/log"), "a")
        self.procs[i] = subprocess.Popen([GARAGE, "-c", self.config(i), "server"], stdout=log, stderr=log)

    def cli(self, *args, node=0):
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run([GARAGE, "-c", self.config(node), *args], capture_output=True, text=True)
            if out.returncode == 0 or time.monotonic() > deadline:
                if out.returncode != 0:
                    raise RuntimeError(f"garage {' '.join(args)}: {out.stderr}")
                return out.stdout
            time.sleep(0.5)

    def form(self):
        """Connects the nodes, gives each 1 GB in one zone, makes a bucket and a key."""
        for i in range(len(self.ips)):
            self.start(i)
        ids = [self.cli("node", "id", "-q", node=i).strip() for i in range(len(self.ips))]
        for node_id in ids[1:]:
            self.cli("node", "connect", node_id)
        for node_id in ids:
            self.cli("layout", "assign", "-z", "dc1", "-c", "1G", node_id.split("@")[0])
        self.cli("layout", "apply", "--version", "1")
        out = self.cli("key", "create", "flint")
        key = re.search(r"Key ID:\s*(\S+)", out).group(1)
        secret = re.search(r"Secret key:\s*(\S+)", out).group(1)
        self.cli("bucket", "create", "flint")
        self.cli("bucket", "allow", "--read", "--write", "--owner", "flint", "--key", "flint")
        return key, secret

    def wait_s3(self, i, timeout=60):
        """Until node i's S3 API accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.ips[i], 3900), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"garage node {i} does not listen")

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop_all(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()


def sha256(path, block=1 << 20, on_progress=None):
    h, done, started = hashlib.sha256(), 0, time.monotonic()
    with open(path, "rb") as f:
        while data := f.read(block):
            h.update(data)
            done += len(data)
            if on_progress:
                on_progress(done, time.monotonic() - started)
    return h.hexdigest()


def main():
    if not os.path.exists(GARAGE):
        sys.exit(f"no garage binary ({GARAGE}): make test-garage installs it")
    work = tempfile.mkdtemp(prefix="flint-garage-")
    c = Checks("garage")
    cluster = Cluster(work)
    mount_proc = None
    mnt = os.path.join(work, "mnt")
    try:
        key, secret = cluster.form()
        stores = [f"s3+http://{key}:{secret}@{ip}:3900/flint?region=garage" for ip in cluster.ips]
        tree = os.path.join(work, "tree")
        os.makedirs(os.path.join(tree, "etc"))
        big = os.path.join(tree, "big.bin")
        with open(big, "wb") as f:
            for _ in range(192):
                f.write(os.urandom(1 << 20))
        late = os.path.join(tree, "late.bin")  # read only once node 1 is back
        with open(late, "wb") as f:
            f.write(os.urandom(16 << 20))
        for i in range(200):
            with open(os.path.join(tree, "etc", f"f{i}.conf"), "w") as f:
                f.write(f"file {i}\n" * (i + 1))
        want = sha256(big)
        fl = os.path.join(work, "tree.fl")
        started = time.monotonic()
        subprocess.run([FLIST, "pack", tree, "-o", fl, "--store", stores[0]], check=True, capture_output=True)
        pack_secs = time.monotonic() - started
        c.expect(os.path.exists(fl), f"packed 192 MiB + 200 files through node 1 in {pack_secs:.1f} s")

        os.makedirs(mnt)
        log = open(os.path.join(work, "mount.log"), "w")
        args = [FLIST, "mount", fl, mnt, "--cache", os.path.join(work, "cache"), "--memory", "32M"]
        for s in stores:
            args += ["--store", s]
        mount_proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        c.expect(os.path.ismount(mnt), "mounted with the 3 nodes as replicas")

        rates = {}

        def progress(done, secs):
            # Node 1 (the first replica, which serves every read while healthy) dies a third in.
            if "before" not in rates and done >= 64 << 20:
                rates["before"] = done / secs / (1 << 20)
                rates["killed_at"] = (done, secs)
                cluster.kill(0)

        got = sha256(os.path.join(mnt, "big.bin"), on_progress=progress)
        done, secs_at_kill = rates["killed_at"]
        c.expect(got == want, "the read went on after node 1 was killed mid-read, and the content is exact")
        mount_log = open(os.path.join(work, "mount.log")).read()
        c.expect(re.search(r"store s3\+http://127\.0\.0\.1:3900/flint.* is failing", mount_log) is not None,
                 "the mount says node 1's store is failing (and tries it last)")
        files_ok = all(open(os.path.join(mnt, "etc", f"f{i}.conf")).read() == f"file {i}\n" * (i + 1)
                       for i in range(0, 200, 7))
        c.expect(files_ok, "small files read with node 1 down")

        cluster.start(0)
        cluster.wait_s3(0)
        # A restarted garage node answers 503 for a moment while it catches up with the others.
        node1 = [FLIST, "verify", fl, "--store", stores[0]]
        deadline = time.monotonic() + 120
        while subprocess.run(node1, capture_output=True).returncode != 0 and time.monotonic() < deadline:
            time.sleep(2)
        c.expect(time.monotonic() < deadline, "node 1 back: it serves every chunk again")
        # Past the store's cool-off (the mount says how long), after which it is tried first again.
        offs = re.findall(r"^(\S+)Z .*is failing; trying it last for (\d+)s",
                          open(os.path.join(work, "mount.log")).read(), re.M)
        if offs:
            stamp, secs = offs[-1]
            until = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + int(secs) + 1
            time.sleep(max(0, until - time.time()))
        c.expect(sha256(os.path.join(mnt, "late.bin")) == sha256(late), "node 1 back: a file not read yet reads")
        mount_log = open(os.path.join(work, "mount.log")).read()
        c.expect("answers again" in mount_log, "node 1 back: the mount says its store answers again")
        out = subprocess.run([FLIST, "verify", fl, "--all-replicas", *sum((["--store", s] for s in stores), [])],
                             capture_output=True, text=True)
        c.expect(out.returncode == 0, f"every chunk is on every node ({out.stdout.strip().splitlines()[-1:]})")
        print(f"figures: pack {pack_secs:.1f} s ({192 / pack_secs:.0f} MiB/s into 3 replicas); read "
              f"{rates['before']:.0f} MiB/s before the kill at {done >> 20} MiB ({secs_at_kill:.1f} s)")
    finally:
        if mount_proc:
            subprocess.run([FLIST, "umount", mnt], capture_output=True)
            try:
                mount_proc.wait(30)
            except subprocess.TimeoutExpired:
                mount_proc.kill()
        cluster.stop_all()
    c.finish(work)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
