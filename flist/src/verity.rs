//! fs-verity on assembled files: the kernel checks every page it reads from such a file against a
//! SHA-256 Merkle tree it keeps with the file, and the file can no longer be written through the
//! filesystem. Passthrough hands the kernel backing files that it reads without asking flint, so
//! only such files are handed over: a byte changed on the disk below then fails the read with
//! EIO instead of being served.
//!
//! The two ioctls are not in the `libc` crate, hence the structures here (`linux/fsverity.h`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `FS_IOC_ENABLE_VERITY`: `_IOW('f', 133, struct fsverity_enable_arg)`.
const ENABLE: libc::c_ulong = 0x4080_6685;
/// `FS_IOC_MEASURE_VERITY`: `_IOWR('f', 134, struct fsverity_digest)`.
const MEASURE: libc::c_ulong = 0xc004_6686;
/// `FS_VERITY_HASH_ALG_SHA256`.
const SHA256: u32 = 1;
const SHA256_LEN: u16 = 32;
/// The Merkle tree's largest block size: the page size. The kernel also wants it no larger than
/// the filesystem's block (1 KiB on a small ext4).
const MAX_BLOCK_SIZE: u32 = 4096;

/// `struct fsverity_enable_arg`.
#[repr(C)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// `struct fsverity_digest` with room for a SHA-256 digest.
#[repr(C)]
struct DigestArg {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; SHA256_LEN as usize],
}

/// The fs-verity digest of a file (SHA-256 over its Merkle tree's root and parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

/// Turns fs-verity on for `file`, which must be open read-only with no writer left. Building the
/// Merkle tree reads the whole file. Enabling it on a file that already has it is not an error.
pub fn enable(file: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let fs_block = u32::try_from(file.metadata()?.blksize()).unwrap_or(MAX_BLOCK_SIZE);
    let block_size = if fs_block.is_power_of_two() { fs_block.clamp(1024, MAX_BLOCK_SIZE) } else { MAX_BLOCK_SIZE };
    let arg = EnableArg {
        version: 1,
        hash_algorithm: SHA256,
        block_size,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: `arg` is a valid `fsverity_enable_arg` that outlives the call; it has no salt or
    // signature pointers for the kernel to follow.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), ENABLE as _, &arg as *const EnableArg) };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            e => Err(e),
        },
    }
}

/// The fs-verity digest of `file`; an error (`ENODATA`) when fs-verity is not on for it.
pub fn measure(file: &File) -> io::Result<Digest> {
    let mut arg = DigestArg { digest_algorithm: 0, digest_size: SHA256_LEN, digest: [0; 32] };
    // SAFETY: `arg` has room for `digest_size` digest bytes, as the kernel requires; the kernel
    // writes only within it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), MEASURE as _, &mut arg as *mut DigestArg) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if u32::from(arg.digest_algorithm) != SHA256 || arg.digest_size != SHA256_LEN {
        return Err(io::Error::other(format!(
            "fs-verity hash algorithm {} ({} bytes), not SHA-256",
            arg.digest_algorithm, arg.digest_size
        )));
    }
    Ok(Digest(arg.digest))
}

/// Whether files in `dir` can have fs-verity, found by enabling it on a small file there. The
/// error says why not: `ENOTTY` from a kernel or filesystem without fs-verity, `EOPNOTSUPP`
/// from an ext4 made without the `verity` feature.
pub fn probe(dir: &Path) -> io::Result<()> {
    let mut probe = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut probe, &[0; MAX_BLOCK_SIZE as usize])?;
    probe.as_file().sync_data()?;
    // The writer must be closed before fs-verity can be enabled; the path still removes the file.
    let path = probe.into_temp_path();
    let file = File::open(&path)?;
    enable(&file)?;
    measure(&file)?;
    Ok(())
}
