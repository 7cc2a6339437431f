//! The power keeper: the one owner of reboot, power off and exit requests (signals and `init ctl
//! reboot|poweroff`), apart from the node loop so that no stall there can keep a node from
//! going down. It answers at once, hands the request to the node loop (which stops the
//! services, unmounts and returns it, the normal way out) and tells the supervisor to stop all
//! the same. If the node loop has not returned [`NODE_GRACE`] after the services are down, the
//! keeper finishes without it: unmount if the mount table is free, sync, then reboot, power off
//! or exit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use crate::control::protocol::{Answer, Done, PowerRequest};
use crate::control::PowerCall;
use crate::mounts::Mounts;
use crate::node::Power;

/// How long the node loop has, once every service is down, to unmount and return.
pub const NODE_GRACE: Duration = Duration::from_secs(10);

/// What the keeper listens to and acts on.
pub struct Keeper {
    /// Power signals (SIGTERM, SIGINT from ctrl-alt-del, SIGUSR2).
    pub signals: Receiver<Power>,
    /// `init ctl reboot|poweroff`.
    pub calls: Receiver<PowerCall>,
    /// The node loop, which takes it the normal way.
    pub node: Sender<Power>,
    /// The supervisor: stop every service.
    pub stop: Sender<()>,
    /// The supervisor has stopped every service and returned.
    pub stopped: Receiver<()>,
    /// The node loop has returned.
    pub node_done: Receiver<()>,
    /// The mount table, to unmount without the node loop.
    pub mounts: Arc<Mutex<Mounts>>,
    /// The control socket, removed on the way out.
    pub socket: PathBuf,
    /// Reboot or power off at the end (PID 1), rather than exit.
    pub pid1: bool,
}

impl From<PowerRequest> for Power {
    fn from(request: PowerRequest) -> Power {
        match request {
            PowerRequest::Reboot => Power::Reboot,
            PowerRequest::Poweroff => Power::Poweroff,
        }
    }
}

impl Keeper {
    /// Waits for the first power request, then sees it through. Returns when the node loop
    /// took it the normal way; does not return when it had to finish on its own.
    pub fn run(&self) {
        let Some(power) = self.first_request() else { return };
        tracing::info!("{power:?} requested");
        let _ = self.node.send(power);
        let _ = self.stop.try_send(());
        // Later requests are answered (the first one is under way) until the services are down.
        loop {
            select! {
                recv(self.calls) -> call => if let Ok((_, reply)) = call {
                    let _ = reply.send(Answer::Done(Done::OK));
                },
                recv(self.signals) -> _ => {},
                recv(self.stopped) -> _ => break,
            }
        }
        if !matches!(self.node_done.recv_timeout(NODE_GRACE), Err(crossbeam_channel::RecvTimeoutError::Timeout)) {
            return;
        }
        tracing::error!(
            "the node loop did not return within {} s of the services stopping: {power:?} without it",
            NODE_GRACE.as_secs()
        );
        crate::report::stage("error", format!("the node loop was stuck; {power:?} forced"));
        match self.mounts.try_lock() {
            Ok(mut mounts) => mounts.unmount_all(),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().unmount_all(),
            Err(TryLockError::WouldBlock) => {
                tracing::error!("the mount table is held by the stuck loop: not unmounting")
            }
        }
        nix::unistd::sync();
        let _ = std::fs::remove_file(&self.socket);
        if self.pid1 {
            crate::boot::finish(power);
        }
        std::process::exit(0);
    }

    fn first_request(&self) -> Option<Power> {
        select! {
            recv(self.signals) -> power => power.ok(),
            recv(self.calls) -> call => {
                let (request, reply) = call.ok()?;
                let _ = reply.send(Answer::Done(Done::OK));
                Some(request.into())
            },
        }
    }
}
