//! `netboot serve` as a process, spoken to over real sockets: byte ranges and ETags, boot
//! scripts by MAC address from `netboot.json`, reports and the status page, paths outside the
//! root refused, and HTTPS with a certificate from a CA made by openssl, fetched by init's own client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(root: &Path, tls: Option<(&Path, &Path)>) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netboot"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--root"]).arg(root);
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "serving ROOT on http://127.0.0.1:PORT/"
    let url = line.trim().rsplit(' ').next().unwrap().trim_end_matches('/').to_string();
    Served { child, url }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().new_agent()
}

fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
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

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn sample_root() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(dir.path().join("boot")).unwrap();
    std::fs::create_dir_all(dir.path().join("store/ab")).unwrap();
    std::fs::write(dir.path().join("boot/vmlinuz"), &data).unwrap();
    std::fs::write(dir.path().join("store/ab/abcdef"), b"chunk").unwrap();
    std::fs::write(dir.path().join("manifest.json"), b"{}").unwrap();
    std::fs::write(dir.path().join(".hidden"), b"secret").unwrap();
    (dir, data)
}

#[test]
fn files_are_served_with_ranges_and_etags() {
    let (dir, data) = sample_root();
    let s = serve(dir.path(), None);
    let url = format!("{}/boot/vmlinuz", s.url);

    let (status, headers, body) = get(&url, &[]);
    assert_eq!(status, 200);
    assert_eq!(body, data);
    let etag = header(&headers, "etag").unwrap().to_string();
    assert_eq!(header(&headers, "accept-ranges"), Some("bytes"));

    let (status, headers, body) = get(&url, &[("Range", "bytes=1000-1999")]);
    assert_eq!(status, 206);
    assert_eq!(body, &data[1000..2000]);
    assert_eq!(header(&headers, "content-range"), Some("bytes 1000-1999/300000"));
    let (status, _, body) = get(&url, &[("Range", "bytes=-10")]);
    assert_eq!((status, body.as_slice()), (206, &data[data.len() - 10..]));
    let (status, headers, _) = get(&url, &[("Range", "bytes=400000-")]);
    assert_eq!(status, 416);
    assert_eq!(header(&headers, "content-range"), Some("bytes */300000"));

    let (status, _, body) = get(&url, &[("If-None-Match", &etag)]);
    assert_eq!((status, body.len()), (304, 0));
    // A range against another version of the file gets the whole (current) file.
    let (status, _, body) = get(&url, &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")]);
    assert_eq!((status, body.len()), (200, data.len()));
    let (status, _, body) = get(&url, &[("Range", "bytes=0-9"), ("If-Range", &etag)]);
    assert_eq!((status, body.len()), (206, 10));

    // Rewriting the file changes its validator.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(dir.path().join("boot/vmlinuz"), b"new kernel").unwrap();
    let (status, headers, body) = get(&url, &[("If-None-Match", &etag)]);
    assert_eq!((status, body.as_slice()), (200, b"new kernel".as_slice()));
    assert_ne!(header(&headers, "etag"), Some(etag.as_str()));

    assert_eq!(get(&format!("{}/store/ab/abcdef", s.url), &[]).2, b"chunk");
    for refused in ["/.hidden", "/boot/../.hidden", "/store", "/nothing"] {
        assert_eq!(get(&format!("{}{refused}", s.url), &[]).0, 404, "{refused}");
    }
    // Outside the root, through a symlink.
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
    assert_eq!(get(&format!("{}/passwd", s.url), &[]).0, 404);
}

#[test]
fn nodes_get_their_profile_and_their_reports_show() {
    let (dir, _) = sample_root();
    std::fs::write(
        dir.path().join("netboot.json"),
        r#"{"profiles": {"gpu": {"kernel": "boot/vmlinuz", "initrd": "boot/gpu.zst",
             "cmdline": "flint.manifest={server}/{profile}.json node={mac}"}},
            "nodes": {"52:54:00:00:00:07": "gpu"}}"#,
    )
    .unwrap();
    let s = serve(dir.path(), None);
    let (_, _, chain) = get(&format!("{}/boot.ipxe", s.url), &[]);
    assert!(String::from_utf8(chain).unwrap().contains("chain ipxe/${net0/mac:hexhyp}"));

    let (status, _, script) = get(&format!("{}/ipxe/52-54-00-00-00-07", s.url), &[]);
    let script = String::from_utf8(script).unwrap();
    assert_eq!(status, 200);
    let host = s.url.trim_start_matches("http://");
    assert!(
        script.contains(&format!(
            "kernel http://{host}/boot/vmlinuz initrd=gpu.zst flint.manifest=http://{host}/gpu.json node=52:54:00:00:00:07"
        )),
        "{script}"
    );
    let (_, _, other) = get(&format!("{}/ipxe/52-54-00-00-00-08", s.url), &[]);
    assert!(String::from_utf8(other).unwrap().contains("flint.report="), "the default profile reports");
    assert_eq!(get(&format!("{}/ipxe/not-a-mac", s.url), &[]).0, 400);

    let report = r#"{"mac": "52:54:00:00:00:07", "stage": "applied", "detail": "manifest version 3"}"#;
    let resp = agent().post(&format!("{}/report", s.url)).send(report).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let bad = agent().post(&format!("{}/report", s.url)).send("not json").unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    get(&format!("{}/boot/vmlinuz", s.url), &[]);

    let (_, _, status) = get(&format!("{}/status.json", s.url), &[]);
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    let node = &status["nodes"]["127.0.0.1"];
    assert_eq!(node["mac"], "52:54:00:00:00:07");
    assert_eq!(node["stages"][0]["stage"], "applied");
    assert_eq!(node["by_kind"]["kernel"]["bytes"], 300_000);
    assert_eq!(node["by_kind"]["script"]["requests"], 4);
    assert_eq!(status["served"]["manifests"]["manifest.json"], false);
    let (_, _, page) = get(&format!("{}/", s.url), &[]);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("52:54:00:00:00:07") && page.contains("applied: manifest version 3"), "{page}");
    assert!(page.contains("(no .sig: nodes refuse it)"));

    // A broken configuration is shown to the node instead of booting it wrongly.
    std::fs::write(dir.path().join("netboot.json"), r#"{"nodes": {"52:54:00:00:00:07": "gone"}}"#).unwrap();
    let (status, _, script) = get(&format!("{}/ipxe/52-54-00-00-00-07", s.url), &[]);
    assert_eq!(status, 500);
    assert!(String::from_utf8(script).unwrap().contains("not defined"));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn https_serves_to_init_trusting_the_pinned_ca() {
    let (dir, data) = sample_root();
    let tls = tempfile::tempdir().unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"];
    let ca = [
        "-subj",
        "/CN=flint-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ];
    openssl(tls.path(), &[&["req", "-x509"][..], &ec, &ca].concat());
    let leaf = [
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-subj",
        "/CN=netboot",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-addext",
        "basicConstraints=CA:FALSE",
    ];
    openssl(tls.path(), &[&["req", "-x509"][..], &ec, &leaf].concat());
    let s = serve(dir.path(), Some((&tls.path().join("cert.pem"), &tls.path().join("key.pem"))));
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let pinned = flint_init::fetch::Fetcher::new(&flint_init::fetch::Trust::Pem(tls.path().join("ca.pem"))).unwrap();
    assert_eq!(pinned.get(&format!("{}/boot/vmlinuz", s.url), 1 << 20).unwrap(), data);
    let public = flint_init::fetch::Fetcher::new(&flint_init::fetch::Trust::BuiltIn).unwrap();
    assert!(
        public.get(&format!("{}/boot/vmlinuz", s.url), 1 << 20).is_err(),
        "a self-signed certificate is not a public one"
    );
}
