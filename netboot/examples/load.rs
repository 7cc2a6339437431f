//! Load on a `netboot serve`: N simulated nodes booting at once, each doing what a node does —
//! the chain script and its own script by MAC, kernel, initramfs, its signed manifest and
//! signature, the flist, a working set of chunks, three signed reports and a signed log batch —
//! over its own connection. Prints a JSON summary: requests/s, latency percentiles per kind,
//! errors. Used by `bench/load.py`, which starts the server, raises RLIMIT_NOFILE and measures
//! it. Targets only loopback addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use flint_manifest::logs::{Batch, Record};
use flint_manifest::signed::{self, Envelope};

struct Args {
    server: String,
    nodes: usize,
    kernel: String,
    initrd: String,
    flist: String,
    chunks: Vec<String>,
    working_set: usize,
}

fn args() -> Args {
    let mut a: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        a.insert(k.trim_start_matches("--").to_string(), v);
    }
    let get = |k: &str| a.get(k).cloned().unwrap_or_else(|| panic!("--{k} is needed"));
    let server = get("server");
    let host = server.split("://").nth(1).unwrap_or_default();
    assert!(
        host.starts_with("127.") || host.starts_with("[::1]"),
        "the load targets only a loopback address: {server}"
    );
    let chunks: Vec<String> =
        std::fs::read_to_string(get("chunks")).unwrap().lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    Args {
        server,
        nodes: get("nodes").parse().unwrap(),
        kernel: get("kernel"),
        initrd: get("initrd"),
        flist: get("flist"),
        chunks,
        working_set: get("working-set").parse().unwrap(),
    }
}

/// Latencies by kind, and errors.
#[derive(Default)]
struct Seen {
    took: BTreeMap<&'static str, Vec<f64>>,
    errors: BTreeMap<String, u64>,
    bytes: u64,
}

struct Node {
    agent: ureq::Agent,
    key: flint_manifest::ed25519::SigningKey,
    mac: String,
    seq: BTreeMap<&'static str, u64>,
    seen: Seen,
}

impl Node {
    fn envelope(&mut self, stream: &'static str) -> Envelope {
        let seq = self.seq.entry(stream).or_default();
        *seq += 1;
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Envelope { key: self.key.verifying_key().to_bytes(), boot: 1, stream: stream.into(), seq: *seq, time }
    }

    /// One request of `kind`; manifests, reports and logs are signed as a node signs them.
    fn request(&mut self, kind: &'static str, server: &str, method: &str, target: &str, body: Option<Vec<u8>>) {
        let url = format!("{server}{target}");
        let headers = match kind {
            "manifest" | "report" | "logs" => {
                let e = self.envelope(kind);
                signed::sign(&self.key, &e, method, target, body.as_deref().unwrap_or_default())
            }
            _ => Vec::new(),
        };
        let started = Instant::now();
        let result = match &body {
            Some(b) => {
                let mut req = self.agent.post(&url);
                for (k, v) in &headers {
                    req = req.header(*k, v.as_str());
                }
                req.send(&b[..])
            }
            None => {
                let mut req = self.agent.get(&url);
                for (k, v) in &headers {
                    req = req.header(*k, v.as_str());
                }
                req.call()
            }
        };
        match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let n = std::io::copy(&mut resp.body_mut().as_reader(), &mut std::io::sink()).unwrap_or(0);
                self.seen.bytes += n;
                if status != 200 {
                    *self.seen.errors.entry(format!("{kind}: HTTP {status}")).or_default() += 1;
                }
            }
            Err(e) => *self.seen.errors.entry(format!("{kind}: {e}")).or_default() += 1,
        }
        self.seen.took.entry(kind).or_default().push(started.elapsed().as_secs_f64());
    }
}

fn boot(i: usize, a: &Args) -> Seen {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    seed[8] = 0x10;
    let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent();
    let mut n = Node {
        agent,
        key: flint_manifest::ed25519::SigningKey::from_bytes(&seed),
        mac,
        seq: BTreeMap::new(),
        seen: Seen::default(),
    };
    let s = a.server.as_str();
    n.request("script", s, "GET", "/boot.ipxe", None);
    let mac_path = format!("/ipxe/{}", n.mac.replace(':', "-"));
    n.request("script", s, "GET", &mac_path, None);
    n.request("kernel", s, "GET", &format!("/{}", a.kernel), None);
    n.request("initrd", s, "GET", &format!("/{}", a.initrd), None);
    n.request("manifest", s, "GET", "/manifest.json", None);
    n.request("manifest", s, "GET", "/manifest.json.sig", None);
    n.request("flist", s, "GET", &format!("/{}", a.flist), None);
    // Each node reads its working set from its own place in the list: they overlap, as nodes of
    // one image do.
    for k in 0..a.working_set.min(a.chunks.len()) {
        let chunk = a.chunks[(i * 7 + k) % a.chunks.len()].clone();
        n.request("chunk", s, "GET", &format!("/{chunk}"), None);
    }
    for (stage, detail) in [
        ("network", "eth0 up"),
        ("applied", "manifest version 1: 1 flists mounted, 1 services"),
        ("healthy", "manifest version 1 is healthy"),
    ] {
        let body = serde_json::json!({ "mac": n.mac, "stage": stage, "detail": detail }).to_string().into_bytes();
        n.request("report", s, "POST", "/report", Some(body));
    }
    let records = (0..20).map(|k| Record { n: k, t: 0, s: "web".into(), l: format!("line {k} of node {i}") }).collect();
    let batch = serde_json::to_vec(&Batch { boot: 1, records, metrics: Some("flint_up 1\n".into()) }).unwrap();
    n.request("logs", s, "POST", "/logs", Some(batch));
    n.seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn main() {
    let a = Arc::new(args());
    let all = Arc::new(Mutex::new(Seen::default()));
    let barrier = Arc::new(Barrier::new(a.nodes + 1));
    let threads: Vec<_> = (0..a.nodes)
        .map(|i| {
            let (a, all, barrier) = (a.clone(), all.clone(), barrier.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    barrier.wait();
                    let seen = boot(i, &a);
                    let mut all = all.lock().unwrap();
                    for (k, v) in seen.took {
                        all.took.entry(k).or_default().extend(v);
                    }
                    for (k, v) in seen.errors {
                        *all.errors.entry(k).or_default() += v;
                    }
                    all.bytes += seen.bytes;
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    let wall = started.elapsed().as_secs_f64();
    let all = all.lock().unwrap();
    let requests: usize = all.took.values().map(Vec::len).sum();
    let mut kinds = serde_json::Map::new();
    for (kind, took) in &all.took {
        let mut sorted = took.clone();
        sorted.sort_by(f64::total_cmp);
        kinds.insert(
            kind.to_string(),
            serde_json::json!({ "requests": sorted.len(), "p50_ms": percentile(&sorted, 0.5) * 1e3, "p99_ms": percentile(&sorted, 0.99) * 1e3 }),
        );
    }
    let summary = serde_json::json!({
        "nodes": a.nodes,
        "wall_s": wall,
        "requests": requests,
        "requests_per_s": requests as f64 / wall,
        "bytes": all.bytes,
        "errors": all.errors,
        "kinds": kinds,
    });
    println!("{summary:#}");
}
