//! `init ctl`: a running init's control client. Its commands are the protocol's own requests
//! ([`ServiceRequest`], [`NodeRequest`]); `vm` is the same service requests, for VMs only, and
//! the console. Answers are read as the types the owners send.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use flint_init::control::protocol::{
    Done, LogPage, ManifestState, Metrics, MountRow, NodeRequest, PowerRequest, Reloaded, Request, ServiceRequest,
    ServiceRow,
};
use flint_init::control::{self, CallError};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(clap::Args)]
pub struct CtlArgs {
    /// Control socket of the init to talk to.
    #[arg(long, default_value = control::SOCKET, global = true)]
    socket: PathBuf,
    /// Print the answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// With `log`: keep printing new lines.
    #[arg(short, long, global = true)]
    follow: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand)]
enum CtlCommand {
    #[command(flatten)]
    Service(ServiceRequest),
    #[command(flatten)]
    Node(NodeRequest),
    #[command(flatten)]
    Power(PowerRequest),
    /// The virtual machines.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(clap::Subcommand)]
enum VmCommand {
    /// Attach to a VM's serial console (ctrl-] leaves).
    Console { name: String },
    /// The service requests, about VMs only: `list` lists the VMs; a request naming anything
    /// but a VM is refused (a VM's log is its console output and what its runner said).
    #[command(flatten)]
    Service(ServiceRequest),
}

struct Client {
    socket: PathBuf,
    json: bool,
    follow: bool,
}

impl Client {
    fn call<T: DeserializeOwned>(&self, request: ServiceRequest) -> anyhow::Result<T> {
        self.ask(&Request::Service(request))
    }

    fn ask<T: DeserializeOwned>(&self, request: &Request) -> anyhow::Result<T> {
        control::call(&self.socket, request).map_err(|e| match e {
            CallError::Refused(why) => anyhow::anyhow!(why),
            other => anyhow::Error::new(other).context(format!("asking {}", self.socket.display())),
        })
    }

