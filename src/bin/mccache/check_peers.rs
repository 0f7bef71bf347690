//! `mccache check-peers`: resolve the unicast `peers` of the configuration (`mccache.toml`,
//! `MCCACHE_*`) and probe each address with a sealed cluster query.

use std::time::Duration;

use clap::Args;

/// Arguments of `mccache check-peers`.
#[derive(Args, Debug)]
pub struct CheckPeersArgs {
    /// Seconds to wait for the answers.
    #[arg(long, default_value_t = 2.0)]
    pub timeout: f64,
}

/// Prints one line per resolved address; true when every entry has an address that answers.
pub fn main(args: CheckPeersArgs) -> Result<bool, String> {
    let config = mccache::Config::load().map_err(|e| crate::chain(&e))?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .map_err(|_| format!("--timeout: {} is not a number of seconds", args.timeout))?;
    let checks = mccache::check_peers(&config, timeout).map_err(|e| e.to_string())?;
    println!(
        "{:<40} {:<22} {:<8} {:>10}  node",
        "peer", "address", "answers", "rtt"
    );
    let mut all = true;
    for c in &checks {
        if let Some(e) = &c.error {
            println!("{:<40} {:<22} {:<8} {:>10}  ({e})", c.entry, "-", "no", "-");
            all = false;
            continue;
        }
        let mut any = false;
        for a in &c.addresses {
            any |= a.answered();
            let rtt = a
                .rtt
                .map(|d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into());
            let node = a.node.map(|n| n.to_string()).unwrap_or_else(|| {
                "no answer: nothing listening, a firewall, or another key/cluster_name".into()
            });
            let yes = if a.answered() { "yes" } else { "no" };
            println!(
                "{:<40} {:<22} {:<8} {:>10}  {node}",
                c.entry,
                a.addr.to_string(),
                yes,
                rtt
            );
        }
        all &= any;
    }
    Ok(all)
}
