//! Discovery for the unicast transport: the `peers` entries (IPv4 addresses or DNS names) are
//! resolved at start and again every `discovery_interval`, so a Kubernetes headless Service or
//! a docker compose service name, which answer with one address per replica, find every node,
//! including the ones started later.
//!
//! Resolution goes through the system resolver (`getaddrinfo`, on tokio's blocking pool), so
//! `/etc/hosts`, the cluster DNS and `nsswitch.conf` all apply. Nothing is sent to resolved
//! addresses here: the transport sends them the protocol's own datagrams, nothing else.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::peer_with_port;

/// How long one entry's resolution may take before it counts as failed.
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of resolving one `peers` entry.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The entry with its port filled in (`host:port`).
    pub entry: String,
    /// Its IPv4 addresses, sorted, or why there are none.
    pub addrs: io::Result<Vec<SocketAddr>>,
}

/// The `peers` entries with their ports filled in (`default_port` where an entry has none).
pub(crate) fn entries(peers: &[String], default_port: u16) -> Vec<String> {
    let mut v: Vec<String> = peers
        .iter()
        .map(|p| peer_with_port(p, default_port))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Resolves every entry concurrently (each on tokio's blocking pool), IPv4 addresses only.
/// The answer keeps the order of `entries`.
pub(crate) async fn resolve_all(entries: &[String]) -> Vec<Resolved> {
    let mut set = tokio::task::JoinSet::new();
    for (i, e) in entries.iter().enumerate() {
        let e = e.clone();
        set.spawn(async move { (i, resolve_one(e).await) });
    }
    let mut out: Vec<Option<Resolved>> = entries.iter().map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, r)) = done {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .zip(entries)
        .map(|(r, e)| {
            r.unwrap_or_else(|| Resolved {
                entry: e.clone(),
                addrs: Err(io::Error::other("resolver task failed")),
            })
        })
        .collect()
}

async fn resolve_one(entry: String) -> Resolved {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(entry.as_str()));
    let addrs = match lookup.await {
        Ok(Ok(it)) => {
            let mut v: Vec<SocketAddr> = it.filter(SocketAddr::is_ipv4).collect();
            v.sort();
            v.dedup();
            if v.is_empty() {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no IPv4 address (mccache speaks IPv4)",
                ))
            } else {
                Ok(v)
            }
        }
        Ok(Err(err)) => Err(err),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {RESOLVE_TIMEOUT:?}"),
        )),
    };
    Resolved { entry, addrs }
}

/// Resolves every entry on the calling thread (for callers outside a runtime).
pub(crate) fn resolve_blocking(entries: &[String]) -> Vec<Resolved> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(resolve_all(entries)),
        Err(e) => entries
            .iter()
            .map(|entry| Resolved {
                entry: entry.clone(),
                addrs: Err(io::Error::new(e.kind(), e.to_string())),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_get_ports_and_literals_resolve_without_dns() {
        let e = entries(&["127.0.0.1".into(), "127.0.0.1:47299".into()], 47298);
        assert_eq!(e, vec!["127.0.0.1:47298", "127.0.0.1:47299"]);
        let r = resolve_blocking(&e);
        assert_eq!(
            r[0].addrs.as_ref().unwrap(),
            &vec!["127.0.0.1:47298".parse().unwrap()]
        );
    }
}
