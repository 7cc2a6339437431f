//! `netboot serve` as a process, spoken to over real sockets: byte ranges and ETags, boot
//! scripts by MAC address from `netboot.json`, reports and the status page, paths outside the
//! root refused, and HTTPS with a certificate from a CA made by openssl, fetched by init's own client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::path::Path;
use std::process::Command;

use util::{agent, get, header, serve, serve_with, signed_request};

fn sample_root() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(dir.path().join("boot")).unwrap();
    std::fs::create_dir_all(dir.path().join("store/ab")).unwrap();
    std::fs::write(dir.path().join("boot/vmlinuz"), &data).unwrap();
    std::fs::write(dir.path().join("store/ab/abcdef"), b"chunk").unwrap();
    std::fs::write(dir.path().join("manifest.json"), b"{}").unwrap();
    std::fs::write(dir.path().join(".hidden"), b"secret").unwrap();
    // Nodes are taken as they come here; enrollment has tests of its own (fleet.rs).
    std::fs::write(dir.path().join("netboot.json"), r#"{"enrollment": "open"}"#).unwrap();
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
    // Past 1 MiB a body is streamed rather than read at once: the same bytes either way.
    let big: Vec<u8> = (0..3_000_017u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.path().join("boot/big"), &big).unwrap();
    let big_url = format!("{}/boot/big", s.url);
    assert!(get(&big_url, &[]).2 == big);
    for (range, from, to) in [("bytes=5-2999999", 5, 3_000_000), ("bytes=1048576-1048576", 1_048_576, 1_048_577)] {
        let (status, _, body) = get(&big_url, &[("Range", range)]);
        assert!(status == 206 && body == big[from..to], "{range}: {status}, {} bytes", body.len());
    }
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

#[test]
fn signed_requests_tell_nodes_apart_and_forged_replayed_or_unsigned_ones_are_refused() {
    use flint_manifest::signed::{node_id, Envelope};
    let (dir, _) = sample_root();
    std::fs::write(dir.path().join("manifest.json"), "shared").unwrap();
    let key = flint_manifest::ed25519::SigningKey::from_bytes(&[11; 32]);
    let id = node_id(&key.verifying_key().to_bytes());
    std::fs::create_dir_all(dir.path().join("nodes").join(&id)).unwrap();
    std::fs::write(dir.path().join("nodes").join(&id).join("manifest.json"), "for this node").unwrap();
    let s = serve(dir.path(), None);
    let report = br#"{"mac": "52:54:00:00:00:09", "stage": "applied", "detail": "v1"}"#;
    let at = |boot, seq| Envelope { key: key.verifying_key().to_bytes(), boot, stream: "report".into(), seq, time: 0 };
    let post =
        |e: &Envelope, tamper: &[(&str, &str)]| signed_request(&s.url, "POST", "/report", report, &key, e, tamper);

    assert_eq!(post(&at(1, 0), &[]).0, 200);
    assert_eq!(post(&at(1, 1), &[]).0, 200);
    // The same request again, or an older one: a replay.
    let (status, why) = post(&at(1, 1), &[]);
    assert_eq!(status, 409, "{why}");
    assert!(why.contains("replayed"), "{why}");
    assert_eq!(post(&at(1, 0), &[]).0, 409);
    // Signed by another key while claiming this one, or with a changed field: forged.
    let other = flint_manifest::ed25519::SigningKey::from_bytes(&[12; 32]);
    let forged = flint_manifest::signed::sign(&other, &at(1, 5), "POST", "/report", report);
    let forged_sig = forged.iter().find(|(n, _)| *n == "flint-signature").unwrap().1.clone();
    assert_eq!(post(&at(1, 5), &[("flint-signature", &forged_sig)]).0, 403);
    assert_eq!(post(&at(1, 5), &[("flint-seq", "6")]).0, 403);
    assert_eq!(post(&at(1, 5), &[("flint-seq", "x")]).0, 400);
    // A rebooted node: a new boot id, its sequence from 0 again.
    assert_eq!(post(&at(2, 0), &[]).0, 200);
    assert_eq!(post(&at(1, 9), &[]).0, 409, "the old boot's requests stay refused");

    // Manifest requests are a stream of their own; this node gets its own manifest.
    let manifest = |boot, seq| Envelope { stream: "manifest".into(), ..at(boot, seq) };
    let (status, body) = signed_request(&s.url, "GET", "/manifest.json", b"", &key, &manifest(2, 0), &[]);
    assert_eq!((status, body.as_str()), (200, "for this node"));
    assert_eq!(signed_request(&s.url, "GET", "/manifest.json", b"", &key, &manifest(2, 0), &[]).0, 409);
    assert_eq!(get(&format!("{}/manifest.json", s.url), &[]).2, b"shared", "unsigned: the shared one");

    let (_, _, status) = get(&format!("{}/status.json", s.url), &[]);
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    let node = &status["nodes"][&id];
    assert_eq!(node["node"], id.as_str());
    assert_eq!(node["boot"], 2);
    assert_eq!(node["mac"], "52:54:00:00:00:09");
    assert_eq!(node["stages"].as_array().unwrap().len(), 3, "{node}");
    let refused = &status["nodes"]["refused 127.0.0.1"];
    assert_eq!(refused["refused"], 7, "{refused}");
    assert!(refused["stages"].as_array().unwrap().is_empty());

    // With --signed-only, unsigned reports and manifest requests are refused.
    let strict = serve_with(dir.path(), None, &["--signed-only"]);
    assert_eq!(agent().post(&format!("{}/report", strict.url)).send(&report[..]).unwrap().status().as_u16(), 401);
    assert_eq!(get(&format!("{}/manifest.json", strict.url), &[]).0, 401);
    assert_eq!(get(&format!("{}/boot/vmlinuz", strict.url), &[]).0, 200, "boot files stay open to firmware");
    // It keeps the same state (the root's .netboot): what the first server accepted stays a replay.
    assert_eq!(signed_request(&strict.url, "POST", "/report", report, &key, &at(2, 0), &[]).0, 409);
    let (status, _) = signed_request(&strict.url, "POST", "/report", report, &key, &at(3, 0), &[]);
    assert_eq!(status, 200);
}

#[test]
fn init_signs_its_manifest_requests_as_the_server_checks_them() {
    let (dir, _) = sample_root();
    std::fs::write(dir.path().join("manifest.json"), "shared").unwrap();
    let key = flint_manifest::ed25519::SigningKey::from_bytes(&[13; 32]);
    let identity = flint_init::identity::Identity::load(None, None, Some(key)).unwrap();
    let id = identity.id.clone();
    std::fs::create_dir_all(dir.path().join("nodes").join(&id)).unwrap();
    std::fs::write(dir.path().join("nodes").join(&id).join("manifest.json"), "mine").unwrap();
    let s = serve_with(dir.path(), None, &["--signed-only"]);
    let fetcher = flint_init::fetch::Fetcher::new(&flint_init::fetch::Trust::BuiltIn).unwrap();
    // Before the identity is installed the request goes unsigned, and is refused.
    assert!(fetcher.get_signed(&format!("{}/manifest.json", s.url), 100, "manifest").is_err());
    let installed = flint_init::identity::install(identity);
    for query in ["", "?node=a%20b&x=1"] {
        let got = fetcher.get_signed(&format!("{}/manifest.json{query}", s.url), 100, "manifest").unwrap();
        assert_eq!(got, b"mine", "{query}");
    }
    let (_, _, status) = get(&format!("{}/status.json", s.url), &[]);
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["nodes"][&installed.id]["public_key"], installed.public_hex());
}

