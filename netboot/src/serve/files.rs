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

/// A response of at most this many bytes (any chunk of the default chunking) is read in one
/// read and sent as one piece: streaming it in `STREAM_BUFFER` pieces took a blocking-pool
/// round trip per piece, most of the server's CPU in a cold mount's read.
const WHOLE_READ: u64 = 1 << 20;

/// Bytes that whole reads may hold at once, all responses together; past it, responses stream.
const WHOLE_READS_AT_ONCE: u32 = 64 << 20;

static WHOLE_READ_BYTES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(WHOLE_READS_AT_ONCE as usize);

/// Whether `url_path` names a file under a root at all: not empty, no `..`, no hidden component.
pub fn is_clean(url_path: &str) -> bool {
    let relative = Path::new(url_path.trim_start_matches('/'));
    !relative.as_os_str().is_empty()
        && relative.components().all(|c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with('.')))
}

/// `path` (from a URL) under `root`, if it names nothing outside it: no `..`, no hidden
/// component (temporary files of writers), and no symlink leading out.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    if !is_clean(url_path) {
        return None;
    }
    let relative = Path::new(url_path.trim_start_matches('/'));
    let real = std::fs::canonicalize(root.join(relative)).ok()?;
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

/// What a request for a file gets, decided once its metadata is known.
enum Answer {
    NotModified,
    /// Unsatisfiable range.
    NoRange,
    /// `count` bytes from `start`; `partial` with a `Content-Range` header.
    Bytes {
        start: u64,
        count: u64,
        partial: bool,
    },
}

/// A file opened for a response, and its bytes when they were read at once.
struct Opened {
    file: std::fs::File,
    len: u64,
    tag: String,
    answer: Answer,
    /// The whole response body, read with the file opened, and what it holds of the budget.
    whole: Option<(Vec<u8>, tokio::sync::SemaphorePermit<'static>)>,
}

/// Opens `path`, decides the answer and, when the body is small, reads it: all in one trip to
/// the blocking pool (each trip is a thread hand-off; a chunk took four).
fn open(path: &Path, headers: &HeaderMap, head: bool) -> Option<Opened> {
    use std::io::{Read, Seek};
    let file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok().filter(std::fs::Metadata::is_file)?;
    let (len, tag) = (meta.len(), etag(&meta));
    let answer = match wanted_range(headers, &tag, len) {
        _ if header_is(headers, header::IF_NONE_MATCH, &tag) => Answer::NotModified,
        Ok(None) => Answer::Bytes { start: 0, count: len, partial: false },
        Ok(Some((first, last))) => Answer::Bytes { start: first, count: last - first + 1, partial: true },
        Err(()) => Answer::NoRange,
    };
    let mut whole = None;
    if let (Answer::Bytes { start, count, .. }, false) = (&answer, head) {
        // `count` fits in u32 below WHOLE_READ.
        let permit = (*count <= WHOLE_READ).then(|| WHOLE_READ_BYTES.try_acquire_many(*count as u32).ok()).flatten();
        if let Some(permit) = permit {
            // Read into spare capacity (a file reads into it directly), not a zeroed buffer:
            // zeroing it first was a pass over every byte served.
            let mut bytes = Vec::with_capacity(*count as usize);
            let read = (&file)
                .seek(std::io::SeekFrom::Start(*start))
                .and_then(|_| (&file).take(*count).read_to_end(&mut bytes));
            if read.is_ok_and(|n| n as u64 == *count) {
                whole = Some((bytes, permit));
            }
        }
    }
    Some(Opened { file, len, tag, answer, whole })
}

/// Answers a GET (or HEAD) for `url_path` under `root`, resolving and opening it in one trip to
/// the blocking pool (a chunk took two: each a hand-off to another thread and back); `None`
/// when it names nothing under the root.
pub async fn serve_under(root: &Path, url_path: &str, headers: &HeaderMap, head: bool) -> Option<Response<Body>> {
    let (root, url_path, owned_headers) = (root.to_owned(), url_path.to_owned(), headers.clone());
    let found = tokio::task::spawn_blocking(move || {
        let path = resolve(&root, &url_path)?;
        let opened = open(&path, &owned_headers, head);
        Some((path, opened))
    });
    let (path, opened) = found.await.ok().flatten()?;
    Some(respond(&path, opened, head).await)
}

/// The response for `path`, opened (or not) by [`open`].
async fn respond(path: &Path, opened: Option<Opened>, head: bool) -> Response<Body> {
    let Some(Opened { file, len, tag, answer, whole }) = opened else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let mut response = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type(path));
    let (start, count) = match answer {
        Answer::NotModified => {
            return response.status(StatusCode::NOT_MODIFIED).body(empty()).unwrap_or_else(|_| empty_response());
        }
        Answer::NoRange => {
            return response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(empty())
                .unwrap_or_else(|_| empty_response());
        }
        Answer::Bytes { start, count, partial: true } => {
            let last = start + count - 1;
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{last}/{len}"));
            (start, count)
        }
        Answer::Bytes { start, count, partial: false } => {
            response = response.status(StatusCode::OK);
            (start, count)
        }
    };
    response = response.header(header::CONTENT_LENGTH, HeaderValue::from(count));
    if head {
        return response.body(empty()).unwrap_or_else(|_| empty_response());
    }
    if let Some((bytes, permit)) = whole {
        // One piece; the budget is given back once it has been handed to the connection.
        let frame = futures_util::stream::once(async move {
            let _held = permit;
            Ok(Frame::data(hyper::body::Bytes::from(bytes)))
        });
        return response
            .body(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frame)))
            .unwrap_or_else(|_| empty_response());
    }
    let mut file = tokio::fs::File::from_std(file);
    // Always: a whole read that came short has moved the position.
    if file.seek(SeekFrom::Start(start)).await.is_err() {
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
            if let Some(found) = super::resolve(&root, &path) {
                let inside = found.strip_prefix(&root);
                prop_assert!(inside.is_ok(), "{path} -> {}", found.display());
                let hidden = inside.iter().flat_map(|p| p.iter()).any(|c| c.to_string_lossy().starts_with('.'));
                prop_assert!(!hidden, "{path} -> {}", found.display());
            }
        }
    }
}
