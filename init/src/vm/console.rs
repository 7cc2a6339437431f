//! A VM's serial console, shared: the guest's output goes to the runner's stdout (the service's
//! log) and to every client of a unix socket (`init ctl vm console`), and what clients type goes
//! to the guest.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use flist::durable::lock;

/// Ends an interactive console session (ctrl-]), as telnet does.
pub const ESCAPE: u8 = 0x1d;

/// Copies the guest's output to `log` (carriage returns dropped, so lines read cleanly) and to
/// the clients of `socket`, and the clients' input to the guest, on threads of their own. Returns
/// once they run; the output thread ends when the guest's output does.
pub fn serve(
    socket: &Path,
    guest_in: impl Write + Send + 'static,
    mut guest_out: impl Read + Send + 'static,
    mut log: impl Write + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    let listener = crate::control::listen(socket)?;
    let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
    let guest_in = Arc::new(Mutex::new(guest_in));
    let accepted = clients.clone();
    std::thread::Builder::new().name("console-accept".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let (Ok(reader), guest_in) = (conn.try_clone(), guest_in.clone()) else { continue };
            lock(&accepted).push(conn);
            let spawned = std::thread::Builder::new().name("console-in".into()).spawn(move || {
                let mut reader = reader;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    let mut guest = lock(&guest_in);
                    if guest.write_all(buf.get(..n).unwrap_or_default()).and_then(|()| guest.flush()).is_err() {
                        break;
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("console client dropped: {e}");
            }
        }
    })?;
    std::thread::Builder::new().name("console-out".into()).spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = guest_out.read(&mut buf) {
            let bytes = buf.get(..n).unwrap_or_default();
            let plain: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'\r').collect();
            let _ = log.write_all(&plain).and_then(|()| log.flush());
            lock(&clients).retain_mut(|c| c.write_all(bytes).is_ok());
        }
    })
}

/// Attaches the terminal to the console at `socket` until the escape byte (ctrl-]) or the VM's
/// end. A terminal on stdin is put in raw mode meanwhile, so keys reach the guest as typed.
pub fn attach(socket: &Path) -> io::Result<()> {
    use nix::sys::termios;
    let conn = UnixStream::connect(socket)?;
    let stdin = io::stdin();
    let saved = termios::tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
        eprint!("[console of {}: ctrl-] leaves]\r\n", socket.display());
    }
    let mut to_guest = conn.try_clone()?;
    let closer = conn.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut input = io::stdin();
        while let Ok(n @ 1..) = input.read(&mut buf) {
            let typed = buf.get(..n).unwrap_or_default();
            let (keep, escaped) = match typed.iter().position(|&b| b == ESCAPE) {
                Some(i) => (typed.get(..i).unwrap_or_default(), true),
                None => (typed, false),
            };
            if to_guest.write_all(keep).is_err() || escaped {
                // Leaving: the output loop below sees the socket close.
                let _ = closer.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        // Input ended (a pipe): the output keeps coming until the VM ends.
        let _ = closer.shutdown(std::net::Shutdown::Write);
    });
    let result = io::copy(&mut &conn, &mut io::stdout()).map(drop);
    if let Some(saved) = &saved {
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, saved);
        eprintln!();
    }
    result
}
