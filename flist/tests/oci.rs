//! Container images made by the real tools: umoci builds an OCI image layout in two layers (the
//! second deletes a file, replaces a directory, adds a hardlink to a file of the first, and sets
//! the run configuration), skopeo turns it into a `docker save` archive. `flist pack` of either
//! unpacks to exactly what `umoci unpack` gives, carries the configuration as tags, and the
//! second image sharing the base uploads only its own chunks. The same image pushed by skopeo to
//! Debian's docker-registry is pulled by `flist pack oci:REF`, and the flist goes through the
//! same registry as an artifact (`flist push`, `flist pull`). A registry that wants token auth
//! (its token service signs JWTs the registry checks against its certificate) is used with
//! `--creds`, and refused without.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use util::{assert_same_tree, flist_ok, noise, write, TestDir};

fn tool(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (make deps): {e}"));
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `flist pack SRC` (a local registry is plain HTTP).
fn pack(t: &TestDir, src: &str, out: &str) -> serde_json::Value {
    let (store, output) = (t.store("store"), t.join(out));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack", &src, &"-o", &output, &"--store", &store, &"--json"];
    if src.starts_with("oci:") {
        args.push(&"--insecure");
    }
    let summary = flist_ok(&args);
    serde_json::from_str(&summary).unwrap()
}

fn base_tree(root: &Path) {
    write(&root.join("etc/os-release"), b"NAME=test\n");
    write(&root.join("usr/bin/big"), &noise(3 << 20, 1));
    write(&root.join("usr/lib/shared"), &noise(1 << 20, 2));
    write(&root.join("gone"), b"deleted by the second layer\n");
    write(&root.join("op/old1"), b"hidden by the opaque directory\n");
    write(&root.join("op/old2"), b"also hidden\n");
    std::fs::hard_link(root.join("usr/lib/shared"), root.join("usr/lib/shared.link")).unwrap();
    std::os::unix::fs::symlink("../lib/shared", root.join("usr/bin/lib")).unwrap();
    // PAX records umoci must write by length: every byte value in an xattr value, a capability
    // set with 0x0a bytes, a long path and link target that are not UTF-8.
    xattr::set(root.join("etc/os-release"), "user.every-byte", &(0..=255u8).collect::<Vec<u8>>()).unwrap();
    xattr::set(root.join("usr/bin/big"), "security.capability", &util::CAP_WITH_NEWLINES).unwrap();
    let long = std::ffi::OsStr::from_bytes(&[[b'n'; 120].as_slice(), &[0xe9, b'/'], &[b'm'; 80], &[0xff]].concat())
        .to_os_string();
    write(&root.join("long").join(&long), b"long and not UTF-8\n");
    let target: Vec<u8> = (0..200).map(|i| 0x80 + (i % 0x7f) as u8).collect();
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), root.join("long-target")).unwrap();
}

/// An OCI image layout with `base` (one layer) and `v2` (a second layer and a run
/// configuration), and `ref/rootfs`: v2 as `umoci unpack` gives it.
fn two_layer_image(t: &TestDir) -> std::path::PathBuf {
    let layout = t.join("layout");
    tool("umoci", &[&"init", &"--layout", &layout]);
    tool("umoci", &[&"new", &"--image", &format!("{}:base", layout.display())]);
    tool("umoci", &[&"unpack", &"--image", &format!("{}:base", layout.display()), &t.join("b")]);
    base_tree(&t.join("b/rootfs"));
    tool("umoci", &[&"repack", &"--image", &format!("{}:base", layout.display()), &t.join("b")]);

    tool("umoci", &[&"unpack", &"--image", &format!("{}:base", layout.display()), &t.join("c")]);
    let c = t.join("c/rootfs");
    std::fs::remove_file(c.join("gone")).unwrap();
    std::fs::remove_dir_all(c.join("op")).unwrap();
    write(&c.join("op/new"), b"the directory's only entry now\n");
    write(&c.join("usr/bin/app"), &noise(1 << 20, 3));
    std::fs::hard_link(c.join("usr/bin/big"), c.join("usr/bin/big.again")).unwrap();
    tool("umoci", &[&"repack", &"--image", &format!("{}:v2", layout.display()), &t.join("c")]);
    tool(
        "umoci",
        &[
            &"config",
            &"--image",
            &format!("{}:v2", layout.display()),
            &"--config.entrypoint",
            &"/usr/bin/app",
            &"--config.cmd",
            &"--serve",
            &"--config.env",
            &"MODE=demo",
            &"--config.workingdir",
            &"/srv",
            &"--config.user",
            &"1000:1000",
            &"--config.exposedports",
            &"8080/tcp",
            &"--config.label",
            &"org.flint.test=yes",
        ],
    );
    tool("umoci", &[&"unpack", &"--image", &format!("{}:v2", layout.display()), &t.join("ref")]);

    layout
}

