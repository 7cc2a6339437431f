//! Fetching over HTTPS from a real TLS server (Python's, with certificates made by openssl):
//! the pinned CA is trusted, another CA and the built-in roots are not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flint_init::fetch::{Fetcher, Trust};

#[path = "../../flist/tests/util/servers.rs"]
#[allow(dead_code)]
mod servers;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA named `name`: NAME.key, NAME.pem.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn https_trusts_the_pinned_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "flint-ca");
    ca(d, "other-ca");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=server",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "flint-ca.pem",
            "-CAkey",
            "flint-ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    std::fs::create_dir_all(d.join("www")).unwrap();
    std::fs::write(d.join("www/manifest.json"), b"{\"version\": 1}").unwrap();

    let port = servers::free_port();
    let script = format!(
        "import http.server, ssl, functools\n\
         h = functools.partial(http.server.SimpleHTTPRequestHandler, directory='{www}')\n\
         s = http.server.HTTPServer(('127.0.0.1', {port}), h)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('{d}/server.pem', '{d}/server.key')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        www = d.join("www").display(),
        d = d.display()
    );
    let _server = Killed(
        Command::new("python3").arg("-c").arg(script).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}/manifest.json");
    let pinned = Fetcher::new(&Trust::Pem(d.join("flint-ca.pem"))).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match pinned.get(&url, 1 << 20) {
            Ok(b) => break b,
            Err(e) => {
                assert!(Instant::now() < until, "no answer over TLS: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(body, b"{\"version\": 1}");

    for trust in [Trust::Pem(d.join("other-ca.pem")), Trust::BuiltIn] {
        let err = Fetcher::new(&trust).unwrap().get(&url, 1 << 20).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{trust:?}: {err}");
    }
}
