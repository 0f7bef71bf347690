//! Metrics through the `metrics` facade, scraped over HTTP on loopback from a Prometheus
//! exporter the application installs (as a tokio service would), and from `mccache node
//! --metrics-addr`; parsed with a Prometheus text parser. Also the housekeeper's periodic
//! summary as `tracing` events.
#![cfg(feature = "metrics")]

use crate::support::cluster as cluster_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_support::{KEY, wait_until};
use mccache::{Config, Error, Node};
use prometheus_parse::{Scrape, Value};

/// The shared loopback config, with a name and housekeeper summaries every 0.2 s.
fn loopback(group: u8, port: u16, name: &str) -> Config {
    let mut c = cluster_support::config(group, port);
    c.metrics_log_interval = 0.2;
    c.node_name = Some(name.to_string());
    c
}

/// GET /metrics from `addr`; `None` if nothing answers yet.
fn scrape(addr: SocketAddr) -> Option<Scrape> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Some(Scrape::parse(lines).expect("valid Prometheus text"))
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokio_service_scrapes_prometheus_text_and_logs_show_summaries() {
    // It installs the process's metrics recorder and tracing subscriber.
    if crate::support::in_own_process(
        module_path!(),
        "a_tokio_service_scrapes_prometheus_text_and_logs_show_summaries",
    ) {
        return;
    }
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("mccache::metrics=info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let addr: SocketAddr = "127.0.0.1:47580".parse().unwrap();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .unwrap();

    let a = Node::start(loopback(2, 47502, "t14-a")).unwrap();
    let b = Node::start(loopback(2, 47502, "t14-b")).unwrap();
    assert!(a.wait_ready_async(Duration::from_secs(10)).await.is_ready());
    assert!(b.wait_ready_async(Duration::from_secs(10)).await.is_ready());
    let on_b = b.cache::<u64, String>("users").unwrap();
    let users = a
        .cache_builder::<u64, String>("users")
        .max_entries(2)
        .build()
        .unwrap();
    for id in 0..3u64 {
        users
            .get_or_load_async(id, |id| async move { Ok::<_, Error>(format!("user {id}")) })
            .await
            .unwrap();
    }
    // 3 misses and 3 loads, 1 capacity eviction (never the key being inserted), then 1 hit.
    assert!(users.get(&2).is_some());
    let failed = users
        .get_or_load_async(9, |_| async {
            Err::<String, _>(Error::Diagnostic("db down".into()))
        })
        .await;
    assert!(failed.is_err());

    let node_a = [("node", "t14-a"), ("cache", "users")];
    let mut last = None;
    let ok = wait_until(Duration::from_secs(20), || {
        last = scrape(addr);
        last.as_ref().is_some_and(|s| {
            value(s, "mccache_cache_hits_total", &node_a) == Some(1.0)
                && value(s, "mccache_net_members", &[("node", "t14-a")]) == Some(1.0)
                && value(
                    s,
                    "mccache_cache_entries",
                    &[("node", "t14-b"), ("cache", "users")],
                ) == Some(3.0)
        })
    });
    let s = last.expect("the exporter never answered");
    assert!(
        ok,
        "scrape never showed the expected figures: {:#?}",
        s.samples
    );
    assert_eq!(value(&s, "mccache_cache_misses_total", &node_a), Some(4.0));
    assert_eq!(value(&s, "mccache_cache_loads_total", &node_a), Some(3.0));
    assert_eq!(
        value(&s, "mccache_cache_load_failures_total", &node_a),
        Some(1.0)
    );
    assert_eq!(value(&s, "mccache_cache_entries", &node_a), Some(2.0));
    let evict = [
        ("node", "t14-a"),
        ("cache", "users"),
        ("reason", "capacity"),
    ];
    assert_eq!(
        value(&s, "mccache_cache_evictions_total", &evict),
        Some(1.0)
    );
    assert!(value(&s, "mccache_net_datagrams_sent_total", &[("node", "t14-a")]).unwrap() > 0.0);
    // Of the changes sent, those the writing thread sent itself (exported even when zero).
    let express = value(
        &s,
        "mccache_net_express_changes_total",
        &[("node", "t14-a")],
    );
    let sent = value(&s, "mccache_net_changes_sent_total", &[("node", "t14-a")]);
    assert!(
        express.is_some_and(|e| sent.is_some_and(|s| e <= s)),
        "{express:?} of {sent:?}"
    );
    // Exported even when zero (these few writes never form a batch worth thinning).
    assert_eq!(
        value(
            &s,
            "mccache_net_changes_superseded_total",
            &[("node", "t14-a")]
        ),
        Some(0.0)
    );
    assert!(
        value(
            &s,
            "mccache_net_changes_applied_total",
            &[("node", "t14-b")]
        )
        .unwrap()
            >= 3.0
    );
    let p99 = [("node", "t14-b"), ("quantile", "0.99")];
    assert!(value(&s, "mccache_net_apply_lag_seconds", &p99).is_some());
    // Exported even when zero (whether a repair was coalesced or the node stood still depends
    // on the machine's load).
    for name in [
        "mccache_net_repairs_coalesced_total",
        "mccache_net_pushes_deferred_total",
        "mccache_net_keys_listed_total",
        "mccache_net_stalls_total",
        "mccache_net_peers_failed_total",
    ] {
        assert!(value(&s, name, &[("node", "t14-a")]).is_some(), "{name}");
    }
    // Prometheus conventions: counters are typed as counters and end in _total; HELP is set.
    let hits = s.docs.get("mccache_cache_hits_total").expect("HELP line");
    assert!(hits.contains("live entry"), "{hits}");
    for sample in &s.samples {
        assert!(sample.metric.starts_with("mccache_"), "{}", sample.metric);
        if let Value::Counter(_) = sample.value {
            assert!(sample.metric.ends_with("_total"), "{}", sample.metric);
        }
    }

    // The housekeeper's summaries (metrics_log_interval = 0.2 s): both nodes' lines, and A's
    // cache line once it counts the three loads (an earlier pass may have logged it before).
    assert!(wait_until(Duration::from_secs(10), || {
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
        text.contains("cache metrics")
            && text.contains("cache=users")
            && text.contains("network metrics")
            && text.contains("node=\"t14-b\"")
            && text.lines().any(|l| {
                l.contains("cache metrics") && l.contains("t14-a") && l.contains("loads=3")
            })
    }));
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("cache metrics") && l.contains("t14-a") && l.contains("loads=3"))
        .unwrap_or_else(|| panic!("no summary with the loads: {text}"));
    assert!(line.contains("load_failures=1"), "{line}");
    assert!(line.contains("INFO"), "{line}");
    assert_eq!(
        on_b.len(),
        3,
        "evictions are local; the writes all replicated"
    );
    a.shutdown();
    b.shutdown();
}

