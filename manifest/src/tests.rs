#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn manifest(version: u64) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "version": version,
        "hostname": "node-1",
        "cache": {"format": true},
        "flists": [{"name": "system", "url": "http://10.0.2.2/system.fl", "digest": "ab".repeat(32),
                    "mountpoint": "/mnt/system", "writable": true}],
        "services": [
            {"name": "net", "exec": ["/bin/true"], "oneshot": true},
            {"name": "web", "exec": ["/usr/sbin/nginx", "-g", "daemon off;"], "after": ["net"], "root": "system",
             "test": ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/80"], "stop_signal": "QUIT", "stop_timeout": 2.5}
        ]
    }))
    .unwrap()
}

#[test]
fn a_signed_manifest_becomes_a_plan() {
    let k = key(1);
    let bytes = manifest(3);
    let sig = sign(&bytes, &k);
    let plan = verify(&bytes, Some(sig.as_bytes()), &k.verifying_key()).unwrap();
    assert_eq!(plan.version, 3);
    assert_eq!(plan.format_cache.as_deref(), Some("ext4"));
    assert_eq!(plan.flists[0].digest, Hash([0xab; 32]));
    let web = &plan.services[1];
    assert_eq!(web.exec[2], OsString::from("daemon off;"));
    assert_eq!(web.stop_signal, Signal::SIGQUIT);
    assert_eq!(web.stop_timeout, Duration::from_millis(2500));
    assert_eq!(web.log, LogTarget::Ring);
    // Raw 64-byte signatures are accepted too.
    let raw = hex::decode(&sig).unwrap();
    assert!(verify(&bytes, Some(&raw), &k.verifying_key()).is_ok());
}

#[test]
fn unsigned_tampered_or_foreign_manifests_are_refused() {
    let k = key(1);
    let bytes = manifest(3);
    let sig = sign(&bytes, &k);
    let vk = k.verifying_key();
    assert!(matches!(verify(&bytes, None, &vk), Err(ManifestError::Unsigned)));
    assert!(matches!(verify(&bytes, Some(b"abc"), &vk), Err(ManifestError::MalformedSignature)));
    // Every single flipped bit of the manifest is caught.
    for i in (0..bytes.len()).step_by(7) {
        let mut t = bytes.clone();
        t[i] ^= 1 << (i % 8);
        assert!(matches!(verify(&t, Some(sig.as_bytes()), &vk), Err(ManifestError::BadSignature)), "byte {i}");
    }
    // Signed by another key.
    let other = sign(&bytes, &key(2));
    assert!(matches!(verify(&bytes, Some(other.as_bytes()), &vk), Err(ManifestError::BadSignature)));
    assert!(matches!(parse_key("12"), Err(ManifestError::MalformedKey)));
    assert_eq!(parse_key(&hex::encode(vk.to_bytes())).unwrap(), vk);
}

#[test]
fn rollback_is_refused_and_the_same_manifest_is_accepted_again() {
    let k = key(1);
    let plan = |v: u64| {
        let b = manifest(v);
        verify(&b, Some(sign(&b, &k).as_bytes()), &k.verifying_key()).unwrap()
    };
    let (p3, p4) = (plan(3), plan(4));
    assert!(p4.newer_than(Some((p3.version, p3.digest))).is_ok());
    assert!(p3.newer_than(Some((p3.version, p3.digest))).is_ok());
    assert!(matches!(p3.newer_than(Some((4, p4.digest))), Err(ManifestError::Rollback { got: 3, applied: 4 })));
    assert!(p3.newer_than(None).is_ok());
    // Same version, different content: refused too.
    let mut other = manifest(4);
    other.extend_from_slice(b"\n");
    let p4b = verify(&other, Some(sign(&other, &k).as_bytes()), &k.verifying_key()).unwrap();
    assert!(p4b.newer_than(Some((4, p4.digest))).is_err());
}