    /// Prints `answer` as JSON with `--json`, else as `human` says.
    fn print<T: Serialize>(&self, answer: &T, human: impl FnOnce(&T)) -> anyhow::Result<ExitCode> {
        if self.json {
            println!("{}", serde_json::to_string(answer)?);
        } else {
            human(answer);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn service(&self, request: ServiceRequest) -> anyhow::Result<ExitCode> {
        match request {
            ServiceRequest::List => {
                let rows: Vec<ServiceRow> = self.call(request)?;
                self.print(&rows, |rows| rows.iter().for_each(|r| println!("{}", state_line(r))))
            }
            ServiceRequest::Status { name: None } => {
                let m: ManifestState = self.ask(&Request::Node(NodeRequest::Manifest))?;
                self.print(&m, print_node)
            }
            ServiceRequest::Status { .. } => {
                let row: ServiceRow = self.call(request)?;
                self.print(&row, print_pretty)
            }
            ServiceRequest::Log { name, .. } => self.log(name),
            ServiceRequest::Start { .. }
            | ServiceRequest::Stop { .. }
            | ServiceRequest::Restart { .. }
            | ServiceRequest::Kill { .. }
            | ServiceRequest::Shutdown => {
                let done: Done = self.call(request)?;
                self.print(&done, |_| {})
            }
        }
    }

    fn node(&self, request: NodeRequest) -> anyhow::Result<ExitCode> {
        let ask = Request::Node(request);
        match request {
            NodeRequest::Reload => {
                let r: Reloaded = self.ask(&ask)?;
                self.print(&r, |r| match (&r.note, r.version) {
                    (Some(note), _) => println!("{note}"),
                    (None, Some(v)) => println!("version {v}{}", if r.changed { " (new)" } else { ", unchanged" }),
                    (None, None) => println!("no manifest in force"),
                })
            }
            NodeRequest::Manifest => {
                let m: ManifestState = self.ask(&ask)?;
                self.print(&m, print_pretty)
            }
            NodeRequest::Metrics => {
                let m: Metrics = self.ask(&ask)?;
                if self.json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    print!("{}", m.text);
                }
                Ok(ExitCode::SUCCESS)
            }
            NodeRequest::Mounts => {
                let rows: Vec<MountRow> = self.ask(&ask)?;
                self.print(&rows, |rows| {
                    for m in rows {
                        let down = m.stores.iter().filter(|s| s.down).count();
                        let problem = m.problem.as_deref().map_or(String::new(), |p| format!("  ({p})"));
                        println!(
                            "{:16} {}  {}  {} stores, {down} down{problem}",
                            m.name,
                            m.mountpoint.display(),
                            m.digest.get(..12).unwrap_or(&m.digest),
                            m.stores.len()
                        );
                    }
                })
            }
        }
    }

    fn vm(&self, command: VmCommand) -> anyhow::Result<ExitCode> {
        let rows: Vec<ServiceRow> = self.call(ServiceRequest::List)?;
        let vms: Vec<ServiceRow> = rows.into_iter().filter(|r| r.vm.is_some()).collect();
        let find = |name: &str| vms.iter().find(|r| r.name == name).with_context(|| format!("no VM named {name:?}"));
        match command {
            VmCommand::Console { name } => {
                let socket = find(&name)?.vm.as_ref().map(|vm| vm.console.clone()).context("no console socket")?;
                flint_init::vm::console::attach(&socket)
                    .with_context(|| format!("the console of {name} ({}): is it running?", socket.display()))?;
                Ok(ExitCode::SUCCESS)
            }
            VmCommand::Service(ServiceRequest::List) => self.print(&vms, |vms| {
                for r in vms {
                    let Some(vm) = &r.vm else { continue };
                    println!("{}  {} vCPU {:>5} MiB  root {}", state_line(r), vm.vcpus, vm.memory_mib, vm.root);
                }
            }),
            VmCommand::Service(request) => match request.service() {
                Some(name) => {
                    find(name)?;
                    self.service(request)
                }
                None => anyhow::bail!("name a VM (shutdown is the whole node's: init ctl shutdown)"),
            },
        }
    }

    /// Prints log lines, and with `--follow` new ones as they come.
    fn log(&self, name: Option<String>) -> anyhow::Result<ExitCode> {
        let mut since = 0;
        loop {
            let page: LogPage = self.call(ServiceRequest::Log { name: name.clone(), since })?;
            if self.json {
                println!("{}", serde_json::to_string(&page)?);
            } else {
                page.lines.iter().for_each(|l| println!("{}: {}", l.service, l.line));
            }
            if !self.follow {
                return Ok(ExitCode::SUCCESS);
            }
            since = page.next;
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A service's or VM's name, state, pid and start count, in columns.
fn state_line(r: &ServiceRow) -> String {
    let pid = r.pid.map_or("-".to_string(), |p| p.to_string());
    format!("{:20} {:9} pid {pid:>7}  starts {:>3}", r.name, r.state, r.starts)
}

/// The node in a few lines: who it is, what it runs, and how its last upgrade went.
fn print_node(m: &ManifestState) {
    let or_none = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
    println!("{}", m.identity.as_deref().unwrap_or("node: no identity"));
    println!(
        "manifest version {} (last good {}, floor {}, failed {}) from {}",
        or_none(m.version),
        or_none(m.good),
        or_none(m.floor),
        or_none(m.failed),
        m.url
    );
    if let Some(window) = m.health_window {
        println!("health: in its {window} s window");
    }
    for line in [&m.health, &m.stale, &m.last_error].into_iter().flatten() {
        println!("{line}");
    }
}

fn print_pretty<T: Serialize>(answer: &T) {
    match serde_json::to_string_pretty(answer) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("init: printing the answer: {e}"),
    }
}

pub fn ctl(a: CtlArgs) -> anyhow::Result<ExitCode> {
    let client = Client { socket: a.socket, json: a.json, follow: a.follow };
    match a.command {
        CtlCommand::Service(request) => client.service(request),
        CtlCommand::Node(request) => client.node(request),
        CtlCommand::Power(request) => {
            let done: Done = client.ask(&Request::Power(request))?;
            client.print(&done, |_| {})
        }
        CtlCommand::Vm(command) => client.vm(command),
    }
}
