//! What the tests of `netboot serve` share: the server as a process on 127.0.0.1, plain and
//! signed requests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `netboot serve`, killed on drop.
pub struct Served {
    pub child: Child,
    /// What nodes use.
    pub url: String,
    /// The admin listener.
    pub admin: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(root: &Path, tls: Option<(&Path, &Path)>) -> Served {
    serve_with(root, tls, &[])
}

pub fn serve_with(root: &Path, tls: Option<(&Path, &Path)>, extra: &[&str]) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netboot"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--root"]).arg(root).args(extra);
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    // Its log goes to a file, read back if it does not start.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd.stdout(Stdio::piped()).stderr(log.reopen().unwrap()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut line, mut admin) = (String::new(), String::new());
    out.read_line(&mut line).unwrap();
    out.read_line(&mut admin).unwrap();
    assert!(
        line.starts_with("serving"),
        "netboot serve did not start: {}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    // "serving ROOT on http://127.0.0.1:PORT/", then "admin on http://127.0.0.1:PORT/ (token in …)"
    let url = line.trim().rsplit(' ').next().unwrap().trim_end_matches('/').to_string();
    let admin = admin.split_whitespace().nth(2).unwrap_or_default().trim_end_matches('/').to_string();
    Served { child, url, admin }
}

/// `netboot ARGS`: its exit status and what it printed.
pub fn netboot(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netboot")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A POST with a JSON or plain body, and headers: status and body.
pub fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let body = resp.body_mut().read_to_vec().unwrap();
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// A request signed as a node signs it (`flint_manifest::signed`), with any header replaced.
pub fn signed_request(
    url: &str,
    method: &str,
    target: &str,
    body: &[u8],
    key: &flint_manifest::ed25519::SigningKey,
    envelope: &flint_manifest::signed::Envelope,
    tamper: &[(&str, &str)],
) -> (u16, String) {
    let mut headers = flint_manifest::signed::sign(key, envelope, method, target, body);
    for (name, value) in tamper {
        headers.iter_mut().find(|(n, _)| n == name).unwrap().1 = value.to_string();
    }
    let full = format!("{url}{target}");
    let mut resp = if method == "POST" {
        let mut req = agent().post(&full);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        req.send(body).unwrap()
    } else {
        let mut req = agent().get(&full);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        req.call().unwrap()
    };
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
}

/// A throwaway PostgreSQL cluster (Debian's `postgresql`) on a free 127.0.0.1 port, run as the
/// unprivileged user `nobody` (PostgreSQL refuses root), stopped and removed on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        use std::os::unix::fs::PermissionsExt;
        let mut bins: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (make test installs Debian's postgresql)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().expect("no initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (uid, gid) = (65534, 65534);
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let as_nobody = |args: &[&str]| {
            let out = Command::new("runuser").args(["-u", "nobody", "--"]).args(args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let initdb = bin.join("initdb");
        as_nobody(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "netboot",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let options = format!("-p {port} -h 127.0.0.1 -k {} -c fsync=off", dir.path().display());
        let log = dir.path().join("log");
        let pg_ctl = bin.join("pg_ctl");
        as_nobody(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-o",
            &options,
            "start",
        ]);
        Postgres { dir, bin, port }
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://netboot@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(pg_ctl)
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