#[test]
fn inconsistent_manifests_are_refused_with_a_reason() {
    let k = key(1);
    let check = |v: serde_json::Value, want: &str| {
        let b = serde_json::to_vec(&v).unwrap();
        let err = verify(&b, Some(sign(&b, &k).as_bytes()), &k.verifying_key()).unwrap_err();
        let msg = format!("{err}");
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    };
    let svc = |extra: serde_json::Value| {
        let mut s = serde_json::json!({"name": "a", "exec": ["/bin/true"]});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::json!({"version": 1, "services": [s]})
    };
    check(svc(serde_json::json!({"after": ["nope"]})), "unknown dependency");
    check(svc(serde_json::json!({"exec": []})), "exec");
    check(svc(serde_json::json!({"stop_signal": "SIGFOO"})), "unknown signal");
    check(svc(serde_json::json!({"root": "missing"})), "unknown root");
    check(svc(serde_json::json!({"log": "syslog"})), "log");
    check(svc(serde_json::json!({"name": "../x"})), "invalid");
    check(svc(serde_json::json!({"test_port": 0})), "service a: test_port 0 is no port");
    check(svc(serde_json::json!({"test_port": 65536})), "parsing the manifest");
    check(svc(serde_json::json!({"test_port": -1})), "parsing the manifest");
    check(
        svc(serde_json::json!({"test_port": 80, "test": ["/bin/true"]})),
        "test and test_port are two readiness checks",
    );
    check(svc(serde_json::json!({"test": []})), "service a: test must be a non-empty argv");
    check(svc(serde_json::json!({"test": ["/bin/\u{0}"]})), "service a: test must be a non-empty argv without NULs");
    for bad in [-1.0, -0.0001, 86_400.5, 1e19, 1e308, f64::MAX] {
        let want = "out of range (0 to 86400 s)";
        check(svc(serde_json::json!({"stop_timeout": bad})), &format!("service a: stop_timeout: {bad} s is {want}"));
        check(svc(serde_json::json!({"test_timeout": bad})), &format!("service a: test_timeout: {bad} s is {want}"));
        let vm = serde_json::json!({"version": 1, "flists": [
            {"name": "r", "url": "u", "digest": "ab".repeat(32), "mountpoint": "/m"}],
            "vms": [{"name": "v", "kernel": "/k", "root": "r", "stop_timeout": bad}]});
        check(vm, &format!("vm v: stop_timeout: {bad} s is {want}"));
    }
    // A number beyond f64 (JSON has no inf or NaN) is refused by the parser.
    let huge = br#"{"version": 1, "services": [{"name": "a", "exec": ["x"], "stop_timeout": 1e400}]}"#;
    let err = verify(huge, Some(sign(huge, &k).as_bytes()), &k.verifying_key()).unwrap_err();
    assert!(matches!(err, ManifestError::Parse(_)), "{err}");
    let many: Vec<_> = (0..1025).map(|i| serde_json::json!({"name": format!("s{i}"), "exec": ["x"]})).collect();
    check(serde_json::json!({"version": 1, "services": many}), "1025 services and VMs: at most 1024");
    let many: Vec<_> = (0..257)
        .map(
            |i| serde_json::json!({"name": format!("f{i}"), "url": "u", "digest": "ab".repeat(32), "mountpoint": "/m"}),
        )
        .collect();
    check(serde_json::json!({"version": 1, "flists": many}), "257 flists: at most 256");
    check(serde_json::json!({"version": 1, "cache": {"format": true, "fs": "vfat"}}), "not ext4");
    check(
        serde_json::json!({"version": 1, "services": [
            {"name": "a", "exec": ["x"], "after": ["b"]}, {"name": "b", "exec": ["x"], "after": ["a"]}]}),
        "cycle",
    );
    check(
        serde_json::json!({"version": 1, "flists": [{"name": "s", "url": "u", "digest": "zz", "mountpoint": "/m"}]}),
        "digest",
    );
    check(serde_json::json!({"version": 1, "surprise": true}), "parsing");
}

