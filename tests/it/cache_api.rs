//! Behaviour of every public `Cache` method, listeners and the callback window, size limits,
//! type mismatches and independent nodes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mccache::unstable::FakeClock;
use mccache::{Cache, ChangeEvent, ChangeKind, Config, Error, Node, Origin};

fn config() -> Config {
    let mut c = Config::default();
    c.cache_ttl = 0.0;
    c.cache_max = 1000;
    c.callback_win = 2.0;
    c
}

fn fake(config: Config) -> (Node, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::new());
    (
        mccache::unstable::start_with_clock(config, clock.clone()).unwrap(),
        clock,
    )
}

fn recorder<K: mccache::CacheKey>(c: &Cache<K, String>) -> Arc<Mutex<Vec<ChangeEvent<K>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    c.on_change(move |e| s.lock().unwrap().push(e.clone()));
    seen
}

#[test]
fn insert_get_remove_and_counts() {
    let node = Node::start_local(config()).unwrap();
    let c: Cache<String, String> = node.cache("basic").unwrap();
    assert_eq!(c.name(), "basic");
    assert!(c.is_empty());
    assert_eq!(c.insert("a".into(), "1".into()).unwrap(), None);
    assert_eq!(c.insert("a".into(), "2".into()).unwrap(), Some("1".into()));
    assert_eq!(c.get(&"a".into()), Some("2".into()));
    assert_eq!(c.get(&"zz".into()), None);
    assert!(c.contains_key(&"a".into()));
    assert_eq!(c.len(), 1);
    assert_eq!(c.remove(&"a".into()).unwrap(), Some("2".into()));
    assert_eq!(c.remove(&"a".into()).unwrap(), None);
    let m = c.metrics();
    assert_eq!((m.lookups, m.hits, m.misses), (3, 2, 1));
    assert_eq!((m.inserts, m.updates, m.deletes), (1, 1, 1));
    assert_eq!((m.entries, m.bytes), (0, 0));
}

#[test]
fn add_replace_many_keys_entries() {
    let node = Node::start_local(config()).unwrap();
    let c: Cache<u32, String> = node.cache("ops").unwrap();
    assert!(c.add(1, "x".into()).unwrap());
    assert!(!c.add(1, "y".into()).unwrap());
    assert_eq!(c.get(&1), Some("x".into()));
    assert_eq!(c.replace(2, "no".into()).unwrap(), None);
    assert!(!c.contains_key(&2));
    assert_eq!(c.replace(1, "z".into()).unwrap(), Some("x".into()));
    c.insert_many((10..15).map(|i| (i, i.to_string()))).unwrap();
    assert_eq!(
        c.get_many(&[1, 2, 12]),
        vec![Some("z".into()), None, Some("12".into())]
    );
    let mut keys = c.keys();
    keys.sort();
    assert_eq!(keys, vec![1, 10, 11, 12, 13, 14]);
    let mut entries = c.entries();
    entries.sort();
    assert_eq!(entries[0], (1, "z".to_string()));
    assert_eq!(entries.len(), 6);
    c.clear();
    assert!(c.is_empty() && c.keys().is_empty());
    assert_eq!(c.metrics().deletes, 6);
}

#[test]
fn insert_many_refuses_the_whole_batch_when_one_pair_is_too_large() {
    let node = Node::start_local({
        let mut c = config();
        c.max_message_size = 100;
        c
    })
    .unwrap();
    let c: Cache<u32, String> = node.cache("batch").unwrap();
    let r = c.insert_many(vec![
        (1, "ok".into()),
        (2, "x".repeat(200)),
        (3, "ok".into()),
    ]);
    assert!(matches!(r, Err(Error::TooLarge { max: 100, .. })));
    assert!(c.is_empty());
}

#[test]
fn too_large_and_exceeds_cache_size_store_nothing() {
    let node = Node::start_local({
        let mut c = config();
        c.max_message_size = 64;
        c.cache_size = 1000;
        c
    })
    .unwrap();
    let c: Cache<u32, Vec<u8>> = node.cache("big").unwrap();
    c.insert(1, vec![1; 10]).unwrap();
    match c.insert(1, vec![7; 100]) {
        Err(Error::TooLarge { size, max }) => assert_eq!((size, max), (1 + 3 + 100, 64)),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.get(&1), Some(vec![1; 10]), "old value kept");
    let node = Node::start_local({
        let mut c = config();
        c.cache_size = 50;
        c
    })
    .unwrap();
    let c: Cache<u32, Vec<u8>> = node.cache("big").unwrap();
    assert!(matches!(
        c.insert(2, vec![0; 60]),
        Err(Error::ExceedsCacheSize { max: 50, .. })
    ));
    assert!(c.is_empty());
    assert_eq!(c.metrics().inserts, 0);
}

