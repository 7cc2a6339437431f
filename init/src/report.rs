//! Boot stages told to the boot server (`flint.report=URL`, a `netboot serve` endpoint), so the
//! operator's status page shows how far each node got and why it stopped.
//!
//! Best effort by design: one thread posts the reports in order with a short timeout, nothing
//! waits for it, and a full queue or a server that does not answer loses reports, never time.

use std::sync::OnceLock;
use std::time::Duration;

use crate::fetch::Fetcher;

/// Reports waiting to be sent; beyond this a stage is dropped.
const QUEUED: usize = 256;

/// Longest reports wait for the node's identity before going out unsigned.
const IDENTITY_WAIT: Duration = Duration::from_secs(60);

static QUEUE: OnceLock<crossbeam_channel::Sender<(String, String)>> = OnceLock::new();

/// Starts sending reports to `url` as this node's `mac` (`aa:bb:…`). Once per process.
pub fn start(url: String, mac: String, fetcher: Fetcher) {
    let (tx, rx) = crossbeam_channel::bounded::<(String, String)>(QUEUED);
    if QUEUE.set(tx).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new().name("report".into()).spawn(move || {
        crate::guard::guard("report", || {
            // Signed by the node's key once the cache disk (where it is kept) is known; reports
            // wait for it in the queue rather than go out under a provisional identity.
            crate::identity::wait(IDENTITY_WAIT);
            for (stage, detail) in rx.iter() {
                let body = serde_json::json!({ "mac": mac, "stage": stage, "detail": detail }).to_string();
                if let Err(e) = fetcher.post_json(&url, &body, Duration::from_secs(3), "report") {
                    tracing::debug!("report to {url}: {}", crate::error_chain(&e));
                }
            }
        })
    });
    if let Err(e) = spawned {
        tracing::warn!("report thread: {e}; the boot server will not hear from this node");
    }
}

/// Tells the boot server that `stage` was reached; a no-op without `flint.report=`.
pub fn stage(stage: &str, detail: impl Into<String>) {
    if let Some(queue) = QUEUE.get() {
        let _ = queue.try_send((stage.to_string(), detail.into()));
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
