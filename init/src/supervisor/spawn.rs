//! Starting a service's process: its own session and process group, in its cgroup, a minimal
//! environment, optionally chrooted into a mounted flist in a mount namespace of its own and in
//! namespaces of its own (pid under a small reaper, uts, ipc, loopback-only net), as its user,
//! with its output captured line by line into its log ring (and file).

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::logring::Ring;
use flint_manifest::limits::Namespaces;
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
    /// The `cgroup.procs` of its cgroup, which the process writes itself into first.
    pub cgroup: Option<&'a File>,
    /// A readiness check: the service's process, whose network, host name and IPC namespaces it
    /// joins (so that it reaches what the service serves) instead of making its own.
    pub joins: Option<i32>,
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

/// Between fork and exec, in a new network namespace: brings its loopback up (all it has).
fn loopback_up() -> io::Result<()> {
    // SAFETY: a socket and two ioctls on an `ifreq` that outlives them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *slot = *byte as libc::c_char;
        }
        let result = if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            Err(io::Error::last_os_error())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            match libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr) {
                r if r < 0 => Err(io::Error::last_os_error()),
                _ => Ok(()),
            }
        };
        libc::close(fd);
        result
    }
}

/// The exit code that reports `status` (from `waitpid`) onwards: its code, or 128 + the signal.
fn exit_code(status: libc::c_int) -> libc::c_int {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Closes every descriptor above stderr: the processes that stay behind to wait must not hold
/// the pipe through which the spawning side learns that exec happened.
unsafe fn close_from_3() {
    // SAFETY: closing descriptors of this (single-threaded, forked) process.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0) < 0 {
            for fd in 3..4096 {
                libc::close(fd);
            }
        }
    }
}

/// Between fork and exec, after `unshare(CLONE_NEWPID)`: makes the namespace's pid 1 a reaper
/// that forwards signals to the service, so that the service itself is pid 2 and keeps the
/// default meaning of SIGTERM. Three processes then: this one (the supervisor's child, outside
/// the namespace) waits for the reaper and exits as it does; the reaper (pid 1) mounts the
/// namespace's `/proc` on `proc_dir`, forwards every signal it gets to the service's process
/// group, reaps orphans, and exits with the service's code; only the service returns from here.
/// Only system calls: async-signal-safe.
unsafe fn enter_pid_namespace(proc_dir: Option<&CStr>) -> io::Result<()> {
    // SAFETY: fork, wait and signal calls in a forked, single-threaded process, on local data.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        // Blocked, not ignored: signals from outside still reach a namespace's pid 1 this way.
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let reaper = libc::fork();
        if reaper < 0 {
            return Err(io::Error::last_os_error());
        }
        if reaper > 0 {
            close_from_3();
            loop {
                let mut status = 0;
                if libc::sigwaitinfo(&all, std::ptr::null_mut()) == libc::SIGCHLD
                    && libc::waitpid(reaper, &mut status, libc::WNOHANG) == reaper
                {
                    libc::_exit(exit_code(status));
                }
            }
        }
        if let Some(dir) = proc_dir {
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(c"proc".as_ptr(), dir.as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let service = libc::fork();
        if service < 0 {
            return Err(io::Error::last_os_error());
        }
        if service == 0 {
            libc::setpgid(0, 0);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            return Ok(());
        }
        // Both sides, so that a signal forwarded at once finds the group.
        libc::setpgid(service, service);
        close_from_3();
        loop {
            let signal = libc::sigwaitinfo(&all, std::ptr::null_mut());
            if signal == libc::SIGCHLD {
                loop {
                    let mut status = 0;
                    match libc::waitpid(-1, &mut status, libc::WNOHANG) {
                        pid if pid == service => libc::_exit(exit_code(status)),
                        pid if pid > 0 => continue,
                        _ => break,
                    }
                }
            } else if signal > 0 {
                libc::kill(-service, signal);
            }
        }
    }
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
    let dir = cstring(l.plan.dir.as_deref().unwrap_or(Path::new("/")))?;
    let confinement = l.plan.confinement;
    // A readiness check joins the service's namespaces, but not its pids: it is no child of the
    // service's reaper.
    let fresh_namespaces = l.joins.is_none();
    let ns = match fresh_namespaces {
        true => confinement.namespaces,
        false => Namespaces { pid: false, ..confinement.namespaces },
    };
    // With its own pids, the service gets a /proc of its own (mounted in the namespace) instead
    // of a bind of the node's.
    let bound: &[&str] = if ns.pid { &["dev", "sys"] } else { &["dev", "proc", "sys"] };
    let binds: Vec<(CString, CString)> = match l.root {
        Some(r) => bound
            .iter()
            .filter(|d| r.join(d).is_dir())
            .map(|d| Ok((cstring(&Path::new("/").join(d))?, cstring(&r.join(d))?)))
            .collect::<io::Result<_>>()?,
        None => Vec::new(),
    };
    let dropped: Vec<u32> = confinement.capabilities.missing_up_to(last_capability()).collect();
    let cgroup = l.cgroup.map(|f| f.as_raw_fd());
    let hostname = CString::new(l.plan.name.as_str()).map_err(|_| io::Error::other("name contains NUL"))?;
    let proc_dir = match (l.root, ns.pid) {
        (_, false) => None,
        (Some(r), true) => r.join("proc").is_dir().then(|| cstring(&r.join("proc"))).transpose()?,
        (None, true) => Some(c"/proc".to_owned()),
    };
    let wanted =
        [("uts", ns.uts, libc::CLONE_NEWUTS), ("ipc", ns.ipc, libc::CLONE_NEWIPC), ("net", ns.net, libc::CLONE_NEWNET)]
            .into_iter()
            .filter(|(_, on, _)| *on);
    // The service's own are made; its readiness check's are the service's, joined.
    let (joined, unshare_flags) = match l.joins {
        Some(pid) => {
            let files = wanted.map(|(kind, _, _)| File::open(format!("/proc/{pid}/ns/{kind}")));
            (files.collect::<io::Result<Vec<File>>>()?, 0)
        }
        None => (Vec::new(), wanted.fold(if ns.pid { libc::CLONE_NEWPID } else { 0 }, |all, (_, _, flag)| all | flag)),
    };
    let joined_fds: Vec<i32> = joined.iter().map(|f| f.as_raw_fd()).collect();

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
            // First, so that everything it ever forks is in its group.
            if let Some(fd) = cgroup {
                if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if chroot.is_some() || ns.pid {
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
            }
            for (src, dst) in &binds {
                let flags = libc::MS_BIND | libc::MS_REC;
                if libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &fd in &joined_fds {
                if libc::setns(fd, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if unshare_flags != 0 && libc::unshare(unshare_flags) < 0 {
                return Err(io::Error::last_os_error());
            }
            if ns.uts && fresh_namespaces && libc::sethostname(hostname.as_ptr(), hostname.as_bytes().len()) < 0 {
                return Err(io::Error::last_os_error());
            }
            if ns.net && fresh_namespaces {
                loopback_up()?;
            }
            if ns.pid {
                // Returns only in the service's own process, pid 2 of the new namespace.
                enter_pid_namespace(proc_dir.as_deref())?;
            }
            if let Some(root) = &chroot {
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
