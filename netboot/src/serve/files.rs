//! Files under the served root over HTTP: one byte range per request (what iPXE, flist stores
//! and curl ask for), strong ETags with `If-None-Match` and `If-Range`, streamed bodies.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use futures_util::StreamExt;
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{empty, text, Body};

/// Bytes read from a file at a time for one response: what each response being sent holds in
/// memory (500 nodes fetching a kernel at once hold 500 of these).
const STREAM_BUFFER: usize = 64 << 10;

/// Whether `url_path` names a file under a root at all: not empty, no `..`, no hidden component.
pub fn is_clean(url_path: &str) -> bool {
    let relative = Path::new(url_path.trim_start_matches('/'));
    !relative.as_os_str().is_empty()
        && relative.components().all(|c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with('.')))
}

/// `path` (from a URL) under `root`, if it names nothing outside it: no `..`, no hidden
/// component (temporary files of writers), and no symlink leading out.
pub async fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    if !is_clean(url_path) {
        return None;
    }
    let relative = Path::new(url_path.trim_start_matches('/'));
    let real = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
    real.starts_with(root).then_some(real)
}

/// The strong validator of a file: its size and modification time. Content-addressed chunks
/// never change under one name, and a rewritten kernel gets a new time.
fn etag(meta: &std::fs::Metadata) -> String {
    format!("\"{:x}-{:x}.{:x}\"", meta.len(), meta.mtime(), meta.mtime_nsec())
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("ipxe" | "sig" | "pub" | "txt") => "text/plain; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, etag: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').map(str::trim).any(|t| t == etag || t == "*"))
}

/// The single range to send, `Ok(None)` for the whole file, `Err(())` if unsatisfiable.
fn wanted_range(headers: &HeaderMap, etag: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    // A range is only valid against the version the client already has part of.
    if headers.contains_key(header::IF_RANGE) && !header_is(headers, header::IF_RANGE, etag) {
        return Ok(None);
    }
    let ranges = http_range_header::parse_range_header(range).and_then(|r| r.validate(len)).map_err(|_| ())?;
    match ranges.as_slice() {
        [one] => Ok(Some((*one.start(), *one.end()))),
        // Several ranges may be answered with the whole file (RFC 9110, 14.2).
        _ => Ok(None),
    }
}

/// Answers a GET (or HEAD, without the body) for `path`, already resolved under the root.
pub async fn serve(path: &Path, headers: &HeaderMap, head: bool) -> Response<Body> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let (len, tag) = (meta.len(), etag(&meta));
    let mut response = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type(path));
    if header_is(headers, header::IF_NONE_MATCH, &tag) {
        return response.status(StatusCode::NOT_MODIFIED).body(empty()).unwrap_or_else(|_| empty_response());
    }
    let (status, start, count) = match wanted_range(headers, &tag, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((first, last))) => {
            response = response.header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"));
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        Err(()) => {
            return response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(empty())
                .unwrap_or_else(|_| empty_response());
        }
    };
    response = response.status(status).header(header::CONTENT_LENGTH, HeaderValue::from(count));
    if head {
        return response.body(empty()).unwrap_or_else(|_| empty_response());
    }
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "seek failed\n");
    }
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file.take(count), STREAM_BUFFER).map(|r| r.map(Frame::data));
    let body: Body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream));
    response.body(body).unwrap_or_else(|_| empty_response())
}

fn empty_response() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just(String::new()),
            Just("a".to_string()),
            Just("dir".to_string()),
            Just("out".to_string()),
            Just(".hidden".to_string()),
            "[a-z%./]{1,4}",
        ]
    }

    proptest! {
        /// Whatever path a client sends, what is served lies under the root, is not hidden, and
        /// is not reached through the symlink that leads out.
        #[test]
        fn no_path_leaves_the_root(segments in prop::collection::vec(segment(), 0..6)) {
            let dir = tempfile::tempdir().unwrap();
            let root = std::fs::canonicalize(dir.path()).unwrap();
            std::fs::create_dir_all(root.join("dir")).unwrap();
            std::fs::write(root.join("a"), b"a").unwrap();
            std::fs::write(root.join(".hidden"), b"h").unwrap();
            std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
            let path = format!("/{}", segments.join("/"));
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            if let Some(found) = runtime.block_on(super::resolve(&root, &path)) {
                let inside = found.strip_prefix(&root);
                prop_assert!(inside.is_ok(), "{path} -> {}", found.display());
                let hidden = inside.iter().flat_map(|p| p.iter()).any(|c| c.to_string_lossy().starts_with('.'));
                prop_assert!(!hidden, "{path} -> {}", found.display());
            }
        }
    }
}