#[test]
fn ttl_per_cache_and_per_entry_and_touch() {
    let (node, clock) = fake({
        let mut c = config();
        c.cache_ttl = 10.0;
        c
    });
    let c: Cache<u32, String> = node.cache("ttl").unwrap();
    c.insert(1, "cache-ttl".into()).unwrap();
    c.insert_with_ttl(2, "short".into(), Duration::from_secs(2))
        .unwrap();
    c.insert_with_ttl(3, "forever".into(), Duration::ZERO)
        .unwrap();
    let md = c.metadata(&2).unwrap();
    assert_eq!(
        md.expires.unwrap().duration_since(md.written).unwrap(),
        Duration::from_secs(2)
    );
    assert!(c.metadata(&3).unwrap().expires.is_none());
    clock.advance(Duration::from_secs(3));
    assert_eq!(c.get(&2), None);
    assert!(!c.contains_key(&2));
    assert_eq!(c.len(), 2);
    assert!(c.touch(&1, Duration::from_secs(20)).unwrap());
    assert!(!c.touch(&2, Duration::from_secs(20)).unwrap());
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        c.get(&1),
        Some("cache-ttl".into()),
        "touch extended the TTL"
    );
    clock.advance(Duration::from_secs(10));
    let mut keys = c.keys();
    keys.sort();
    assert_eq!(keys, vec![3]);
    assert_eq!(c.entries(), vec![(3, "forever".to_string())]);
    assert_eq!(c.len(), 1);
    let m = c.metrics();
    assert_eq!(m.evictions_ttl, 2);
    assert_eq!(m.entries, 1);
}

#[test]
fn get_or_insert_with_loads_once_and_try_variant_propagates_errors() {
    let node = Node::start_local(config()).unwrap();
    let c: Cache<u32, String> = node.cache("load").unwrap();
    let mut calls = 0;
    assert_eq!(
        c.get_or_insert_with(1, || {
            calls += 1;
            "one".into()
        })
        .unwrap(),
        "one"
    );
    assert_eq!(c.get_or_insert_with(1, || unreachable!()).unwrap(), "one");
    assert_eq!(calls, 1);

    #[derive(Debug, PartialEq)]
    enum MyErr {
        Db,
        Cache(String),
    }
    impl From<Error> for MyErr {
        fn from(e: Error) -> Self {
            MyErr::Cache(e.to_string())
        }
    }
    assert_eq!(
        c.try_get_or_insert_with(2, || Err(MyErr::Db)),
        Err(MyErr::Db)
    );
    assert!(!c.contains_key(&2));
    assert_eq!(
        c.try_get_or_insert_with(2, || Ok::<_, MyErr>("two".into())),
        Ok("two".into())
    );
    assert_eq!(c.get(&2), Some("two".into()));
}

#[test]
fn compare_and_swap_and_versions() {
    let node = Node::start_local(config()).unwrap();
    let c: Cache<u32, String> = node.cache("cas").unwrap();
    let v1 = c.compare_and_swap(1, None, "a".into()).unwrap();
    assert!(matches!(
        c.compare_and_swap(1, None, "b".into()),
        Err(Error::VersionMismatch { expected: None, found: Some(f) }) if f == v1
    ));
    let v2 = c.compare_and_swap(1, Some(v1), "b".into()).unwrap();
    assert!(v2 > v1);
    assert_eq!(v2.node, node.id());
    assert_eq!(c.get_with_version(&1), Some(("b".into(), v2)));
    assert_eq!(c.metadata(&1).unwrap().version, v2);
    c.remove(&1).unwrap();
    assert!(matches!(
        c.compare_and_swap(1, Some(v2), "c".into()),
        Err(Error::VersionMismatch { found: None, .. })
    ));
    assert_eq!(c.get(&1), None);
}

#[test]
fn metadata_checksum_and_key_checksum() {
    let (node, clock) = fake(config());
    let c: Cache<String, String> = node.cache("md").unwrap();
    c.insert("k".into(), "value".into()).unwrap();
    let md = c.metadata(&"k".into()).unwrap();
    let vbytes = rmp_serde::to_vec(&"value".to_string()).unwrap();
    let kbytes = rmp_serde::to_vec(&"k".to_string()).unwrap();
    assert_eq!(md.size, (vbytes.len() + kbytes.len()) as u64);
    assert_eq!(md.crc, crc32fast::hash(&vbytes));
    assert!(md.last_lookup.is_none(), "metadata is not a lookup");
    clock.advance(Duration::from_millis(1500));
    c.get(&"k".into());
    let md2 = c.metadata(&"k".into()).unwrap();
    assert_eq!(
        md2.last_lookup
            .unwrap()
            .duration_since(md2.written)
            .unwrap(),
        Duration::from_millis(1500)
    );
    let mut h = crc32fast::Hasher::new();
    h.update(&kbytes);
    h.update(&vbytes);
    h.update(&md.version.to_bytes());
    let crc = h.finalize();
    assert_eq!(c.key_checksum(&"k".into()), Some(crc));
    assert_ne!(c.checksum(), 0);
    c.remove(&"k".into()).unwrap();
    assert_eq!(
        c.checksum(),
        0,
        "incremental checksum returns to the empty value"
    );
    assert_eq!(c.key_checksum(&"k".into()), None);
}

