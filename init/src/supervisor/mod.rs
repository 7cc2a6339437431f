//! Runs the services of a plan: one loop owns every service's state and waits on child exits,
//! timers and control requests; each service's life is the pure machine in [`state`], and this
//! loop only performs its actions (spawn, signal) and feeds back what happened.

pub mod cgroup;
pub mod probe;
pub mod spawn;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::control::protocol::{Answer, CgroupRow, Done, LogLine, LogPage, ServiceRequest, ServiceRow, VmRow};
use crate::control::ServiceCall;
use crate::logring::Ring;
use crate::vm::Tools;
use flint_manifest::vm::VmPlan;
use flint_manifest::{LogTarget, ServicePlan};
use state::{step, Action, Backoff, Event, Spec, State};

/// A new set of services to run (a newer manifest), applied by diff: services it no longer names
/// or names differently, and those in `restart`, are stopped; once they are all down `switch` runs
/// (it swaps the flist mounts), then the new and changed services start. Unchanged services keep
/// running throughout.
pub struct Update {
    /// Every service of the new manifest.
    pub services: Vec<ServicePlan>,
    /// Services to restart even though their plan is unchanged (their root flist changes).
    pub restart: BTreeSet<String>,
    /// Mount points of the new manifest's flists, by name.
    pub roots: BTreeMap<String, PathBuf>,
    /// Runs between the stops and the starts.
    pub switch: Box<dyn FnOnce() + Send>,
    /// Told when the new services are in place.
    pub done: Sender<()>,
}

/// An update waiting for its leaving services to stop.
struct Pending {
    update: Update,
    leaving: BTreeSet<String>,
}

struct Service {
    plan: ServicePlan,
    spec: Spec,
    state: State,
    ring: Arc<Ring>,
    root: Option<PathBuf>,
    /// The kernel's counts of OOM kills and refused forks in its cgroup already reported.
    reported: Option<(u64, u64)>,
    /// Limits of its plan this node cannot enforce.
    unenforced: Vec<String>,
}

impl From<&ServicePlan> for Spec {
    fn from(plan: &ServicePlan) -> Spec {
        Spec {
            oneshot: plan.oneshot,
            has_test: plan.has_test(),
            port_test: plan.test_port.is_some(),
            test_timeout: plan.test_timeout,
            stop_signal: plan.stop_signal,
            stop_timeout: plan.stop_timeout,
            restart: plan.restart,
        }
    }
}

impl Service {
    fn new(plan: &ServicePlan, roots: &BTreeMap<String, PathBuf>) -> Service {
        Service {
            spec: Spec::from(plan),
            state: State::default(),
            ring: Arc::new(Ring::shipped(&plan.name)),
            root: plan.root.as_ref().and_then(|r| roots.get(r).cloned()),
            plan: plan.clone(),
            reported: None,
            unenforced: Vec::new(),
        }
    }
}

/// Where services' processes come from and go.
pub struct Options {
    /// Restart pacing.
    pub backoff: Backoff,
    /// Directory for `log: file` services.
    pub log_dir: PathBuf,
    /// Mount points of flists, by name, for services with a `root` and VMs.
    pub roots: BTreeMap<String, PathBuf>,
    /// Where VMs keep what lasts (overlay upper layers, disk images), a directory each.
    pub vm_state: PathBuf,
    /// Where VMs' sockets go (console, QMP, virtio-fs), a directory each.
    pub vm_run: PathBuf,
    /// The programs VMs run with.
    pub vm_tools: Tools,
    /// The machine's init: services' cgroups go under the hierarchy's root, not under a group
    /// init makes for itself where it was started.
    pub cgroup_root: bool,
}

/// The supervisor: owns every service.
pub struct Supervisor {
    services: Vec<Service>,
    opts: Options,
    /// Live processes: pid → service index.
    procs: HashMap<i32, usize>,
    shutting_down: bool,
    pending: Option<Pending>,
    /// Every service's own cgroup; none where the kernel has no cgroup2 (services then run
    /// unlimited, in init's), or before [`Supervisor::run`] made them.
    cgroups: Option<cgroup::Cgroups>,
    /// Whether [`Supervisor::run`] has set up the cgroups (once, also when a panic restarts it).
    cgroups_set_up: bool,
}

/// Where the supervisor's events come from.
pub struct Inputs {
    /// A message on every SIGCHLD.
    pub children: Receiver<()>,
    /// Control requests.
    pub calls: Receiver<ServiceCall>,
    /// New manifests.
    pub updates: Receiver<Update>,
    /// A message asks for shutdown.
    pub stop: Receiver<()>,
}

