//! PAX and GNU extensions read exactly for every byte value: members written by hand, so that
//! names and values no library would produce are covered too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

/// One PAX record, its length prefix counting itself.
fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    [len.to_string().as_bytes(), b" ", key, b"=", value, b"\n"].concat()
}

/// A member of `kind` named `name` (ustar header name, short) holding `data`.
fn member(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn scan_bytes(bytes: &[u8]) -> Result<Tree, TarError> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    scan(file.path())
}

fn node<'t>(tree: &'t Tree, path: &[u8]) -> &'t Node {
    &tree.nodes[tree.lookup(&components(path).unwrap()).unwrap()]
}

#[test]
fn xattr_values_with_every_byte_and_names_with_every_allowed_byte() {
    let every: Vec<u8> = (0..=255u8).collect();
    // A value that holds what looks like a record of its own: it must stay part of the value.
    let forged = b"x\n27 path=etc/owned-by-xattr\n".to_vec();
    let mut pax = record(b"SCHILY.xattr.user.every", &every);
    pax.extend(record(b"SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0x0a, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0]));
    pax.extend(record(b"SCHILY.xattr.user.forged", &forged));
    pax.extend(record(b"SCHILY.xattr.user.empty", b""));
    let names: Vec<Vec<u8>> =
        (1..=255u8).filter(|&b| b != b'=').map(|b| [b"user.n".as_slice(), &[b]].concat()).collect();
    for n in &names {
        pax.extend(record(&[b"SCHILY.xattr.".as_slice(), n].concat(), n));
    }
    pax.extend(record(b"uid", b"4000000000"));
    pax.extend(record(b"gid", b"3000000"));
    pax.extend(record(b"mtime", b"1700000000.123456789"));
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::XHeader, b"PaxHeaders/f", &pax);
    member(&mut b, EntryType::Regular, b"f", b"content");
    let tree = scan_bytes(&b.into_inner().unwrap()).unwrap();
    let f = node(&tree, b"f");
    assert_eq!(f.meta.xattrs[b"user.every".as_slice()], every);
    assert_eq!(f.meta.xattrs[b"user.forged".as_slice()], forged);
    assert_eq!(f.meta.xattrs[b"security.capability".as_slice()][4], 0x0a);
    assert_eq!(f.meta.xattrs[b"user.empty".as_slice()], b"");
    for n in &names {
        assert_eq!(&f.meta.xattrs[n.as_slice()], n, "xattr name {n:?}");
    }
    assert_eq!(f.meta.xattrs.len(), names.len() + 4);
    assert_eq!((f.meta.uid, f.meta.gid), (4_000_000_000, 3_000_000));
    assert_eq!(f.meta.mtime, Timestamp { secs: 1_700_000_000, nanos: 123_456_789 });
    assert!(tree.lookup(&components(b"etc/owned-by-xattr").unwrap()).is_none(), "no record forged from a value");
}

#[test]
fn long_and_non_utf8_paths_and_link_targets_by_pax_and_gnu_members() {
    let long_dir: Vec<u8> = (0..40).flat_map(|i| [b'd', 0x80 + (i % 0x7f) as u8]).collect();
    let name = |tail: &[u8]| [long_dir.as_slice(), b"/", tail].concat();
    let target: Vec<u8> = (0..300).map(|i| 0x80 + (i % 0x7f) as u8).collect();
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::XHeader, b"PaxHeaders/d", &record(b"path", &long_dir));
    member(&mut b, EntryType::Directory, b"short-d", b"");
    let pax_file = name(&[0xff, 0xfe, b'\n', b'p']);
    member(&mut b, EntryType::XHeader, b"PaxHeaders/p", &record(b"path", &pax_file));
    member(&mut b, EntryType::Regular, b"short-p", b"by pax");
    let gnu_file = name(&[0xc3, 0x28, b'g']);
    member(&mut b, EntryType::GNULongName, b"././@LongLink", &[gnu_file.as_slice(), b"\0"].concat());
    member(&mut b, EntryType::Regular, b"short-g", b"by gnu");
    let pax_link = name(b"pax-link");
    let mut pax = record(b"path", &pax_link);
    pax.extend(record(b"linkpath", &target));
    member(&mut b, EntryType::XHeader, b"PaxHeaders/l", &pax);
    member(&mut b, EntryType::Symlink, b"short-l", b"");
    let gnu_link = name(b"gnu-link");
    member(&mut b, EntryType::GNULongName, b"././@LongLink", &[gnu_link.as_slice(), b"\0"].concat());
    member(&mut b, EntryType::GNULongLink, b"././@LongLink", &[target.as_slice(), b"\0"].concat());
    member(&mut b, EntryType::Symlink, b"short-k", b"");
    let tree = scan_bytes(&b.into_inner().unwrap()).unwrap();
    assert!(matches!(node(&tree, &long_dir).content, Content::Dir(_)));
    assert!(matches!(node(&tree, &pax_file).content, Content::File { size: 6, .. }));
    assert!(matches!(node(&tree, &gnu_file).content, Content::File { size: 6, .. }));
    for link in [&pax_link, &gnu_link] {
        match &node(&tree, link).content {
            Content::Symlink(t) => assert_eq!(t, &target),
            other => panic!("{link:?} is {other:?}"),
        }
    }
    for short in [b"short-d".as_slice(), b"short-p", b"short-g", b"short-l", b"short-k"] {
        assert!(tree.lookup(&components(short).unwrap()).is_none(), "the header's own name {short:?} is overridden");
    }
}

