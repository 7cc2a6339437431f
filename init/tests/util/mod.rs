//! Shared by init's host tests: an `init run` child driven through `init ctl`, the manifest
//! signing key, and real servers (the same helpers as flist's tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use flint_manifest::ed25519::SigningKey;
use serde_json::Value;

#[path = "../../../flist/tests/util/servers.rs"]
pub mod servers;

pub const INIT: &str = env!("CARGO_BIN_EXE_init");

/// An `init run` child with its data directory (`out/` for services, `init.log` for its own log).
pub struct Node {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Node {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("init.sock")
    }
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(INIT).arg("ctl").arg("--socket").arg(self.socket()).args(args).output().unwrap()
    }
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
    pub fn state(&self, name: &str) -> Value {
        self.ctl_json(&["status", name])
    }
    /// The pid of a running service.
    pub fn pid(&self, name: &str) -> Option<i64> {
        self.state(name)["pid"].as_i64()
    }
    /// The version of the manifest in force.
    pub fn version(&self) -> Option<u64> {
        self.ctl_json(&["manifest"])["version"].as_u64()
    }
    /// Every log line of `name`.
    pub fn log(&self, name: &str) -> Vec<String> {
        let log = self.ctl_json(&["log", name]);
        log["lines"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap().to_string()).collect()
    }
    pub fn wait_for(&self, what: &str, mut done: impl FnMut(&Node) -> bool) {
        let until = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < until, "timed out waiting for {what}; init's log:\n{}", self.init_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub fn init_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("init.log")).unwrap_or_default()
    }
    /// Sends SIGTERM and waits for init to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < until, "init did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Init and every service with it: the group init made for itself holds them all.
            let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", c.id())).unwrap_or_default();
            let own = cgroup.lines().find_map(|l| l.strip_prefix("0::")).and_then(|p| p.strip_suffix("/init"));
            if let Some(group) = own {
                let hierarchy = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                    .into_iter()
                    .find(|h| Path::new(h).join(group.trim_start_matches('/')).join("cgroup.kill").exists());
                if let Some(h) = hierarchy {
                    let _ = std::fs::write(Path::new(h).join(group.trim_start_matches('/')).join("cgroup.kill"), "1");
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

pub fn hex_key() -> String {
    key().verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `manifest` (with `$OUT` replaced by `out`) and its signature into `dir`.
pub fn publish(dir: &Path, manifest: &Value, out: &Path) {
    let text = serde_json::to_string_pretty(manifest).unwrap().replace("$OUT", out.to_str().unwrap());
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("manifest.json"), &text).unwrap();
    std::fs::write(dir.join("manifest.json.sig"), flint_manifest::sign(text.as_bytes(), &key())).unwrap();
}

/// Starts `init run` with `args` (the control socket and log directory are added) in `dir`, and
/// waits until its control socket answers.
pub fn start(dir: tempfile::TempDir, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Node {
    start_under(&[], dir, args)
}

/// [`start`], with init run by the `wrapper` command (e.g. `unshare --pid --fork`).
pub fn start_under(wrapper: &[&str], dir: tempfile::TempDir, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Node {
    let socket = dir.path().join("init.sock");
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(INIT);
            c
        }
        None => Command::new(INIT),
    };
    let child = command
        .args(["run", "--backoff-ms", "100", "--backoff-max-ms", "800"])
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .arg("--log-dir")
        .arg(dir.path().join("out"))
        // Its own log goes to a file next to the test's data, not into the test run's output.
        .stderr(std::fs::File::create(dir.path().join("init.log")).unwrap())
        .spawn()
        .unwrap();
    let node = Node { dir, child: Some(child) };
    node.wait_for("the control socket", |n| n.socket().exists());
    node
}

pub fn alive(pid: i32) -> bool {
    // Zombies count as gone: /proc/PID/stat says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}