#[test]
fn listeners_see_every_kind_with_local_origin() {
    let (node, clock) = fake({
        let mut c = config();
        c.cache_max = 2;
        c
    });
    let c: Cache<u32, String> = node.cache("events").unwrap();
    let seen = recorder(&c);
    c.insert(1, "a".into()).unwrap();
    c.insert(1, "b".into()).unwrap();
    c.remove(&1).unwrap();
    c.insert_with_ttl(2, "t".into(), Duration::from_secs(1))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(c.len(), 0); // sweeps the expired entry
    c.insert(3, "x".into()).unwrap();
    c.insert(4, "y".into()).unwrap();
    c.insert(5, "z".into()).unwrap(); // evicts 3 or 4 first, to make room
    c.clear();
    let kinds: Vec<(ChangeKind, Origin)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.origin))
        .collect();
    use ChangeKind::*;
    let expect = [
        Insert, Update, Remove, Insert, Expire, Insert, Insert, Evict, Insert, Clear, Clear,
    ];
    assert_eq!(kinds.iter().map(|k| k.0).collect::<Vec<_>>(), expect);
    assert!(kinds.iter().all(|k| k.1 == Origin::Local));
    let evicted = seen.lock().unwrap()[7].key;
    assert!(evicted == 3 || evicted == 4);
}

#[test]
fn callback_window_flags_changes_to_recently_read_keys_only() {
    let (node, clock) = fake(config()); // callback_win = 2 s
    let c: Cache<u32, String> = node.cache("win").unwrap();
    let seen = recorder(&c);
    c.insert(1, "a".into()).unwrap();
    c.insert(1, "b".into()).unwrap(); // never read: not flagged
    c.get(&1);
    clock.advance(Duration::from_millis(1500));
    c.insert(1, "c".into()).unwrap(); // read 1.5 s ago: flagged
    clock.advance(Duration::from_millis(3000));
    c.insert(1, "d".into()).unwrap(); // read 4.5 s ago: not flagged
    c.contains_key(&1);
    c.remove(&1).unwrap(); // flagged
    c.get_or_insert_with(2, || "x".into()).unwrap(); // a miss, then insert: not flagged
    c.get_many(&[2]);
    clock.advance(Duration::from_millis(2000));
    c.insert(2, "y".into()).unwrap(); // exactly at the window edge: flagged
    let flags: Vec<(ChangeKind, bool)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.in_callback_window))
        .collect();
    use ChangeKind::*;
    assert_eq!(
        flags,
        vec![
            (Insert, false),
            (Update, false),
            (Update, true),
            (Update, false),
            (Remove, true),
            (Insert, false),
            (Update, true)
        ]
    );

    // callback_win = 0 disables the flag.
    let (node, _) = fake({
        let mut c = config();
        c.callback_win = 0.0;
        c
    });
    let c: Cache<u32, String> = node.cache("nowin").unwrap();
    let seen = recorder(&c);
    c.insert(1, "a".into()).unwrap();
    c.get(&1);
    c.insert(1, "b".into()).unwrap();
    assert!(seen.lock().unwrap().iter().all(|e| !e.in_callback_window));
}

#[test]
fn listeners_can_call_the_cache_and_be_removed() {
    let node = Node::start_local(config()).unwrap();
    let c: Cache<u32, String> = node.cache("reentrant").unwrap();
    let c2 = c.clone();
    let id = c.on_change(move |e| {
        if e.kind == ChangeKind::Insert && e.key < 3 {
            // Chain an insert from inside a listener: no deadlock.
            c2.insert(e.key + 1, "chained".into()).unwrap();
        }
    });
    c.insert(0, "start".into()).unwrap();
    assert_eq!(c.len(), 4);
    assert!(c.remove_listener(id));
    assert!(!c.remove_listener(id));
    c.insert(0, "again".into()).unwrap();
    c.insert(10, "no listener".into()).unwrap();
    assert_eq!(c.len(), 5);
}

