//! The control socket of a node in rescue (PID 1 could not set up its loops): it still answers,
//! so that an operator on the console or over the socket learns why, and can reboot or power off.
//! Every request but those is refused with the reason; `list` shows that nothing runs.

use std::path::Path;

use crossbeam_channel::select;

use super::protocol::{Answer, Done, ServiceRequest};
use super::Owners;
use crate::node::Power;

/// Serves the control socket at `socket` on a thread of its own; a power request answers, then
/// calls `on_power`.
pub fn serve(socket: &Path, why: &str, on_power: impl Fn(Power) + Send + 'static) -> std::io::Result<()> {
    let (services, service_calls) = crossbeam_channel::unbounded();
    let (node, node_calls) = crossbeam_channel::unbounded();
    let (power, power_calls) = crossbeam_channel::unbounded();
    super::serve(socket, Owners { services, node, power })?;
    let refusal = format!("the node is in rescue: {why}; only reboot and poweroff are taken");
    std::thread::Builder::new().name("rescue-control".into()).spawn(move || {
        crate::guard::guard("rescue control", || loop {
            select! {
                recv(service_calls) -> call => if let Ok((request, reply)) = call {
                    let answer = match request {
                        ServiceRequest::List => Answer::Services(Vec::new()),
                        _ => Answer::refused(&refusal),
                    };
                    let _ = reply.send(answer);
                },
                recv(node_calls) -> call => if let Ok((_, reply)) = call {
                    let _ = reply.send(Answer::refused(&refusal));
                },
                recv(power_calls) -> call => if let Ok((request, reply)) = call {
                    let _ = reply.send(Answer::Done(Done::OK));
                    on_power(request.into());
                },
            }
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{NodeRequest, PowerRequest, Request, ServiceRow};
    use crate::control::{call, CallError};

    #[test]
    fn a_node_in_rescue_says_why_and_still_powers_off() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("init.sock");
        let (powered_tx, powered) = crossbeam_channel::bounded(1);
        serve(&socket, "reboot(2) failed: EPERM", move |p| powered_tx.send(p).unwrap()).unwrap();

        let listed: Vec<ServiceRow> = call(&socket, &Request::Service(ServiceRequest::List)).unwrap();
        assert!(listed.is_empty());
        for request in [
            Request::Service(ServiceRequest::Status { name: Some("web".into()) }),
            Request::Service(ServiceRequest::Shutdown),
            Request::Node(NodeRequest::Reload),
            Request::Node(NodeRequest::Manifest),
        ] {
            match call::<Done>(&socket, &request) {
                Err(CallError::Refused(why)) => assert!(why.contains("in rescue: reboot(2) failed: EPERM"), "{why}"),
                other => panic!("{request:?}: {other:?}"),
            }
        }
        assert!(powered.try_recv().is_err());
        let done: Done = call(&socket, &Request::Power(PowerRequest::Poweroff)).unwrap();
        assert_eq!(done, Done::OK);
        assert_eq!(powered.recv_timeout(std::time::Duration::from_secs(5)), Ok(Power::Poweroff));
    }
}