impl Supervisor {
    /// A supervisor for `services`, none started yet.
    pub fn new(services: &[ServicePlan], opts: Options) -> Supervisor {
        let services = services.iter().map(|p| Service::new(p, &opts.roots)).collect();
        Supervisor {
            services,
            opts,
            procs: HashMap::new(),
            shutting_down: false,
            pending: None,
            cgroups: None,
            cgroups_set_up: false,
        }
    }

    /// Starts applying `update`: stops what leaves or changes.
    fn begin_update(&mut self, update: Update) {
        let leaving: BTreeSet<String> = self
            .services
            .iter()
            .filter(|s| {
                update.services.iter().find(|n| n.name == s.plan.name).is_none_or(|n| *n != s.plan)
                    || update.restart.contains(&s.plan.name)
            })
            .map(|s| s.plan.name.clone())
            .collect();
        for name in &leaving {
            if let Some(i) = self.index(name) {
                self.apply(i, Event::Stop);
            }
        }
        self.pending = Some(Pending { update, leaving });
    }

    /// Completes the pending update once every leaving service is down.
    fn finish_update(&mut self) {
        let ready = self.pending.as_ref().is_some_and(|p| {
            p.leaving.iter().all(|n| self.index(n).and_then(|i| self.services.get(i)).is_none_or(|s| s.state.is_down()))
        });
        let Some(Pending { update, leaving }) = ready.then(|| self.pending.take()).flatten() else { return };
        (update.switch)();
        let mut old: HashMap<String, Service> = self.services.drain(..).map(|s| (s.plan.name.clone(), s)).collect();
        self.services = update
            .services
            .iter()
            .map(|plan| match old.remove(&plan.name) {
                Some(kept) if !leaving.contains(&plan.name) => kept,
                _ => Service::new(plan, &update.roots),
            })
            .collect();
        self.opts.roots = update.roots;
        if let Some(cgroups) = &self.cgroups {
            for gone in old.keys() {
                if !cgroups.remove(gone) {
                    tracing::warn!("service {gone}: its cgroup is still busy; left behind");
                }
            }
        }
        // Indices moved: map the live processes again.
        self.procs = self
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.state.pids().into_iter().map(move |pid| (pid, i)))
            .collect();
        tracing::info!("services updated: {} stopped or restarted, {} in all", leaving.len(), self.services.len());
        let _ = update.done.send(());
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.plan.name == name)
    }

    fn deps_up(&self, i: usize) -> bool {
        let Some(s) = self.services.get(i) else { return false };
        s.plan.after.iter().all(|d| self.index(d).and_then(|j| self.services.get(j)).is_some_and(|d| d.state.is_up()))
    }

    /// Feeds one event to service `i` and performs what it asks, feeding back the outcome.
    fn apply(&mut self, i: usize, event: Event) {
        let deps_up = !self.shutting_down && self.deps_up(i);
        let Some(svc) = self.services.get_mut(i) else { return };
        let (state, actions) = step(svc.state, event, Instant::now(), deps_up, &svc.spec, &self.opts.backoff);
        svc.state = state;
        for action in actions {
            self.perform(i, action);
        }
    }

    fn perform(&mut self, i: usize, action: Action) {
        let Some(svc) = self.services.get(i) else { return };
        if let (Action::SpawnTest, Some(port)) = (action, svc.plan.test_port) {
            self.try_port(i, port);
            return;
        }
        match action {
            Action::Spawn | Action::SpawnTest => {
                let test = action == Action::SpawnTest;
                let vm_argv = match svc.plan.vm.as_deref().filter(|_| !test) {
                    Some(vm) => match self.vm_argv(vm) {
                        Ok(argv) => Some(argv),
                        Err(e) => {
                            tracing::error!("vm {}: {e}", svc.plan.name);
                            self.apply(i, Event::SpawnFailed);
                            return;
                        }
                    },
                    None => None,
                };
                let cgroup = self.cgroup_for(i, test);
                let Some(svc) = self.services.get(i) else { return };
                let argv = match &vm_argv {
                    Some(argv) => argv,
                    None if test => svc.plan.test.as_deref().unwrap_or_default(),
                    None => &svc.plan.exec,
                };
                let log_file =
                    (svc.plan.log == LogTarget::File).then(|| self.opts.log_dir.join(format!("{}.log", svc.plan.name)));
                let ring = if svc.plan.log == LogTarget::Null { Arc::new(Ring::default()) } else { svc.ring.clone() };
                let launch = spawn::Launch {
                    argv,
                    plan: &svc.plan,
                    root: svc.root.as_deref(),
                    ring,
                    log_file,
                    prefix: if test { "test: " } else { "" },
                    cgroup: cgroup.as_ref(),
                    joins: if test { svc.state.pids().first().copied() } else { None },
                };
                let name = svc.plan.name.clone();
                match spawn::start(launch) {
                    Ok(pid) => {
                        self.procs.insert(pid, i);
                        self.apply(i, if test { Event::TestSpawned(pid) } else { Event::Spawned(pid) });
                    }
                    Err(e) => {
                        tracing::error!(
                            "service {name}: starting {}: {e}",
                            if test { "its readiness check" } else { "it" }
                        );
                        self.apply(i, if test { Event::TestSpawnFailed } else { Event::SpawnFailed });
                    }
                }
            }
            Action::SignalGroup(pid, signal) => {
                // The group may be gone already: nothing to report then.
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), signal);
            }
            Action::Note(what) => self.note(i, what),
        }
    }

    /// Runs service `i`'s port readiness check and feeds back whether it passed.
    fn try_port(&mut self, i: usize, port: u16) {
        let Some(svc) = self.services.get(i) else { return };
        let success = match svc.state.pids().first() {
            Some(&pid) => probe::port_accepts(port, pid, svc.plan.confinement.namespaces.net).unwrap_or_else(|why| {
                tracing::warn!("service {}: trying port {port}: {why}", svc.plan.name);
                false
            }),
            None => false,
        };
        self.apply(i, Event::Checked { success });
    }

    /// Logs why something happened to service `i`, reports it, and keeps it in its log.
    fn note(&self, i: usize, what: &str) {
        let Some(svc) = self.services.get(i) else { return };
        tracing::info!("service {}: {what}", svc.plan.name);
        crate::report::stage("service", format!("{}: {what}", svc.plan.name));
        svc.ring.push(format!("[init] {what}"));
    }

    /// The `cgroup.procs` a new process of service `i` writes itself into: for the service
    /// itself a group made afresh with the plan's limits, for its readiness check the same group.
    fn cgroup_for(&mut self, i: usize, test: bool) -> Option<std::fs::File> {
        let cgroups = self.cgroups.as_ref()?;
        let svc = self.services.get_mut(i)?;
        let name = &svc.plan.name;
        if test {
            return cgroups.join(name).map_err(|e| tracing::warn!("service {name}: its cgroup: {e}")).ok();
        }
        match cgroups.prepare(name, &svc.plan.limits) {
            Ok((procs, unenforced)) => {
                if !unenforced.is_empty() && unenforced != svc.unenforced {
                    tracing::warn!("service {name}: limits not enforced: {}", unenforced.join("; "));
                }
                svc.unenforced = unenforced;
                if svc.reported.is_none() {
                    let usage = cgroups.usage(name);
                    svc.reported = Some((usage.oom_kills, usage.fork_refusals));
                }
                Some(procs)
            }
            Err(e) => {
                tracing::warn!("service {name}: no cgroup ({e}); it runs in init's, without limits");
                None
            }
        }
    }

    /// After service `i`'s own process ended: ends whatever it left in its cgroup, and reports
    /// what the kernel did to it there (OOM kills, refused forks).
    fn ended(&mut self, i: usize) {
        let Some(cgroups) = self.cgroups.as_ref() else { return };
        let Some(svc) = self.services.get_mut(i) else { return };
        let (name, limits) = (svc.plan.name.clone(), svc.plan.limits.clone());
        if cgroups.populated(&name) {
            cgroups.kill(&name);
        }
        let usage = cgroups.usage(&name);
        let (oom, refused) = svc.reported.unwrap_or_default();
        svc.reported = Some((usage.oom_kills, usage.fork_refusals));
        let counts = [
            ("OOM kills at memory.max", usage.oom_kills, oom, limits.memory_max),
            ("forks refused at pids.max", usage.fork_refusals, refused, limits.pids_max),
        ];
        for (what, now, before, limit) in counts.into_iter().filter(|(_, now, before, _)| now > before) {
            let limit = limit.map_or("none".to_string(), |v| v.to_string());
            self.note(i, &format!("the kernel: {} {what} {limit} ({now} in all)", now - before));
        }
    }

    /// The runner's command line for `vm`: this very program (`init vm run`) with the VM's
    /// plan resolved against the flists in force.
    fn vm_argv(&self, vm: &VmPlan) -> Result<Vec<OsString>, String> {
        let spec = crate::vm::RunSpec::resolve(
            vm,
            &self.opts.roots,
            &self.opts.vm_state,
            &self.opts.vm_run,
            &self.opts.vm_tools,
        )?;
        let json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
        Ok(["/proc/self/exe", "vm", "run", "--spec", &json].into_iter().map(OsString::from).collect())
    }

    /// Re-evaluates every service until nothing moves (a service coming up can start others).
    fn settle(&mut self) {
        let order = start_order(self.services.iter().map(|s| s.plan.limits.cpu_weight));
        for _ in 0..=self.services.len() {
            let before: Vec<State> = self.services.iter().map(|s| s.state).collect();
            for &i in &order {
                self.apply(i, Event::Tick);
            }
            if self.shutting_down {
                self.stop_next();
            }
            if self.services.iter().map(|s| s.state).eq(before) {
                break;
            }
        }
    }

    /// During shutdown: stops every service that no running service depends on.
    fn stop_next(&mut self) {
        for i in 0..self.services.len() {
            let Some(name) = self.services.get(i).map(|s| s.plan.name.clone()) else { continue };
            let needed = self.services.iter().any(|o| !o.state.is_down() && o.plan.after.contains(&name));
            if !needed {
                self.apply(i, Event::Stop);
            }
        }
    }

    /// Collects exited children: services, readiness checks, and orphans handed to us.
    fn reap(&mut self) {
        loop {
            let (pid, success) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code == 0),
                Ok(WaitStatus::Signaled(pid, _, _)) => (pid, false),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(i) = self.procs.remove(&pid.as_raw()) {
                let own = self.services.get(i).is_some_and(|s| s.state.pids().first() == Some(&pid.as_raw()));
                if own {
                    self.ended(i);
                }
                self.apply(i, Event::Exited { pid: pid.as_raw(), success });
            }
        }
    }

    fn answer(&mut self, request: ServiceRequest) -> Answer {
        let named =
            |me: &Self, name: &str| me.index(name).ok_or_else(|| Answer::refused(format!("no service {name:?}")));
        let result = match request {
            ServiceRequest::List => Ok(Answer::Services(self.services.iter().map(|s| self.describe(s)).collect())),
            ServiceRequest::Status { name: None } => {
                Err(Answer::refused("the node's status is the node loop's: name a service"))
            }
            ServiceRequest::Status { name: Some(name) } => named(self, &name).and_then(|i| {
                let service = self.services.get(i).ok_or_else(|| Answer::refused("gone"))?;
                Ok(Answer::Service(Box::new(self.describe(service))))
            }),
            ServiceRequest::Start { name } => named(self, &name).map(|i| self.act(i, Event::Start)),
            ServiceRequest::Stop { name } => named(self, &name).map(|i| self.act(i, Event::Stop)),
            ServiceRequest::Restart { name } => named(self, &name).map(|i| self.act(i, Event::Restart)),
            ServiceRequest::Kill { name, signal } => named(self, &name).and_then(|i| {
                let full = if signal.starts_with("SIG") { signal.clone() } else { format!("SIG{signal}") };
                let sig: Signal = full.parse().map_err(|_| Answer::refused(format!("unknown signal {signal:?}")))?;
                let pid = self.services.get(i).and_then(|s| s.state.pids().first().copied());
                let pid = pid.ok_or_else(|| Answer::refused("not running"))?;
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), sig);
                Ok(Answer::Done(Done::OK))
            }),
            ServiceRequest::Log { name, since } => {
                let mut lines = Vec::new();
                let mut next = since;
                for s in self.services.iter().filter(|s| name.as_ref().is_none_or(|n| *n == s.plan.name)) {
                    let (got, n) = s.ring.since(since);
                    lines.extend(got.into_iter().map(|(seq, line)| LogLine {
                        service: s.plan.name.clone(),
                        seq,
                        line,
                    }));
                    next = next.max(n);
                }
                lines.sort_by_key(|l| l.seq);
                Ok(Answer::Log(LogPage { lines, next }))
            }
            ServiceRequest::Shutdown => {
                self.shutting_down = true;
                Ok(Answer::Done(Done::OK))
            }
        };
        result.unwrap_or_else(|refused| refused)
    }

    fn act(&mut self, i: usize, event: Event) -> Answer {
        self.apply(i, event);
        Answer::Done(Done::OK)
    }

    fn describe(&self, s: &Service) -> ServiceRow {
        ServiceRow {
            name: s.plan.name.clone(),
            state: s.state.word().into(),
            pid: s.state.pids().first().copied(),
            starts: s.state.starts,
            failures: s.state.failures,
            after: s.plan.after.clone(),
            oneshot: s.plan.oneshot,
            restart: s.plan.restart,
            vm: s.plan.vm.as_ref().map(|vm| VmRow {
                vcpus: vm.vcpus,
                memory_mib: vm.memory_mib,
                root: vm.root.clone(),
                writable: vm.writable,
                machine: vm.machine.clone(),
                network: vm.network.clone(),
                console: self.opts.vm_run.join(&vm.name).join("console.sock"),
            }),
            capabilities: s.plan.confinement.capabilities.names().map(String::from).collect(),
            no_new_privs: s.plan.confinement.no_new_privs,
            namespaces: s.plan.confinement.namespaces.names().into_iter().map(String::from).collect(),
            cgroup: self.cgroups.as_ref().map(|cgroups| CgroupRow {
                usage: cgroups.usage(&s.plan.name),
                memory_max: s.plan.limits.memory_max,
                pids_max: s.plan.limits.pids_max,
                unenforced: s.unenforced.clone(),
            }),
        }
    }

    /// Supervises until shut down (a [`ServiceRequest::Shutdown`] or a message on `stop`), then stops
    /// every service in reverse dependency order and returns once all are down.
    pub fn run(&mut self, inputs: &Inputs) {
        let Inputs { children, calls, updates, stop } = inputs;
        // Here, on the supervisor's thread: the node's first manifest fetch does not wait for it.
        if !self.cgroups_set_up {
            self.cgroups_set_up = true;
            self.cgroups = cgroup::Cgroups::set_up(self.opts.cgroup_root)
                .map_err(|e| tracing::warn!("cgroups: {e}; services run in init's own cgroup, without limits"))
                .ok();
        }
        self.settle();
        loop {
            flist::faults::hit("init", "supervisor");
            let now = Instant::now();
            let wait = self
                .services
                .iter()
                .filter_map(|s| s.state.deadline())
                .min()
                // A periodic reap as well, should a SIGCHLD ever be missed.
                .map_or(Duration::from_secs(5), |d| d.saturating_duration_since(now).min(Duration::from_secs(5)));
            select! {
                recv(children) -> _ => self.reap(),
                recv(calls) -> call => if let Ok((request, reply)) = call {
                    let answer = self.answer(request);
                    let _ = reply.send(answer);
                },
                recv(updates) -> update => if let Ok(update) = update {
                    if !self.shutting_down {
                        self.begin_update(update);
                    }
                },
                recv(stop) -> _ => self.shutting_down = true,
                default(wait) => {}
            }
            // Exits can arrive while a message is handled; reaping costs one system call.
            self.reap();
            self.settle();
            if !self.shutting_down {
                self.finish_update();
                self.settle();
            }
            if self.shutting_down && self.services.iter().all(|s| s.state.is_down()) {
                if let Some(cgroups) = &self.cgroups {
                    cgroups.tear_down();
                }
                tracing::info!("every service is stopped");
                return;
            }
        }
    }
}

