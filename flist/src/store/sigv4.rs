//! AWS Signature Version 4 presigned URLs, for the S3 store. Written on ring's SHA-256 and HMAC
//! (linked for TLS anyway) rather than taken from rusty-s3, whose signer carried a date crate,
//! sha2 and hmac into PID 1 (about 110 KB); the algorithm is small and its test vectors public.
//! Only the `host` header is signed and the payload is not (`UNSIGNED-PAYLOAD`), as for any
//! presigned URL.

use std::fmt::Write;

use ring::{digest, hmac};

use crate::utc::DateTime;

/// An access key, its secret and, for temporary credentials, a session token.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) key: String,
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
}

impl Credentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, with `AWS_SESSION_TOKEN` if set.
    pub(crate) fn from_env() -> Option<Credentials> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Some(Credentials {
            key: var("AWS_ACCESS_KEY_ID")?,
            secret: var("AWS_SECRET_ACCESS_KEY")?,
            token: var("AWS_SESSION_TOKEN"),
        })
    }
}

/// Where requests go: `http` or `https`, and the `host` header (`HOST[:PORT]`, the port only
/// when it is not the scheme's own, as HTTP clients send it).
pub(crate) struct Endpoint {
    pub(crate) scheme: &'static str,
    pub(crate) host: String,
    pub(crate) region: String,
}

/// One request to presign.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    /// Not yet percent-encoded: `/BUCKET/KEY`.
    pub(crate) path: &'a str,
    /// The action's own parameters (`list-type`, `prefix`...), not yet encoded.
    pub(crate) query: &'a [(&'a str, &'a str)],
}

impl Endpoint {
    /// The URL that performs `request`: signed by `credentials` at `now` (seconds since the
    /// epoch) for `expires` seconds, or unsigned (a public bucket) without credentials.
    pub(crate) fn presign(
        &self,
        request: &Request,
        credentials: Option<&Credentials>,
        now: u64,
        expires: u64,
    ) -> String {
        let path = encode(request.path, true);
        let mut url = format!("{}://{}{path}", self.scheme, self.host);
        let Some(credentials) = credentials else {
            if !request.query.is_empty() {
                url.push('?');
                url.push_str(&query_string(request.query.iter().copied()));
            }
            return url;
        };
        let time = DateTime::at_most_max(now);
        let (date, date_time) = (time.basic_date(), time.basic_date_time());
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let mut query: Vec<(&str, String)> = vec![
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256".into()),
            ("X-Amz-Credential", format!("{}/{scope}", credentials.key)),
            ("X-Amz-Date", date_time.clone()),
            ("X-Amz-Expires", expires.to_string()),
            ("X-Amz-SignedHeaders", "host".into()),
        ];
        if let Some(token) = credentials.token.as_deref().filter(|t| !t.is_empty()) {
            query.push(("X-Amz-Security-Token", token.into()));
        }
        query.extend(request.query.iter().map(|&(k, v)| (k, v.to_owned())));
        // The canonical query is sorted by name, then value, after encoding (the specification's
        // order; the names here are all unreserved characters, so encoding does not change it).
        query.sort();
        let query = query_string(query.iter().map(|(k, v)| (*k, v.as_str())));
        let canonical_request =
            format!("{}\n{path}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD", request.method, self.host);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
            hex::encode(digest::digest(&digest::SHA256, canonical_request.as_bytes()))
        );
        let mut key = format!("AWS4{}", credentials.secret).into_bytes();
        for part in [date.as_str(), &self.region, "s3", "aws4_request", &string_to_sign] {
            key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes()).as_ref().to_vec();
        }
        let _ = write!(url, "?{query}&X-Amz-Signature={}", hex::encode(key));
        url
    }
}

/// `name=value&...`, each percent-encoded.
fn query_string<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let encoded: Vec<String> = pairs.map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false))).collect();
    encoded.join("&")
}