#[test]
fn malformed_extensions_are_clear_errors() {
    let cases: [(&[u8], &str); 7] = [
        (b"abc path=x\n", "not a number"),
        (b"99 path=x\n", "longer than its header"),
        (b"8 pathx\n", "without '='"),
        (b"11 path=xy", "longer than its header"),
        (b"10 path=xy", "not ended by a newline"),
        (b"8 path=xy", "not ended by a newline"),
        (b"nospace", "without a length"),
    ];
    for (pax, want) in cases {
        let mut b = tar::Builder::new(Vec::new());
        member(&mut b, EntryType::XHeader, b"PaxHeaders/f", pax);
        member(&mut b, EntryType::Regular, b"f", b"");
        let err = scan_bytes(&b.into_inner().unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(want), "{pax:?}: {err:?} lacks {want:?}");
    }
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::XHeader, b"PaxHeaders/f", &record(b"uid", b"4294967296"));
    member(&mut b, EntryType::Regular, b"f", b"");
    assert!(scan_bytes(&b.into_inner().unwrap()).is_err(), "a uid over 32 bits");
    // A PAX size past the archive's end, and one that is not a number.
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::XHeader, b"PaxHeaders/f", &record(b"size", b"99999"));
    member(&mut b, EntryType::Regular, b"f", b"");
    let err = scan_bytes(&b.into_inner().unwrap()).err().map(|e| format!("{e:?}")).unwrap_or_default();
    assert!(err.contains("ends inside"), "{err}");
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::XHeader, b"PaxHeaders/f", &record(b"size", b"7x"));
    member(&mut b, EntryType::Regular, b"f", b"");
    assert!(scan_bytes(&b.into_inner().unwrap()).is_err(), "a PAX size that is not a number");
    // Cut inside a header, and a header whose checksum is wrong.
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::Regular, b"f", b"x");
    let whole = b.into_inner().unwrap();
    let err = scan_bytes(&whole[..300]).err().map(|e| format!("{e:?}")).unwrap_or_default();
    assert!(err.contains("ends inside a header"), "{err}");
    let err = scan_bytes(&whole[..512]).err().map(|e| format!("{e:?}")).unwrap_or_default();
    assert!(err.contains("ends inside a member's data"), "{err}");
    let mut bad = whole.clone();
    bad[10] ^= 1;
    let err = scan_bytes(&bad).err().map(|e| format!("{e:?}")).unwrap_or_default();
    assert!(err.contains("checksum"), "{err}");
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::GNULongName, b"././@LongLink", b"dangling\0");
    assert!(scan_bytes(&b.into_inner().unwrap()).is_err(), "a long name with no entry after it");
}

/// Go's writer (umoci's) leaves the header's size field 0 for a file over 8 GiB and puts the size
/// in a PAX record: the data that follows is that long, and the next member comes after it.
#[test]
fn a_pax_size_is_the_size_of_the_data() {
    let data = noise_bytes(5000);
    let mut b = tar::Builder::new(Vec::new());
    member(&mut b, EntryType::XHeader, b"PaxHeaders/big", &record(b"size", data.len().to_string().as_bytes()));
    member(&mut b, EntryType::Regular, b"big", b"");
    let archive = b.get_mut();
    // The header of `big` says 0 bytes: its data goes right after it.
    archive.extend_from_slice(&data);
    archive.resize(archive.len().div_ceil(512) * 512, 0);
    member(&mut b, EntryType::Regular, b"after", b"next member");
    let bytes = b.into_inner().unwrap();
    let tree = scan_bytes(&bytes).unwrap();
    match &node(&tree, b"big").content {
        Content::File { size, data: Data::Archive { offset, .. }, .. } => {
            assert_eq!(*size, data.len() as u64);
            assert_eq!(&bytes[*offset as usize..*offset as usize + data.len()], data.as_slice());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(node(&tree, b"after").content, Content::File { size: 11, .. }));
}

fn noise_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7919 % 251) as u8).collect()
}

proptest! {
    /// Any records at all: every key and value byte comes back as written.
    #[test]
    fn records_read_back(records in prop::collection::vec(
        (prop::collection::vec(any::<u8>().prop_filter("no '='", |b| *b != b'='), 1..20),
         prop::collection::vec(any::<u8>(), 0..300)), 0..8)) {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| record(k, v)).collect();
        let parsed = pax_records(&data).unwrap();
        let want: Vec<(&[u8], &[u8])> = records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        prop_assert_eq!(parsed, want);
    }

    /// Hostile header data never panics.
    #[test]
    fn hostile_records_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = pax_records(&data);
    }
}
