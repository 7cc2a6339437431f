#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn inode(mode: u32, data: InodeData) -> Inode {
    Inode {
        mode,
        uid: 0,
        gid: 0,
        mtime: Timestamp { secs: 1_700_000_000, nanos: 5 },
        ctime: Timestamp { secs: -3, nanos: 999_999_999 },
        xattrs: Vec::new(),
        data,
        nlink: 0,
    }
}

fn entry(name: &[u8], inode: u32) -> Entry {
    Entry { name: name.to_vec(), inode, parent: 0 }
}

fn file(size: u64, regions: Option<Vec<Region>>) -> InodeData {
    InodeData::File { size, regions, stream_offset: 0 }
}

fn chunk(n: u8, len: u32) -> ChunkRef {
    ChunkRef { id: Hash([n; 32]), plain: None, len, format: Format::Flint }
}

/// / { a (file 10 bytes), b/ { c (sparse: 4 data bytes at 100 in 1000) , hl -> a }, dev, link }
fn sample() -> (Flist, Vec<u8>) {
    let mut tags = BTreeMap::new();
    tags.insert("name".to_string(), "sample".to_string());
    let routes = vec![Route { start: 0, end: 255, url: "http://example/store".into() }];
    let entries = vec![
        entry(b"", 0),
        entry(b"a", 1),
        entry(b"b", 2),
        entry(b"dev", 3),
        entry(b"link", 4),
        entry(b"c", 5),
        entry(b"hl", 1),
    ];
    let mut with_xattr = inode(libc::S_IFREG | 0o4755, file(10, None));
    with_xattr.xattrs = vec![(b"security.capability".to_vec(), vec![1, 2, 3]), (b"user.x".to_vec(), Vec::new())];
    let inodes = vec![
        inode(libc::S_IFDIR | 0o755, InodeData::Dir { children: 0..4 }),
        with_xattr,
        inode(libc::S_IFDIR | 0o1777, InodeData::Dir { children: 0..2 }),
        inode(libc::S_IFCHR | 0o600, InodeData::Device(libc::makedev(1, 3))),
        inode(libc::S_IFLNK | 0o777, InodeData::Symlink(b"/a\xff".to_vec())),
        inode(libc::S_IFREG | 0o644, file(1000, Some(vec![Region { offset: 100, len: 4 }]))),
    ];
    Flist::build(tags, routes, false, vec![chunk(1, 8), chunk(2, 6)], entries, inodes).unwrap()
}

#[test]
fn build_decodes_to_the_same_model() {
    let (f, bytes) = sample();
    let again = Flist::decode(&bytes).unwrap();
    assert_eq!(f, again);
    assert_eq!(f.encode().unwrap(), bytes);
    assert_eq!(f.digest(), Hash(*blake3::hash(&bytes).as_bytes()));
}

#[test]
fn tree_is_linked() {
    let (f, _) = sample();
    let hl = f.resolve(b"/b/hl").unwrap();
    let a = f.resolve(b"a").unwrap();
    assert_eq!(f.entry(hl).unwrap().inode, f.entry(a).unwrap().inode);
    assert_eq!(f.inode_of(a).unwrap().nlink, 2);
    assert_eq!(f.inode_of(0).unwrap().nlink, 3); // . , .. and b/
    assert_eq!(f.path_of(hl), b"/b/hl");
    assert_eq!(f.resolve(b"/b/missing"), None);
    assert_eq!(f.resolve(b"/a/x"), None);
}