/// SigV4's URI encoding: every byte but the unreserved characters as `%XX` (upper-case hex),
/// and `/` kept in paths.
fn encode(text: &str, path: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || (path && byte == b'/') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::utc::MAX_SECS;
    use proptest::prelude::*;

    const MAY_24_2013: u64 = 1_369_353_600;

    fn aws_example() -> (Endpoint, Credentials) {
        let endpoint =
            Endpoint { scheme: "https", host: "examplebucket.s3.amazonaws.com".into(), region: "us-east-1".into() };
        let credentials = Credentials {
            key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        };
        (endpoint, credentials)
    }

    /// The presigned URL of AWS's documentation ("Authenticating Requests: Using Query
    /// Parameters"), and the same with a session token and with a parameter of the request's own.
    #[test]
    fn the_documented_example_signs_to_the_documented_url() {
        let (endpoint, mut credentials) = aws_example();
        let get = Request { method: "GET", path: "/test.txt", query: &[] };
        let url = endpoint.presign(&get, Some(&credentials), MAY_24_2013, 86_400);
        assert_eq!(
            url,
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
        let typed = Request { method: "GET", path: "/test.txt", query: &[("response-content-type", "text/plain")] };
        assert!(endpoint.presign(&typed, Some(&credentials), MAY_24_2013, 86_400).ends_with(
            "&response-content-type=text%2Fplain&X-Amz-Signature=9cee3ba363b3a52fed152d18bb250d52a459d0905600d9b032825a3794ffd2cb"
        ));
        credentials.token = Some("oej5cie4uctureturdtuc5dctd".into());
        assert_eq!(
            endpoint.presign(&get, Some(&credentials), MAY_24_2013, 86_400),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-Security-Token=oej5cie4uctureturdtuc5dctd&X-Amz-SignedHeaders=host&X-Amz-Signature=bf77b83a7135594046c90a7e7e10cf1a4c8f8ecc1d541d0f42bea6b7670870c7"
        );
        let public = endpoint.presign(&typed, None, MAY_24_2013, 86_400);
        assert_eq!(public, "https://examplebucket.s3.amazonaws.com/test.txt?response-content-type=text%2Fplain");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any key (any characters, slashes included, but no `.`/`..` segments, which URL
        /// parsers fold away before sending), credentials, region, time and port sign to the URL
        /// rusty-s3 signs.
        #[test]
        fn any_object_signs_as_rusty_s3_signs_it(
            key in "[^/]{1,12}(/[^/]{1,12}){0,3}",
            access in "[A-Z0-9]{1,24}",
            secret in "\\PC{1,40}",
            token in proptest::option::of("[A-Za-z0-9+/=]{1,40}"),
            region in "[a-z0-9-]{1,16}",
            bucket in "[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]",
            now in 0..=MAX_SECS,
            expires in 1u64..=604_800,
            port in proptest::option::of(1u16..),
            method in 0..4usize,
        ) {
            prop_assume!(key.split('/').all(|s| s != "." && s != ".."));
            prop_assume!(port != Some(80));
            let host = match port { Some(p) => format!("127.0.0.1:{p}"), None => "127.0.0.1".into() };
            let endpoint = Endpoint { scheme: "http", host: host.clone(), region: region.clone() };
            let credentials = Credentials { key: access.clone(), secret: secret.clone(), token: token.clone() };
            let path = format!("/{bucket}/{key}");
            let (name, ours) = ["GET", "HEAD", "PUT", "DELETE"][method..=method].iter().map(|m| {
                (*m, endpoint.presign(&Request { method: m, path: &path, query: &[] }, Some(&credentials), now, expires))
            }).next().unwrap();

            let theirs_bucket = rusty_s3::Bucket::new(
                format!("http://{host}").parse().unwrap(), rusty_s3::UrlStyle::Path, bucket, region).unwrap();
            let theirs_credentials = match token {
                Some(t) => rusty_s3::Credentials::new_with_token(access, secret, t),
                None => rusty_s3::Credentials::new(access, secret),
            };
            let at = jiff::Timestamp::from_second(now as i64).unwrap();
            let lifetime = std::time::Duration::from_secs(expires);
            use rusty_s3::S3Action;
            let c = Some(&theirs_credentials);
            let theirs = match name {
                "GET" => theirs_bucket.get_object(c, &key).sign_with_time(lifetime, &at),
                "HEAD" => theirs_bucket.head_object(c, &key).sign_with_time(lifetime, &at),
                "PUT" => theirs_bucket.put_object(c, &key).sign_with_time(lifetime, &at),
                _ => theirs_bucket.delete_object(c, &key).sign_with_time(lifetime, &at),
            };
            prop_assert_eq!(ours, theirs.to_string());
        }
    }
}