/// The order services are looked at in, by index: by CPU weight, most first (none set is the
/// kernel's default, 100), then as listed. Starting a service holds the supervisor until its exec
/// is done, which may mean reading its binary from a cold flist: services given a smaller share of
/// the CPU also wait for the others to start.
fn start_order(weights: impl Iterator<Item = Option<u64>>) -> Vec<usize> {
    let mut order: Vec<(usize, u64)> = weights.map(|w| w.unwrap_or(cgroup::DEFAULT_CPU_WEIGHT)).enumerate().collect();
    order.sort_by_key(|&(_, w)| std::cmp::Reverse(w));
    order.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod hostile_tests;

#[cfg(test)]
mod start_order_tests {
    #![allow(clippy::indexing_slicing)]
    use super::start_order;
    use proptest::prelude::*;

    proptest! {
        /// Every service once; a larger weight never after a smaller one; equal weights (unset
        /// counting as 100) as listed.
        #[test]
        fn by_weight_then_as_listed(weights in proptest::collection::vec(proptest::option::of(1u64..=10_000), 0..40)) {
            let order = start_order(weights.iter().copied());
            let mut seen = order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..weights.len()).collect::<Vec<_>>());
            let weight = |i: usize| weights[i].unwrap_or(100);
            for pair in order.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                prop_assert!(weight(a) > weight(b) || (weight(a) == weight(b) && a < b), "{order:?} for {weights:?}");
            }
        }
    }
}