#[test]
fn an_image_service_takes_what_it_leaves_out_from_the_image() {
    let k = key(1);
    let bytes = serde_json::to_vec(&serde_json::json!({
        "version": 1,
        "flists": [{"name": "nginx", "url": "n.fl", "digest": "ab".repeat(32), "mountpoint": "/mnt/n"}],
        "services": [{"name": "web", "image": "nginx", "env": {"A": "service"}},
                     {"name": "own", "image": "nginx", "exec": ["/bin/true"], "user": "www", "dir": "/srv"}]
    }))
    .unwrap();
    let plan = verify(&bytes, Some(sign(&bytes, &k).as_bytes()), &k.verifying_key()).unwrap();
    let tags: BTreeMap<String, String> = [
        ("oci.entrypoint", r#"["/docker-entrypoint.sh"]"#),
        ("oci.cmd", r#"["nginx", "-g", "daemon off;"]"#),
        ("oci.env", r#"["A=image", "B=image"]"#),
        ("oci.workdir", "/app"),
        ("oci.user", "101:102"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let web = plan.services[0].with_image_config(&tags).unwrap();
    assert_eq!(web.root.as_deref(), Some("nginx"));
    assert_eq!(web.exec, ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]);
    assert_eq!(web.env, [("B".into(), "image".into()), ("A".into(), "service".into())]);
    assert_eq!(web.dir, Some(PathBuf::from("/app")));
    assert_eq!((web.user.as_deref(), web.group.as_deref()), (Some("101"), Some("102")));
    let own = plan.services[1].with_image_config(&tags).unwrap();
    assert_eq!(own.exec, ["/bin/true"]);
    assert_eq!(
        (own.user.as_deref(), own.group.as_deref(), own.dir.clone()),
        (Some("www"), None, Some(PathBuf::from("/srv")))
    );
    assert!(plan.services[0].with_image_config(&BTreeMap::new()).unwrap_err().contains("no entrypoint or cmd"));

    let both = serde_json::to_vec(&serde_json::json!({"version": 1,
        "flists": [{"name": "nginx", "url": "n.fl", "digest": "ab".repeat(32), "mountpoint": "/mnt/n"}],
        "services": [{"name": "web", "image": "nginx", "root": "nginx"}]}))
    .unwrap();
    assert!(verify(&both, Some(sign(&both, &k).as_bytes()), &k.verifying_key()).is_err());
    let neither = serde_json::to_vec(&serde_json::json!({"version": 1, "services": [{"name": "web"}]})).unwrap();
    assert!(verify(&neither, Some(sign(&neither, &k).as_bytes()), &k.verifying_key()).is_err());
}

fn signed_plan(manifest: serde_json::Value) -> Result<Plan, ManifestError> {
    let k = key(1);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    verify(&bytes, Some(sign(&bytes, &k).as_bytes()), &k.verifying_key())
}

#[test]
fn health_defaults_to_the_checked_services_else_to_all_and_is_bounded() {
    let checked = signed_plan(serde_json::from_slice(&manifest(1)).unwrap()).unwrap();
    assert_eq!(checked.health.require, ["web"]);
    assert_eq!(checked.health.window, Duration::from_secs(120));
    assert_eq!(checked.health.restarts, 3);
    assert_eq!(checked.health.settle, Duration::from_secs(10));
    let services = serde_json::json!([{"name": "a", "exec": ["/a"]}, {"name": "b", "exec": ["/b"], "oneshot": true}]);
    let unchecked = signed_plan(serde_json::json!({"version": 1, "services": services})).unwrap();
    assert_eq!(unchecked.health.require, ["a", "b"]);
    let named = signed_plan(serde_json::json!({"version": 1, "services": services,
        "health": {"require": ["b"], "timeout": 5.5, "restarts": 1}}))
    .unwrap();
    assert_eq!(
        named.health,
        health::HealthPlan {
            require: vec!["b".into()],
            window: Duration::from_millis(5500),
            restarts: 1,
            settle: Duration::from_millis(2750)
        }
    );
    let settled = signed_plan(serde_json::json!({"version": 1, "services": services,
        "health": {"timeout": 5, "settle": 0}}))
    .unwrap();
    assert_eq!(settled.health.settle, Duration::ZERO);
    for (bad, says) in [
        (serde_json::json!({"require": ["nope"]}), "unknown service"),
        (serde_json::json!({"require": ["a", "a"]}), "named twice"),
        (serde_json::json!({"timeout": 0.5}), "at least"),
        (serde_json::json!({"timeout": -1}), "out of range"),
        (serde_json::json!({"timeout": 1e19}), "out of range"),
        (serde_json::json!({"restarts": 0}), "restarts 0"),
        (serde_json::json!({"restarts": 1001}), "restarts 1001"),
        (serde_json::json!({"timeout": 5, "settle": 6}), "longer than the window"),
        (serde_json::json!({"settle": -1}), "settle: -1"),
    ] {
        let e = signed_plan(serde_json::json!({"version": 1, "services": services, "health": bad})).unwrap_err();
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    for bad in [serde_json::json!({"restarts": -1}), serde_json::json!({"restarts": 1e10}), serde_json::json!({"x": 1})]
    {
        assert!(matches!(
            signed_plan(serde_json::json!({"version": 1, "services": services, "health": bad})),
            Err(ManifestError::Parse(_))
        ));
    }
}

#[test]
fn expiry_is_read_as_rfc3339_or_seconds_and_bounded() {
    let at = |e: serde_json::Value| signed_plan(serde_json::json!({"version": 1, "expires": e})).map(|p| p.expires);
    assert_eq!(at(serde_json::json!("2026-12-10T12:00:00Z")).unwrap(), Some(1_796_904_000));
    assert_eq!(at(serde_json::json!("2026-12-10T13:00:00+01:00")).unwrap(), Some(1_796_904_000));
    assert_eq!(at(serde_json::json!(1_796_904_000u64)).unwrap(), Some(1_796_904_000));
    assert_eq!(signed_plan(serde_json::json!({"version": 1})).unwrap().expires, None);
    for bad in ["", "tomorrow", "2026-13-01T00:00:00Z", "1960-01-01T00:00:00Z", "2026-12-10"] {
        assert!(at(serde_json::json!(bad)).is_err(), "{bad}");
    }
    assert!(at(serde_json::json!(u64::MAX)).unwrap_err().to_string().contains("9999"));
    assert!(at(serde_json::json!(-5)).is_err());
    assert!(at(serde_json::json!(1.5)).is_err());
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_796_904_000);
    assert!(health::expired(Some(1_796_904_000), now));
    assert!(!health::expired(Some(1_796_904_001), now));
    assert!(!health::expired(None, now));
    assert_eq!(flist::utc::rfc3339(1_796_904_000), "2026-12-10T12:00:00Z");
}

#[test]
fn spans_name_their_unit_and_stay_bounded() {
    assert_eq!(health::parse_span("7d").unwrap(), 7 * 86_400);
    assert_eq!(health::parse_span("90m").unwrap(), 5400);
    assert_eq!(health::parse_span("3600").unwrap(), 3600);
    assert_eq!(health::parse_span("2w").unwrap(), 1_209_600);
    for bad in ["", "d", "7y", "-1d", "1.5h", "99999999999999999999d", "1000000000000w"] {
        assert!(health::parse_span(bad).is_err(), "{bad}");
    }
}