#[test]
fn images_from_umoci_and_skopeo_pack_to_what_umoci_unpacks() {
    let t = TestDir::new();
    let layout = two_layer_image(&t);
    let base = pack(&t, &format!("oci-layout:{}:base", layout.display()), "base.fl");
    let v2 = pack(&t, &format!("oci-layout:{}:v2", layout.display()), "v2.fl");
    assert!(
        v2["new_chunks"].as_u64().unwrap() * 2 < v2["chunks"].as_u64().unwrap(),
        "the second image shares the base's chunks: {v2} after {base}"
    );
    flist_ok(&[&"unpack", &t.join("v2.fl"), &t.join("out")]);
    assert_same_tree(&t.join("ref/rootfs"), &t.join("out"));
    // What is compared holds the binary values (umoci kept them), so the comparison shows them exact.
    let every = xattr::get(t.join("ref/rootfs/etc/os-release"), "user.every-byte").unwrap();
    assert_eq!(every, Some((0..=255u8).collect::<Vec<u8>>()));
    let cap = xattr::get(t.join("out/usr/bin/big"), "security.capability").unwrap();
    assert_eq!(cap.as_deref(), Some(util::CAP_WITH_NEWLINES.as_slice()));

    let info: serde_json::Value = serde_json::from_str(&flist_ok(&[&"inspect", &"--json", &t.join("v2.fl")])).unwrap();
    let tags = &info["tags"];
    assert_eq!(tags["oci.entrypoint"], r#"["/usr/bin/app"]"#);
    assert_eq!(tags["oci.cmd"], r#"["--serve"]"#);
    assert!(tags["oci.env"].as_str().unwrap().contains("MODE=demo"), "{tags}");
    assert_eq!(tags["oci.workdir"], "/srv");
    assert_eq!(tags["oci.user"], "1000:1000");
    assert_eq!(tags["oci.ports"], "8080/tcp");
    assert_eq!(tags["oci.label.org.flint.test"], "yes");

    // The same image as `docker save` writes it.
    let archive = t.join("v2.tar");
    tool(
        "skopeo",
        &[
            &"copy",
            &"--quiet",
            &format!("oci:{}:v2", layout.display()),
            &format!("docker-archive:{}:flint/test:v2", archive.display()),
        ],
    );
    pack(&t, &format!("docker-archive:{}", archive.display()), "docker.fl");
    flist_ok(&[&"unpack", &t.join("docker.fl"), &t.join("out-docker")]);
    assert_same_tree(&t.join("ref/rootfs"), &t.join("out-docker"));
    let info: serde_json::Value =
        serde_json::from_str(&flist_ok(&[&"inspect", &"--json", &t.join("docker.fl")])).unwrap();
    assert_eq!(info["tags"]["oci.entrypoint"], r#"["/usr/bin/app"]"#);
}

#[test]
fn a_tampered_blob_is_refused() {
    let t = TestDir::new();
    let layout = t.join("layout");
    tool("umoci", &[&"init", &"--layout", &layout]);
    tool("umoci", &[&"new", &"--image", &format!("{}:base", layout.display())]);
    tool("umoci", &[&"unpack", &"--image", &format!("{}:base", layout.display()), &t.join("b")]);
    write(&t.join("b/rootfs/file"), b"content");
    tool("umoci", &[&"repack", &"--image", &format!("{}:base", layout.display()), &t.join("b")]);
    // The biggest blob is the layer: change one byte.
    let blobs = t.join("layout/blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    let out = util::flist(&[
        &"pack",
        &format!("oci-layout:{}:base", layout.display()),
        &"-o",
        &t.join("x.fl"),
        &"--store",
        &t.store("store"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("its sha256 is"), "{err}");
}

/// Debian's docker-registry on a free port of 127.0.0.1, storing in `dir`.
struct Registry {
    child: std::process::Child,
    address: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry(dir: &Path) -> Registry {
    registry_with(dir, "")
}

/// The registry with `extra` configuration (YAML, top level).
fn registry_with(dir: &Path, extra: &str) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry must be installed (make deps)");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(started.elapsed().as_secs() < 30, "docker-registry did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Registry { child, address }
}

/// skopeo copies the layout's `tag` to the registry as `repo` (extra options first: `--all`,
/// `--dest-creds=U:P`).
fn push_image(layout: &Path, tag: &str, reg: &Registry, repo: &str, extra: &[&str]) {
    let mut args: Vec<String> = ["copy", "--quiet", "--dest-tls-verify=false"].map(String::from).to_vec();
    args.extend(extra.iter().map(|e| e.to_string()));
    args.push(format!("oci:{}:{tag}", layout.display()));
    args.push(format!("docker://{}/{repo}", reg.address));
    tool("skopeo", &args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>).collect::<Vec<_>>());
}

#[test]
fn images_are_pulled_from_a_registry() {
    let t = TestDir::new();
    let layout = two_layer_image(&t);
    let reg = registry(&t.join("registry"));
    push_image(&layout, "v2", &reg, "flint/test:v2", &[]);
    pack(&t, &format!("oci:{}/flint/test:v2", reg.address), "pulled.fl");
    flist_ok(&[&"unpack", &t.join("pulled.fl"), &t.join("out")]);
    assert_same_tree(&t.join("ref/rootfs"), &t.join("out"));
    let info: serde_json::Value =
        serde_json::from_str(&flist_ok(&[&"inspect", &"--json", &t.join("pulled.fl")])).unwrap();
    assert_eq!(info["tags"]["oci.entrypoint"], r#"["/usr/bin/app"]"#);
    // The flist itself through the registry, as an artifact.
    let flists = format!("oci:{}/flint/flists:v2", reg.address);
    flist_ok(&[&"push", &t.join("pulled.fl"), &flists, &"--insecure"]);
    flist_ok(&[&"pull", &flists, &"-o", &t.join("back.fl"), &"--insecure"]);
    assert_eq!(std::fs::read(t.join("back.fl")).unwrap(), std::fs::read(t.join("pulled.fl")).unwrap());
    // Any command takes the flist by its registry reference, checked when a digest is given.
    let blake3 = blake3::hash(&std::fs::read(t.join("pulled.fl")).unwrap()).to_hex().to_string();
    let listed = flist_ok(&[&"ls", &format!("{flists}@blake3:{blake3}"), &"/", &"--insecure"]);
    assert_eq!(listed, flist_ok(&[&"ls", &t.join("pulled.fl"), &"/"]));
    let wrong = util::flist(&[&"ls", &flists, &"/", &"--insecure", &"--digest", &"0".repeat(64)]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("refused"), "{}", String::from_utf8_lossy(&wrong.stderr));
    let image =
        util::flist(&[&"pull", &format!("oci:{}/flint/test:v2", reg.address), &"-o", &t.join("no.fl"), &"--insecure"]);
    assert!(
        String::from_utf8_lossy(&image.stderr).contains("is not an flist"),
        "{}",
        String::from_utf8_lossy(&image.stderr)
    );
    let missing = util::flist(&[
        &"pack",
        &format!("oci:{}/flint/none:v9", reg.address),
        &"--insecure",
        &"-o",
        &t.join("x.fl"),
        &"--store",
        &t.store("store"),
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("HTTP 404"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// Adds `multi` to the layout: an index of v2 as linux/amd64 and base as linux/arm64.
fn add_multi_platform_index(layout: &Path) {
    use sha2::Digest;
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let by_tag = |tag: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone()
    };
    let mut amd64 = by_tag("v2");
    amd64["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let mut arm64 = by_tag("base");
    arm64["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    for d in [&mut amd64, &mut arm64] {
        d.as_object_mut().unwrap().remove("annotations");
    }
    let nested = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm64, amd64]})
    .to_string();
    let digest = hex::encode(sha2::Sha256::digest(nested.as_bytes()));
    std::fs::write(layout.join("blobs/sha256").join(&digest), &nested).unwrap();
    index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{digest}"),
        "size": nested.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}));
    std::fs::write(&index_path, index.to_string()).unwrap();
}

#[test]
fn a_multi_platform_image_gives_the_asked_platform() {
    let t = TestDir::new();
    let layout = two_layer_image(&t);
    add_multi_platform_index(&layout);
    let reg = registry(&t.join("registry"));
    push_image(&layout, "multi", &reg, "flint/multi:1", &["--all"]);
    for (source, name) in [
        (format!("oci-layout:{}:multi", layout.display()), "layout"),
        (format!("oci:{}/flint/multi:1", reg.address), "registry"),
    ] {
        pack(&t, &source, &format!("{name}-amd64.fl"));
        flist_ok(&[&"unpack", &t.join(&format!("{name}-amd64.fl")), &t.join(&format!("{name}-amd64"))]);
        assert_same_tree(&t.join("ref/rootfs"), &t.join(&format!("{name}-amd64")));
        let (arm, store) = (t.join(&format!("{name}-arm64.fl")), t.store("store"));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"pack", &source, &"-o", &arm, &"--store", &store, &"--platform", &"linux/arm64/v8"];
        if name == "registry" {
            args.push(&"--insecure");
        }
        flist_ok(&args);
        let ls = flist_ok(&[&"ls", &arm, &"/"]);
        assert!(ls.contains("gone"), "linux/arm64 is the base image ({name}): {ls}");
        let mut missing = args.clone();
        missing[7] = &"linux/s390x";
        let out = util::flist(&missing);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no linux/s390x image"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A registry token service, as Docker Hub's: `GET /token?service=S&scope=repository:NAME:ACTIONS`
/// with basic auth answers a JWT (ES256, its certificate in the x5c header) granting the scope.
struct TokenService {
    address: String,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn token_service(dir: &Path, user: &'static str, password: &'static str) -> TokenService {
    use base64::Engine;
    use std::io::{BufRead, Write};
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "token.key"]);
    openssl(&["req", "-new", "-x509", "-key", "token.key", "-out", "token.crt", "-days", "2", "-subj", "/CN=flint"]);
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", "token.key", "-outform", "DER", "-out", "token.p8"]);
    openssl(&["x509", "-in", "token.crt", "-outform", "DER", "-out", "token.der"]);
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &std::fs::read(dir.join("token.p8")).unwrap(),
        &rng,
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = url.encode(
        serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [b64.encode(std::fs::read(dir.join("token.der")).unwrap())]})
            .to_string(),
    );
    let expected = format!("Basic {}", b64.encode(format!("{user}:{password}")));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = issued.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&conn);
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    authorized |= name.eq_ignore_ascii_case("authorization") && value.trim() == expected;
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("/");
            let query = url::Url::parse(&format!("http://x{target}")).unwrap();
            let pairs: Vec<(String, String)> = query.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
            let service = pairs.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()).unwrap_or_default();
            let access: Vec<serde_json::Value> = pairs
                .iter()
                .filter(|(k, _)| k == "scope")
                .filter_map(|(_, scope)| {
                    let mut parts = scope.splitn(3, ':');
                    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let mut out = &conn;
            if !authorized {
                write!(out, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
                continue;
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let claims = url.encode(
                serde_json::json!({"iss": "flint-test", "sub": user, "aud": service, "iat": now, "nbf": now - 10,
                                   "exp": now + 300, "jti": format!("{now}-{}", counter.load(std::sync::atomic::Ordering::SeqCst)),
                                   "access": access})
                .to_string(),
            );
            let signed = format!("{header}.{claims}");
            let signature = url.encode(key.sign(&rng, signed.as_bytes()).unwrap().as_ref());
            let body = serde_json::json!({"token": format!("{signed}.{signature}")}).to_string();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    TokenService { address, issued }
}

#[test]
fn a_registry_with_token_auth_is_used_with_credentials_and_refused_without() {
    let t = TestDir::new();
    let layout = two_layer_image(&t);
    let auth = t.join("auth");
    std::fs::create_dir_all(&auth).unwrap();
    let tokens = token_service(&auth, "alice", "s3cret");
    let reg = registry_with(
        &t.join("registry"),
        &format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: flint-registry\n    issuer: flint-test\n    rootcertbundle: {}\n",
            tokens.address,
            auth.join("token.crt").display()
        ),
    );
    let image = format!("oci:{}/flint/private:v2", reg.address);
    push_image(&layout, "v2", &reg, "flint/private:v2", &["--dest-creds=alice:s3cret"]);
    let attempt = |creds: Option<&str>, out: &str| {
        let mut args: Vec<String> = ["pack", &image, "--insecure", "-o"].map(String::from).to_vec();
        args.push(t.join(out).display().to_string());
        args.extend(["--store".to_string(), t.store("store")]);
        if let Some(c) = creds {
            args.extend(["--creds".to_string(), c.to_string()]);
        }
        util::flist(&args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>).collect::<Vec<_>>())
    };
    let before = tokens.issued.load(std::sync::atomic::Ordering::SeqCst);
    let ok = attempt(Some("alice:s3cret"), "private.fl");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst) > before, "the token service was asked");
    flist_ok(&[&"unpack", &t.join("private.fl"), &t.join("out")]);
    assert_same_tree(&t.join("ref/rootfs"), &t.join("out"));
    for (creds, why) in [(None, "without credentials"), (Some("alice:wrong"), "with a wrong password")] {
        let refused = attempt(creds, "refused.fl");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && err.contains("auth"), "{why}: {err}");
    }
    // The flist itself, pushed and pulled with the same credentials.
    let flists = format!("oci:{}/flint/private-flists:v2", reg.address);
    flist_ok(&[&"push", &t.join("private.fl"), &flists, &"--insecure", &"--creds", &"alice:s3cret"]);
    flist_ok(&[&"pull", &flists, &"-o", &t.join("back.fl"), &"--insecure", &"--creds", &"alice:s3cret"]);
    assert_eq!(std::fs::read(t.join("back.fl")).unwrap(), std::fs::read(t.join("private.fl")).unwrap());
}

