//! A local tour of mccache: insert and read, TTL expiry, eviction, listeners, metrics and the
//! checksum. Run with `cargo run --release --example demo`.

use std::time::Duration;

use mccache::{Cache, Config, Node};

fn main() -> mccache::Result<()> {
    let mut config = Config::default();
    config.cache_ttl = 0.0;
    config.cache_max = 3;
    config.callback_win = 1.0;
    config.daemon_sleep = 0.1;
    let node = Node::start_local(config)?;
    println!("node {} started (local only)", node.id());

    let cities: Cache<String, u32> = node.cache("population")?;
    cities.on_change(|e| {
        println!(
            "  event: {:?} {:?} (origin {:?}, read within callback window: {})",
            e.kind, e.key, e.origin, e.in_callback_window
        );
    });

    println!("-- insert and read");
    cities.insert("Lisbon".into(), 545_000)?;
    cities.insert("Porto".into(), 232_000)?;
    println!("Lisbon -> {:?}", cities.get(&"Lisbon".to_string()));
    cities.insert("Lisbon".into(), 548_000)?; // read just before: flagged
    let md = cities
        .metadata(&"Lisbon".to_string())
        .expect("just written");
    println!(
        "Lisbon metadata: version {}, {} bytes, crc {:08x}",
        md.version, md.size, md.crc
    );

    println!("-- TTL: Braga lives 300 ms");
    cities.insert_with_ttl("Braga".into(), 193_000, Duration::from_millis(300))?;
    println!("Braga now     -> {:?}", cities.get(&"Braga".to_string()));
    std::thread::sleep(Duration::from_millis(450));
    println!("Braga later   -> {:?}", cities.get(&"Braga".to_string()));

    println!("-- eviction: cache_max = 3");
    // CLOCK: entries read or written since the hand last passed them get a second chance.
    cities.get(&"Lisbon".to_string());
    for (name, pop) in [("Faro", 61_000), ("Coimbra", 106_000), ("Aveiro", 80_000)] {
        cities.insert(name.into(), pop)?;
    }
    let mut keys = cities.keys();
    keys.sort();
    println!("live keys: {keys:?}");

    println!("-- single-flight loader");
    let v = cities.get_or_insert_with("Evora".into(), || {
        println!("  (loading Evora)");
        53_000
    })?;
    println!("Evora -> {v}");

    let m = cities.metrics();
    println!("-- metrics");
    println!(
        "lookups {} hits {} misses {} inserts {} updates {} deletes {}",
        m.lookups, m.hits, m.misses, m.inserts, m.updates, m.deletes
    );
    println!(
        "evictions: capacity {} bytes {} ttl {}; entries {} bytes {}; spikes {} (mean gap {:.4} s)",
        m.evictions_capacity,
        m.evictions_bytes,
        m.evictions_ttl,
        m.entries,
        m.bytes,
        m.spikes,
        m.spike_interval
    );
    println!("checksum {:016x}", cities.checksum());

    // The checksum is order independent: the same entries at the same versions give the same
    // sum. Clearing brings it back to zero.
    cities.clear();
    println!(
        "after clear: {} entries, checksum {:016x}",
        cities.len(),
        cities.checksum()
    );
    node.shutdown();
    Ok(())
}