#[test]
fn sign_sets_an_expiry_that_nodes_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let netboot = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_netboot")).current_dir(dir.path()).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    netboot(&["keygen", "op.key"]);
    std::fs::write(dir.path().join("m.json"), r#"{"version": 4, "hostname": "n1"}"#).unwrap();
    let said = netboot(&["sign", "m.json", "--key", "op.key", "--expires", "7d"]);
    assert!(said.contains("version 4") && said.contains("expires 20"), "{said}");
    let bytes = std::fs::read(dir.path().join("m.json")).unwrap();
    let sig = std::fs::read(dir.path().join("m.json.sig")).unwrap();
    let public = flint_manifest::parse_key(&std::fs::read_to_string(dir.path().join("op.key.pub")).unwrap()).unwrap();
    let plan = flint_manifest::verify(&bytes, Some(&sig), &public).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expires = plan.expires.unwrap();
    assert!((now + 7 * 86_400 - 5..=now + 7 * 86_400 + 5).contains(&expires), "{expires} vs {now}");
    assert_eq!(plan.hostname.as_deref(), Some("n1"));
    let bad = Command::new(env!("CARGO_BIN_EXE_netboot"))
        .current_dir(dir.path())
        .args(["sign", "m.json", "--key", "op.key", "--expires", "7y"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unit"));
}

#[test]
fn log_batches_are_taken_only_signed_checked_and_stored_once_in_order() {
    use flint_manifest::logs::{Batch, Record};
    use flint_manifest::signed::{node_id, Envelope};
    let (dir, _) = sample_root();
    let s = serve(dir.path(), None);
    let key = flint_manifest::ed25519::SigningKey::from_bytes(&[21; 32]);
    let id = node_id(&key.verifying_key().to_bytes());
    let at = |boot, seq| Envelope { key: key.verifying_key().to_bytes(), boot, stream: "logs".into(), seq, time: 0 };
    let batch = |boot, ns: std::ops::Range<u64>, metrics: Option<&str>| {
        let records = ns.map(|n| Record { n, t: 1, s: "web".into(), l: format!("line {n} \u{1}\"\n") }).collect();
        serde_json::to_vec(&Batch { boot, records, metrics: metrics.map(String::from) }).unwrap()
    };
    let post = |e: &Envelope, body: &[u8]| signed_request(&s.url, "POST", "/logs", body, &key, e, &[]);

    let first = batch(1, 0..3, Some("flint_manifest_version 4\n"));
    let unsigned = agent().post(&format!("{}/logs", s.url)).send(&first[..]).unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    let (status, answer) = post(&at(1, 0), &first);
    assert_eq!((status, answer.as_str()), (200, r#"{"boot":1,"next":3}"#));
    assert_eq!(post(&at(1, 0), &first).0, 409, "a replay");
    // Sent again under a new sequence (its answer was lost), with one more line: stored once.
    let (status, answer) = post(&at(1, 1), &batch(1, 1..4, None));
    assert_eq!((status, answer.as_str()), (200, r#"{"boot":1,"next":4}"#));
    // Checked: lines of a later boot than the signer's, numbers out of order, bad JSON, too big.
    let (status, why) = post(&at(1, 2), &batch(5, 0..1, None));
    assert_eq!(status, 400, "{why}");
    let backwards =
        br#"{"boot": 1, "records": [{"n": 9, "t": 0, "s": "a", "l": ""}, {"n": 8, "t": 0, "s": "a", "l": ""}]}"#;
    assert_eq!(post(&at(1, 3), backwards).0, 400);
    assert_eq!(post(&at(1, 4), b"{").0, 400);
    let huge = vec![b' '; flint_manifest::logs::MAX_BATCH + 1];
    let mut big = agent().post(&format!("{}/logs", s.url));
    for (k, v) in flint_manifest::signed::sign(&key, &at(1, 5), "POST", "/logs", &huge) {
        big = big.header(k, v);
    }
    assert_eq!(big.send(&huge[..]).unwrap().status().as_u16(), 413);

    let (status, _, body) = get(&format!("{}/logs/{id}", s.url), &[]);
    assert_eq!(status, 200);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let said: Vec<&str> = lines.iter().map(|l| l["l"].as_str().unwrap()).collect();
    assert_eq!(said, ["line 0 \u{1}\"\n", "line 1 \u{1}\"\n", "line 2 \u{1}\"\n", "line 3 \u{1}\"\n"]);
    assert_eq!(get(&format!("{}/logs/{id}?tail=1", s.url), &[]).2.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(get(&format!("{}/metrics/{id}", s.url), &[]).2, b"flint_manifest_version 4\n");
    assert_eq!(get(&format!("{}/logs/..%2Fx", s.url), &[]).0, 404);
    assert_eq!(get(&format!("{}/.netboot/logs/{id}.jsonl", s.url), &[]).0, 404, "never served as a file");
    let (_, _, status) = get(&format!("{}/status.json", s.url), &[]);
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["nodes"][&id]["log_lines"], 4);
}

#[test]
fn a_server_killed_with_sigkill_forgets_nothing_it_answered_for() {
    use flint_manifest::signed::{node_id, Envelope};
    let (dir, _) = sample_root();
    let state = tempfile::tempdir().unwrap();
    let with_state = ["--state", state.path().to_str().unwrap()];
    let key = flint_manifest::ed25519::SigningKey::from_bytes(&[31; 32]);
    let id = node_id(&key.verifying_key().to_bytes());
    let at = |seq| Envelope { key: key.verifying_key().to_bytes(), boot: 4, stream: "report".into(), seq, time: 0 };
    let report = br#"{"mac": "52:54:00:00:00:31", "stage": "applied", "detail": "v1"}"#;

    let s = serve_with(dir.path(), None, &with_state);
    assert_eq!(signed_request(&s.url, "POST", "/report", report, &key, &at(0), &[]).0, 200);
    assert_eq!(get(&format!("{}/boot/vmlinuz", s.url), &[]).0, 200, "an unsigned fetch from the node's address");
    for _ in 0..3 {
        assert_eq!(get(&format!("{}/", s.url), &[]).0, 200);
    }
    // Counts are written within a second; what was answered for, before the answer.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(s); // SIGKILL

    let s = serve_with(dir.path(), None, &with_state);
    let (status, why) = signed_request(&s.url, "POST", "/report", report, &key, &at(0), &[]);
    assert_eq!(status, 409, "the replay memory outlived the server: {why}");
    assert_eq!(signed_request(&s.url, "POST", "/report", report, &key, &at(1), &[]).0, 200);
    let (_, _, body) = get(&format!("{}/status.json", s.url), &[]);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let node = &status["nodes"][&id];
    assert_eq!(node["mac"], "52:54:00:00:00:31");
    assert_eq!(node["boot"], 4);
    assert_eq!(node["stages"].as_array().unwrap().len(), 2, "{node}");
    assert_eq!(node["by_kind"]["kernel"]["requests"], 1, "{node}");
    let keys: Vec<&String> = status["nodes"].as_object().unwrap().keys().collect();
    assert!(!keys.iter().any(|k| *k == "127.0.0.1"), "viewing the status page made no node: {keys:?}");
    drop(s);
    // A database from a newer server is refused, with the reason.
    let db = state.path().join("netboot.db");
    rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netboot"))
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.path())
        .args(with_state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("made by a newer netboot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_request_refused_for_a_failed_write_may_be_sent_again() {
    use flint_manifest::signed::Envelope;
    let (dir, _) = sample_root();
    let state = tempfile::tempdir().unwrap();
    let s = serve_with(dir.path(), None, &["--state", state.path().to_str().unwrap()]);
    let key = flint_manifest::ed25519::SigningKey::from_bytes(&[41; 32]);
    let at = |seq| Envelope { key: key.verifying_key().to_bytes(), boot: 1, stream: "report".into(), seq, time: 0 };
    let report = br#"{"mac": "52:54:00:00:00:41", "stage": "applied", "detail": "v1"}"#;
    assert_eq!(signed_request(&s.url, "POST", "/report", report, &key, &at(0), &[]).0, 200);
    // Another writer holds the database past the server's busy timeout: the write fails.
    let mut other = rusqlite::Connection::open(state.path().join("netboot.db")).unwrap();
    let lock = other.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let (status, why) = signed_request(&s.url, "POST", "/report", report, &key, &at(1), &[]);
    assert_eq!(status, 503, "{why}");
    drop(lock);
    // What was not stored was not remembered as seen: the same request is taken now, once.
    let (status, why) = signed_request(&s.url, "POST", "/report", report, &key, &at(1), &[]);
    assert_eq!(status, 200, "{why}");
    assert_eq!(signed_request(&s.url, "POST", "/report", report, &key, &at(1), &[]).0, 409);
}

/// `/metrics` lines as (name with labels, value); every line is a comment or a sample.
fn metrics(url: &str) -> Vec<(String, f64)> {
    let (status, headers, body) = get(&format!("{url}/metrics"), &[]);
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP flint_") || line.starts_with("# TYPE flint_") {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let bare = name.split('{').next().unwrap();
        assert!(bare.starts_with("flint_") && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with("\"}")), "{line}");
        }
        samples.push((name.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}"))));
    }
    samples
}

fn sample(samples: &[(String, f64)], name: &str) -> Option<f64> {
    samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

#[test]
fn metrics_count_nodes_by_state_and_version_and_what_was_served_and_refused() {
    use flint_manifest::signed::Envelope;
    let (dir, data) = sample_root();
    let state = tempfile::tempdir().unwrap();
    let s = serve_with(dir.path(), None, &["--state", state.path().to_str().unwrap()]);
    let post = |seed: u8, seq: u64, stage: &str, detail: &str| {
        let key = flint_manifest::ed25519::SigningKey::from_bytes(&[seed; 32]);
        let e = Envelope { key: key.verifying_key().to_bytes(), boot: 1, stream: "report".into(), seq, time: 0 };
        let body = serde_json::json!({"stage": stage, "detail": detail}).to_string();
        signed_request(&s.url, "POST", "/report", body.as_bytes(), &key, &e, &[]).0
    };
    for seed in [1, 2] {
        assert_eq!(post(seed, 0, "applied", "manifest version 3: 1 flists mounted, 2 services"), 200);
        assert_eq!(post(seed, 1, "healthy", "the health window passed"), 200);
    }
    assert_eq!(post(3, 0, "applied", "manifest version 4: 1 flists mounted, 2 services"), 200);
    assert_eq!(post(3, 1, "rollback", "to version 3"), 200);
    assert_eq!(post(3, 1, "rollback", "to version 3"), 409);
    assert_eq!(get(&format!("{}/boot/vmlinuz", s.url), &[]).2, data);
    assert_eq!(get(&format!("{}/store/ab/abcdef", s.url), &[]).2, b"chunk");
    let before = metrics(&s.url);
    assert_eq!(sample(&before, "flint_nodes{state=\"healthy\",version=\"3\"}"), Some(2.0), "{before:?}");
    assert_eq!(sample(&before, "flint_nodes{state=\"rollback\",version=\"4\"}"), Some(1.0), "{before:?}");
    assert_eq!(sample(&before, "flint_reports_total"), Some(6.0));
    assert_eq!(sample(&before, "flint_refused_requests_total{reason=\"replayed\"}"), Some(1.0));
    assert_eq!(sample(&before, "flint_refusing_addresses"), Some(1.0));
    assert_eq!(sample(&before, "flint_served_requests_total{kind=\"report\"}"), Some(7.0));
    assert_eq!(sample(&before, "flint_served_bytes_total{kind=\"kernel\"}"), Some(data.len() as f64), "{before:?}");
    assert_eq!(sample(&before, "flint_served_bytes_total{kind=\"chunk\"}"), Some(5.0));
    // Every acknowledged report was one database write, at least.
    let writes = sample(&before, "flint_db_write_seconds_count").unwrap();
    assert!(writes >= 6.0, "{writes}");
    assert_eq!(sample(&before, "flint_db_write_seconds_bucket{le=\"+Inf\"}"), Some(writes));
    // Scraping is not a node; it is counted as a page.
    let after = metrics(&s.url);
    let nodes: f64 = after.iter().filter(|(n, _)| n.starts_with("flint_nodes{")).map(|(_, v)| v).sum();
    assert_eq!(nodes, 3.0, "{after:?}");
    assert_eq!(sample(&after, "flint_served_requests_total{kind=\"page\"}"), Some(1.0));
}
