//! `init net`: the network brought up once, as the boot step does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct NetArgs {
    /// `dhcp` (every NIC), `static:[IFACE,]ADDR/PREFIX[,GATEWAY[,DNS...]]` or `none`.
    #[arg(long, default_value = "dhcp")]
    config: flint_init::net::NetConfig,
    /// Where the DNS servers go.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv: PathBuf,
    /// Seconds to wait for carrier on each NIC.
    #[arg(long, default_value_t = 5)]
    carrier_wait: u64,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
    /// Then renew every DHCP lease once, at once (as PID 1 does at T1).
    #[arg(long)]
    renew: bool,
}

pub fn net(a: NetArgs) -> anyhow::Result<ExitCode> {
    let mut uplinks = flint_init::net::bring_up(&a.config, &a.resolv, Duration::from_secs(a.carrier_wait))
        .map_err(anyhow::Error::msg)?;
    let rows: Vec<serde_json::Value> = uplinks
        .iter()
        .map(|u| {
            serde_json::json!({
                "iface": u.link.name, "address": u.lease.address, "prefix": u.lease.prefix,
                "gateway": u.lease.router, "dns": u.lease.dns, "server": u.lease.server,
                "lease_secs": u.lease.valid.as_secs(), "preferred": u.preferred,
            })
        })
        .collect();
    if a.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for u in &uplinks {
            let mark = if u.preferred { " (preferred)" } else { "" };
            println!("{}: {}/{} gateway {:?}{mark}", u.link.name, u.lease.address, u.lease.prefix, u.lease.router);
        }
    }
    if a.renew {
        for (i, u) in uplinks.iter_mut().enumerate().filter(|(_, u)| !u.lease.is_static()) {
            flint_init::net::renew(u, i, true).map_err(|e| anyhow::anyhow!("{}: {e}", u.link.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
