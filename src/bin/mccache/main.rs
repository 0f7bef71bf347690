//! `mccache`: an in-process cluster demo, a stress node for multi-process and multi-container
//! runs, the run report, and network diagnostics.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod check_peers;
mod demo;
mod node;
mod progress;
mod report;
mod result;
mod route;
mod workload;

/// mccache: a cluster-aware in-process cache replicated over encrypted UDP multicast.
#[derive(Parser, Debug)]
#[command(name = "mccache", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start N nodes in this process on loopback, run a mixed workload, show convergence.
    Demo(demo::DemoArgs),
    /// Run one node with the stress workload and write a JSON result (config from MCCACHE_*).
    Node(node::NodeArgs),
    /// Print the table, the coherence verdicts and a chart for a directory of node results.
    Report(report::ReportArgs),
    /// Print the path MTU to an IPv4 address and the matching `packet_mtu`.
    Mtu {
        /// The peer's IPv4 address.
        ip: IpAddr,
    },
    /// Print the number of IP hops to an IPv4 address (a value for `multicast_hops`).
    Hops {
        /// The peer's IPv4 address.
        ip: IpAddr,
    },
    /// Print a new random crypto key (base64 of 32 bytes) for `crypto_key`.
    Keygen,
    /// Resolve the unicast `peers` (config from mccache.toml / MCCACHE_*) and probe each
    /// address: answers and round-trip time; exit 1 if a peer has no answering address.
    CheckPeers(check_peers::CheckPeersArgs),
    /// Check that a multicast group loops back on an interface; exit 1 if it does not.
    CheckMulticast {
        /// Group and port (default: a random 239.255.x.y and port).
        #[arg(long)]
        group: Option<SocketAddrV4>,
        /// Interface address to join and send on.
        #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
        interface: Ipv4Addr,
        /// Seconds to wait for the token.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
}

/// Sends the library's `tracing` events to stderr: warnings and errors by default, or what
/// `RUST_LOG` selects (for example `RUST_LOG=mccache=debug`).
fn install_subscriber() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_subscriber();
    let outcome = match cli.command {
        Command::Demo(a) => demo::main(a).map(|()| true),
        Command::Node(a) => node::main(a).map(|()| true),
        Command::Report(a) => report::main(a),
        Command::Mtu { ip } => mccache::get_mtu(ip)
            .map(|mtu| {
                println!("MTU: {mtu} (packet_mtu = {})", mtu.saturating_sub(28));
                true
            })
            .map_err(|e| e.to_string()),
        Command::Hops { ip } => mccache::get_hops(ip)
            .map(|hops| {
                println!("Hops: {hops}");
                true
            })
            .map_err(|e| e.to_string()),
        Command::Keygen => {
            println!("{}", mccache::generate_key());
            Ok(true)
        }
        Command::CheckPeers(a) => check_peers::main(a),
        Command::CheckMulticast {
            group,
            interface,
            timeout,
        } => check_multicast(group, interface, timeout),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mccache: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn check_multicast(
    group: Option<SocketAddrV4>,
    interface: Ipv4Addr,
    timeout: f64,
) -> Result<bool, String> {
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(format!("--timeout must be > 0 seconds, got {timeout}"));
    }
    let group = group.unwrap_or_else(|| {
        SocketAddrV4::new(
            Ipv4Addr::new(
                239,
                255,
                rand::random_range(0..=255),
                rand::random_range(1..=254),
            ),
            rand::random_range(40_000..60_000),
        )
    });
    let check = mccache::check_multicast(group, interface, Duration::from_secs_f64(timeout))
        .map_err(|e| e.to_string())?;
    if check.received {
        println!(
            "multicast OK: {} on {} looped back in {:.1} ms ({} sent)",
            check.group,
            check.interface,
            check.elapsed.as_secs_f64() * 1e3,
            check.sent
        );
    } else {
        println!(
            "multicast FAILED: nothing came back from {} on {} within {:.1} s ({} sent)",
            check.group,
            check.interface,
            check.elapsed.as_secs_f64(),
            check.sent
        );
    }
    Ok(check.received)
}

/// An error and its sources, `error: source: source…` (mccache's errors keep the error
/// underneath, such as the TOML syntax error of a configuration file, as their source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
