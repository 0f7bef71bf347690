//! The per-cache builder: merge with the configuration, conflicts with an open cache, bad
//! settings named. Only the public API, configuration from TOML and `MCCACHE_*`-style keys.

use std::time::Duration;

use mccache::{CacheMode, Config, Error, Node};

fn node(toml: &str) -> Node {
    Node::start_local(Config::from_toml_str(toml).unwrap()).unwrap()
}

#[test]
fn config_file_values_apply_unless_the_builder_sets_them() {
    let n = node(
        r#"
        cache_ttl = 100
        cache_max = 1000
        [caches.users]
        cache_max = 50
        cache_size = 4096
        cache_mode = 2
        callback_win = 3
        "#,
    );
    let users = n
        .cache_builder::<u64, String>("users")
        .ttl(Duration::from_secs(7))
        .mode(CacheMode::Replicate)
        .build()
        .unwrap();
    let c = users.config();
    assert_eq!(
        c.ttl,
        Some(Duration::from_secs(7)),
        "builder beats node-wide value"
    );
    assert_eq!(c.mode, CacheMode::Replicate, "builder beats [caches.users]");
    assert_eq!(
        c.max_entries, 50,
        "[caches.users] kept where the builder is silent"
    );
    assert_eq!(c.max_bytes, 4096);
    assert_eq!(c.callback_win, Duration::from_secs(3));
    // Another cache: node-wide values, builder on top.
    let other = n
        .cache_builder::<u64, u64>("other")
        .max_entries(5)
        .max_bytes(1 << 20)
        .callback_window(Duration::ZERO)
        .ttl(Duration::ZERO)
        .build()
        .unwrap();
    let c = other.config();
    assert_eq!((c.max_entries, c.max_bytes, c.ttl), (5, 1 << 20, None));
    assert_eq!(c.callback_win, Duration::ZERO);
    // The caps really apply.
    for i in 0..20 {
        other.insert(i, i).unwrap();
    }
    assert_eq!(other.len(), 5);
}

#[test]
fn reopening_with_the_same_settings_returns_the_cache_and_conflicts_are_named() {
    let n = node("[caches.s]\ncache_max = 10");
    let a = n
        .cache_builder::<u32, u32>("s")
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    a.insert(1, 1).unwrap();
    // Same settings (and settings it does not mention) → the same cache.
    let b = n
        .cache_builder::<u32, u32>("s")
        .ttl(Duration::from_secs(30))
        .max_entries(10)
        .build()
        .unwrap();
    assert_eq!(b.get(&1), Some(1));
    // Plain open returns the open cache as it is.
    assert_eq!(
        n.cache::<u32, u32>("s").unwrap().config().ttl,
        Some(Duration::from_secs(30))
    );

    type Opened = Result<mccache::Cache<u32, u32>, Error>;
    let cases: Vec<(&str, Opened)> = vec![
        (
            "ttl",
            n.cache_builder("s").ttl(Duration::from_secs(31)).build(),
        ),
        ("max_entries", n.cache_builder("s").max_entries(11).build()),
        ("max_bytes", n.cache_builder("s").max_bytes(12).build()),
        (
            "mode",
            n.cache_builder("s").mode(CacheMode::Invalidate).build(),
        ),
        (
            "callback_window",
            n.cache_builder("s")
                .callback_window(Duration::from_secs(9))
                .build(),
        ),
        (
            "fresh_for",
            n.cache_builder("s")
                .fresh_for(Duration::from_secs(1))
                .build(),
        ),
    ];
    for (setting, r) in cases {
        match r {
            Err(Error::CacheConflict {
                name, setting: s, ..
            }) => {
                assert_eq!((name.as_str(), s), ("s", setting));
            }
            other => panic!("{setting}: expected a conflict, got {other:?}"),
        }
    }
    let msg = n
        .cache_builder::<u32, u32>("s")
        .max_entries(11)
        .build()
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        r#"cache "s" is already open with max_entries = 10, not 11"#
    );
    // Other types: the type error, not a settings error.
    assert!(matches!(
        n.cache_builder::<String, u32>("s").build(),
        Err(Error::TypeMismatch { .. })
    ));
}

#[test]
fn bad_builder_settings_name_the_setting() {
    let n = node("cache_ttl = 60");
    let err = |r: Result<mccache::Cache<u8, u8>, Error>| r.unwrap_err().to_string();
    assert_eq!(
        err(n.cache_builder("a").max_entries(0).build()),
        r#"max_entries: "0" must be at least 1"#
    );
    assert_eq!(
        err(n.cache_builder("a").max_bytes(0).build()),
        r#"max_bytes: "0" must be at least 1"#
    );
    assert!(
        err(n
            .cache_builder("a")
            .fresh_for(Duration::from_secs(60))
            .build())
        .starts_with("fresh_for: \"60s\" must be shorter than the ttl")
    );
    assert!(err(n.cache_builder("a").eager_refresh(0.5).build()).contains("needs fresh_for"));
    assert!(
        err(n
            .cache_builder("a")
            .fresh_for(Duration::from_secs(1))
            .eager_refresh(1.5)
            .build())
        .starts_with("eager_refresh: \"1.5\"")
    );
    // Nothing was opened by the refused builds.
    assert!(n.cache_names().is_empty());
    n.shutdown();
    assert!(matches!(
        n.cache_builder::<u8, u8>("a").build(),
        Err(Error::Shutdown)
    ));
}