/// `mccache node --metrics-addr` serves Prometheus text while it runs.
#[cfg(feature = "cli")]
#[test]
fn mccache_node_serves_metrics() {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let addr: SocketAddr = "127.0.0.1:47581".parse().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mccache"))
        .args([
            "node",
            "--metrics-addr",
            "127.0.0.1:47581",
            "--duration",
            "60",
        ])
        .args([
            "--aperture",
            "0.01",
            "--quiesce-timeout",
            "1",
            "--out",
            "/dev/null",
        ])
        .env("MCCACHE_CONFIG", "")
        .env("MCCACHE_INTERFACE", "127.0.0.1")
        .env("MCCACHE_MULTICAST_IP", "239.255.105.3")
        .env("MCCACHE_MULTICAST_PORT", "47503")
        .env("MCCACHE_CLUSTER_NAME", "t14-cli")
        .env("MCCACHE_NODE_NAME", "t14-cli-node")
        .env("MCCACHE_CRYPTO_KEY", KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let labels = [("node", "t14-cli-node"), ("cache", "stress")];
    let mut last = None;
    let node = [("node", "t14-cli-node")];
    // The workload is paced (`--aperture`), so its writes find the network thread idle and
    // leave from the writing thread itself (the express lane).
    let ok = wait_until(Duration::from_secs(30), || {
        last = scrape(addr);
        last.as_ref().is_some_and(|s| {
            value(s, "mccache_cache_inserts_total", &labels).is_some_and(|v| v > 0.0)
                && value(s, "mccache_net_express_changes_total", &node).is_some_and(|v| v > 0.0)
        })
    });
    assert!(
        ok,
        "no inserts, or none sent by the writer, scraped: {:?}",
        last.map(|s| s.samples.len())
    );
    let s = last.unwrap();
    assert!(
        value(
            &s,
            "mccache_net_datagrams_sent_total",
            &[("node", "t14-cli-node")]
        )
        .is_some()
    );
}