#[test]
fn extents_cover_files_and_holes() {
    let (f, _) = sample();
    let a = f.inode_of(f.resolve(b"/a").unwrap()).unwrap();
    // a = stream 0..10 = chunk 0 (8 bytes) + 2 bytes of chunk 1.
    assert_eq!(
        f.extents(a, 0, 100),
        vec![Extent::Data { chunk: 0, offset: 0, len: 8 }, Extent::Data { chunk: 1, offset: 0, len: 2 }]
    );
    assert_eq!(f.extents(a, 9, 1), vec![Extent::Data { chunk: 1, offset: 1, len: 1 }]);
    assert_eq!(f.extents(a, 10, 5), vec![]);
    let c = f.inode_of(f.resolve(b"/b/c").unwrap()).unwrap();
    // c = hole 0..100, data 100..104 = stream 10..14 = chunk 1 bytes 2..6, hole to 1000.
    assert_eq!(
        f.extents(c, 0, 2000),
        vec![Extent::Hole { len: 100 }, Extent::Data { chunk: 1, offset: 2, len: 4 }, Extent::Hole { len: 896 }]
    );
    assert_eq!(f.extents(c, 102, 500), vec![Extent::Data { chunk: 1, offset: 4, len: 2 }, Extent::Hole { len: 498 }]);
}

#[test]
fn structural_lies_are_refused() {
    let (f, _) = sample();
    let rebuild = |entries: Vec<Entry>, inodes: Vec<Inode>, chunks: Vec<ChunkRef>| {
        Flist::build(f.tags.clone(), f.routes.clone(), false, chunks, entries, inodes)
    };
    // Chunks shorter than the files.
    assert!(rebuild(f.entries.clone(), f.inodes.clone(), vec![chunk(1, 8)]).is_err());
    // A name with a slash, and `..`.
    for bad in [&b"x/y"[..], b"..", b"."] {
        let mut e = f.entries.clone();
        e[3].name = bad.to_vec();
        assert!(rebuild(e, f.inodes.clone(), f.chunks.clone()).is_err(), "{bad:?}");
    }
    // Unsorted children.
    let mut e = f.entries.clone();
    e.swap(1, 2);
    assert!(rebuild(e, f.inodes.clone(), f.chunks.clone()).is_err());
    // A hardlink to a directory.
    let mut e = f.entries.clone();
    e[6].inode = 2;
    assert!(rebuild(e, f.inodes.clone(), f.chunks.clone()).is_err());
}

#[test]
fn header_errors_are_specific() {
    let (_, bytes) = sample();
    assert_eq!(Flist::decode(b"short"), Err(DecodeError::BadMagic));
    let mut v = bytes.clone();
    v[8] = 9;
    assert_eq!(Flist::decode(&v), Err(DecodeError::UnsupportedVersion(9)));
    let mut v = bytes.clone();
    v[10] = 0x80;
    assert!(matches!(Flist::decode(&v), Err(DecodeError::UnknownFlags(_))));
    let mut v = bytes.clone();
    v[15] = 0xff;
    assert!(matches!(Flist::decode(&v), Err(DecodeError::BodyTooLarge(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Hostile input: any mutation of a valid flist decodes to a valid flist or an error, never
    /// a panic (the fuzz target explores the same property much longer).
    #[test]
    fn mutated_metadata_never_panics(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let (_, mut bytes) = sample();
        for (pos, val) in flips {
            let i = pos % bytes.len();
            bytes[i] ^= val;
        }
        let _ = Flist::decode(&bytes);
        let _ = Flist::decode(&bytes[..cut % bytes.len()]);
    }

    /// Mutations of the decompressed body reach the structural checks (a flipped compressed byte
    /// mostly just fails decompression).
    #[test]
    fn mutated_body_never_panics(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let (_, bytes) = sample();
        let mut body = zstd::bulk::decompress(&bytes[16..], 1 << 20).unwrap();
        for (pos, val) in flips {
            let i = pos % body.len();
            body[i] ^= val;
        }
        let mut v = bytes[..12].to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&zstd::bulk::compress(&body, 1).unwrap());
        if let Ok(f) = Flist::decode(&v) {
            // Whatever decodes must be usable without panics.
            for e in 0..f.entries.len() as u32 {
                let _ = f.path_of(e);
                if let Some(i) = f.inode_of(e) {
                    let _ = f.extents(i, 0, u64::MAX);
                }
            }
        }
    }
}
