//! Starting a service's process: its own session and process group, a minimal environment,
//! optionally chrooted into a mounted flist in a mount namespace of its own, as its user, with
//! its output captured line by line into its log ring (and file).

use std::ffi::{CString, OsString};
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::logring::Ring;
use flint_manifest::ServicePlan;

/// Where and as whom to run, resolved before forking.
pub struct Launch<'a> {
    /// argv.
    pub argv: &'a [OsString],
    /// The service.
    pub plan: &'a ServicePlan,
    /// Root directory to chroot into.
    pub root: Option<&'a Path>,
    /// Output.
    pub ring: Arc<Ring>,
    /// Log file to append to.
    pub log_file: Option<PathBuf>,
    /// Prefix for each captured line (`test: ` for readiness checks).
    pub prefix: &'static str,
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

/// The fields of the line of a colon-separated database (`/etc/passwd`, `/etc/group`) in `root`
/// whose name (field 0) or id (field 2) is `name`.
fn lookup(root: &Path, db: &str, name: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(root.join(db)).ok()?;
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.first().is_some_and(|n| n == name) || f.get(2).is_some_and(|id| id == name))
}

/// The uid and primary gid of user `name` (or a number) in `root`.
fn lookup_user(root: &Path, name: &str) -> io::Result<(u32, u32)> {
    let ids = lookup(root, "etc/passwd", name).and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)));
    match ids {
        Some(ids) => Ok(ids),
        None => name.parse().map(|u| (u, u)).map_err(|_| io::Error::other(format!("no user {name:?}"))),
    }
}

/// The gid of group `name` (or a number) in `root`.
fn lookup_group(root: &Path, name: &str) -> io::Result<u32> {
    match lookup(root, "etc/group", name).and_then(|f| f.get(2)?.parse().ok()) {
        Some(gid) => Ok(gid),
        None => name.parse().map_err(|_| io::Error::other(format!("no group {name:?}"))),
    }
}

/// The highest capability number the running kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// Between fork and exec: takes `dropped` out of the bounding set and out of the inheritable
/// and ambient sets (so that exec cannot bring them back), then sets `no_new_privs` if asked.
/// Only system calls on the data given: async-signal-safe.
fn confine(dropped: &[u32], no_new_privs: bool) -> io::Result<()> {
    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: prctl and capget/capset on this process, with structures of the layout the
    // kernel's version 3 interface defines, that outlive the calls.
    unsafe {
        if !dropped.is_empty() {
            for &cap in dropped {
                if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut header = Header { version: VERSION_3, pid: 0 };
            let mut data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
            if libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            for &cap in dropped {
                if let Some(word) = data.get_mut((cap / 32) as usize) {
                    word.inheritable &= !(1 << (cap % 32));
                }
            }
            if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts the process; returns its pid (also its process group).
pub fn start(l: Launch<'_>) -> io::Result<i32> {
    let (program, args) = l.argv.split_first().ok_or_else(|| io::Error::other("empty argv"))?;
    let root = l.root.unwrap_or(Path::new("/"));
    let ids = match &l.plan.user {
        Some(u) => Some(lookup_user(root, u)?),
        None => None,
    };
    let gid = match &l.plan.group {
        Some(g) => Some(lookup_group(root, g)?),
        None => ids.map(|(_, g)| g),
    };
    let uid = ids.map(|(u, _)| u);
    let chroot = l.root.map(cstring).transpose()?;
    let binds: Vec<(CString, CString)> = match l.root {
        Some(r) => ["dev", "proc", "sys"]
            .iter()
            .filter(|d| r.join(d).is_dir())
            .map(|d| Ok((cstring(&Path::new("/").join(d))?, cstring(&r.join(d))?)))
            .collect::<io::Result<_>>()?,
        None => Vec::new(),
    };
    let dir = cstring(l.plan.dir.as_deref().unwrap_or(Path::new("/")))?;
    let confinement = l.plan.confinement;
    let dropped: Vec<u32> = confinement.capabilities.missing_up_to(last_capability()).collect();

    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("TERM", "linux")
        .envs(l.plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe system calls run, on data prepared
    // above (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            // The supervisor blocks the signals it waits for; its children must not inherit that.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(io::Error::other("resetting the signal mask"));
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(root) = &chroot {
                // A private mount namespace: the service's /dev, /proc, /sys binds stay its own.
                if libc::unshare(libc::CLONE_NEWNS) < 0
                    || libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                for (src, dst) in &binds {
                    let flags = libc::MS_BIND | libc::MS_REC;
                    if libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::chroot(root.as_ptr()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::chdir(dir.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            confine(&dropped, confinement.no_new_privs)?;
            if let Some(g) = gid {
                if libc::setgroups(0, std::ptr::null()) < 0 || libc::setgid(g) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(u) = uid {
                if libc::setuid(u) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // Opened before the spawn: a failure leaves no process behind.
    let file = match &l.log_file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            Some(Arc::new(std::sync::Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)))
        }
        None => None,
    };
    let mut child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    let out: [Option<Box<dyn io::Read + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    ];
    for stream in out.into_iter().flatten() {
        let (ring, file, prefix) = (l.ring.clone(), file.clone(), l.prefix);
        // The supervisor reaps by pid; the Child handle is dropped without waiting.
        let spawned = std::thread::Builder::new().name(format!("log-{pid}")).spawn(move || {
            for line in io::BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let line = format!("{prefix}{}", String::from_utf8_lossy(&line));
                if let Some(f) = &file {
                    let mut f = flist::durable::lock(f);
                    let _ = writeln!(f, "{line}");
                }
                ring.push(line);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("no log reader for pid {pid}: {e}");
        }
    }
    Ok(pid)
}