#[test]
fn reopening_with_other_types_is_a_type_mismatch() {
    let node = Node::start_local(config()).unwrap();
    let a: Cache<u32, String> = node.cache("typed").unwrap();
    a.insert(1, "x".into()).unwrap();
    let same: Cache<u32, String> = node.cache("typed").unwrap();
    assert_eq!(
        same.get(&1),
        Some("x".into()),
        "same name and types share entries"
    );
    match node.cache::<String, String>("typed") {
        Err(Error::TypeMismatch {
            name,
            existing,
            requested,
        }) => {
            assert_eq!(name, "typed");
            assert!(existing.contains("u32") && existing.contains("String"));
            assert!(requested.starts_with("alloc::string::String"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_nodes_in_one_process_are_independent() {
    let n1 = Node::start_local(config()).unwrap();
    let n2 = Node::start_local(config()).unwrap();
    assert_ne!(n1.id(), n2.id());
    let a: Cache<u32, String> = n1.cache("shared-name").unwrap();
    let b: Cache<String, u64> = n2.cache("shared-name").unwrap();
    a.insert(1, "one".into()).unwrap();
    b.insert("one".into(), 1).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!(n1.cache_names(), vec!["shared-name".to_string()]);
    n1.shutdown();
    assert!(matches!(
        n1.cache::<u32, String>("other"),
        Err(Error::Shutdown)
    ));
    assert!(n2.cache::<u32, String>("other").is_ok());
    assert_eq!(n2.config().cache_max, 1000);
}

#[test]
fn per_cache_overrides_apply() {
    let mut cfg = config();
    cfg.caches.entry("small".into()).or_default().cache_max = Some(3);
    let node = Node::start_local(cfg).unwrap();
    let small: Cache<u32, u32> = node.cache("small").unwrap();
    let big: Cache<u32, u32> = node.cache("big").unwrap();
    for i in 0..10 {
        small.insert(i, i).unwrap();
        big.insert(i, i).unwrap();
    }
    assert_eq!(small.len(), 3);
    assert_eq!(big.len(), 10);
    assert_eq!(small.metrics().evictions_capacity, 7);
}

#[test]
fn default_node_functions() {
    // The default node is a cluster node: keep it on loopback, on a group of its own.
    let mut config = Config::default();
    config.interface = std::net::Ipv4Addr::LOCALHOST;
    config.multicast_ip = std::net::Ipv4Addr::new(239, 255, 101, 1);
    config.multicast_port = 47101;
    config.cluster_name = "t9-cache-api".into();
    config.crypto_key = Some(mccache::generate_key());
    let node = mccache::init(config.clone()).unwrap();
    assert_eq!(mccache::init(config.clone()).unwrap().id(), node.id());
    let mut other = config;
    other.cache_max = 7;
    let err = mccache::init(other).unwrap_err();
    assert!(
        matches!(&err, Error::DefaultNodeConfigured { keys } if keys == &["cache_max".to_string()]),
        "{err}"
    );
    assert!(node.is_networked());
    let c = mccache::get_cache::<String, String>("default-api");
    c.insert("k".into(), "v".into()).unwrap();
    assert!(matches!(
        mccache::try_get_cache::<u32, u32>("default-api"),
        Err(Error::TypeMismatch { .. })
    ));
    let m = mccache::get_local_metrics("default-api").unwrap();
    assert_eq!(m.entries, 1);
    assert!(mccache::get_local_metrics("never-opened").is_none());
    assert_eq!(
        mccache::get_local_checksum::<String>("default-api", None),
        Some(c.checksum())
    );
    assert_eq!(
        mccache::get_local_checksum("default-api", Some(&"k".to_string())),
        c.key_checksum(&"k".into()).map(u64::from)
    );
    assert_eq!(
        mccache::get_local_checksum("default-api", Some(&"nope".to_string())),
        None
    );
}

/// A cache handle outlives its node (say, during an application's shutdown): with no
/// housekeeper refreshing the clock's coarse reading any more, an entry still expires on time.
#[test]
fn entries_expire_on_time_in_a_cache_whose_node_has_stopped() {
    let mut cfg = config();
    cfg.cache_ttl = 1.3;
    let node = Node::start_local(cfg).unwrap();
    let c: Cache<u32, u32> = node.cache("after-stop").unwrap();
    c.insert(1, 1).unwrap();
    let written = std::time::Instant::now();
    drop(node);
    assert_eq!(c.get(&1), Some(1));
    let expired = written + Duration::from_millis(1_350);
    while std::time::Instant::now() < expired {
        std::thread::sleep(expired - std::time::Instant::now());
    }
    for _ in 0..10 {
        assert_eq!(c.get(&1), None, "an expired entry was returned");
    }
}