#[test]
fn a_registry_with_basic_auth_is_used_with_credentials() {
    let t = TestDir::new();
    let layout = two_layer_image(&t);
    let htpasswd = Command::new("htpasswd").args(["-Bbn", "bob", "pa55"]).output().expect("htpasswd (apache2-utils)");
    let users = t.join("htpasswd");
    std::fs::write(&users, &htpasswd.stdout).unwrap();
    let reg = registry_with(
        &t.join("registry"),
        &format!("auth:\n  htpasswd:\n    realm: flint\n    path: {}\n", users.display()),
    );
    push_image(&layout, "v2", &reg, "flint/basic:v2", &["--dest-creds=bob:pa55"]);
    let image = format!("oci:{}/flint/basic:v2", reg.address);
    let out = t.join("basic.fl");
    let store = t.store("store");
    flist_ok(&[&"pack", &image, &"--insecure", &"--creds", &"bob:pa55", &"-o", &out, &"--store", &store]);
    flist_ok(&[&"unpack", &out, &t.join("out")]);
    assert_same_tree(&t.join("ref/rootfs"), &t.join("out"));
    let refused = util::flist(&[&"pack", &image, &"--insecure", &"-o", &t.join("no.fl"), &"--store", &store]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("authentication required"), "{err}");
}
