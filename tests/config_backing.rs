//! The `backing*` keys (the memcached tier): file, environment and per-cache layers, and an
//! error naming the key and the value for every bad one. `figment::Jail` isolates each test's
//! working directory and environment.
// `figment::Jail` closures must return `figment::Result`, whose error is large; not ours to shrink.
#![allow(clippy::result_large_err)]

#[cfg(feature = "memcached")]
use std::time::Duration;

use mccache::Config;
#[cfg(feature = "memcached")]
use {figment::Jail, mccache::WritePolicy};

#[cfg(feature = "memcached")]
fn load_err() -> String {
    match Config::load() {
        Ok(c) => panic!("expected an error, loaded {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[cfg(feature = "memcached")]
#[test]
fn backing_from_file_env_and_per_cache_tables() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "mccache.toml",
            r#"
            backing = "memcached://10.0.0.7:11211, 10.0.0.8:11211"
            backing_timeout = 0.25
            backing_retry_after = "3"

            [caches.sessions]
            backing_write = "invalidate"

            [caches.local_only]
            backing = "none"

            [caches.other]
            backing = "memcached://mc.internal:11311"
            "#,
        )?;
        jail.set_env("MCCACHE_BACKING_POOL_MAX", "4");
        jail.set_env("MCCACHE_BACKING_DOWN_AFTER", "5");
        jail.set_env("MCCACHE_CACHES__REPORTS__BACKING_WRITE", "write-through");
        let c = Config::load().map_err(|e| e.to_string())?;
        assert_eq!(c.backing_timeout, 0.25);
        assert_eq!(c.backing_retry_after, 3.0);
        assert_eq!(c.backing_pool_max, 4);
        assert_eq!(c.backing_down_after, 5);
        let users = c.cache_config("users").backing.unwrap();
        assert_eq!(users.servers, ["10.0.0.7:11211", "10.0.0.8:11211"]);
        assert_eq!(users.write, WritePolicy::WriteThrough);
        assert_eq!(
            c.cache_config("sessions").backing.unwrap().write,
            WritePolicy::Invalidate
        );
        assert_eq!(c.cache_config("local_only").backing, None);
        assert_eq!(
            c.cache_config("other").backing.unwrap().url(),
            "memcached://mc.internal:11311"
        );
        assert!(c.cache_config("reports").backing.is_some());
        assert_eq!(
            Duration::from_secs_f64(c.backing_lease_wait),
            Duration::from_secs(2)
        );
        Ok(())
    });
}

#[cfg(feature = "memcached")]
#[test]
fn bad_backing_values_name_the_key_and_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "MCCACHE_BACKING",
            "redis://10.0.0.7:6379",
            r#"backing: "redis://10.0.0.7:6379" is not memcached://host:port[,host:port...] (or "none")"#,
        ),
        (
            "MCCACHE_BACKING",
            "memcached://10.0.0.7",
            r#"backing: "memcached://10.0.0.7" is not memcached://host:port[,host:port...] (or "none")"#,
        ),
        (
            "MCCACHE_BACKING",
            "memcached://a:1,a:1",
            r#"backing: "memcached://a:1,a:1" lists a server twice"#,
        ),
        (
            "MCCACHE_BACKING_WRITE",
            "sideways",
            r#"backing_write: "sideways" must be write-through or invalidate"#,
        ),
        (
            "MCCACHE_BACKING_TIMEOUT",
            "0",
            r#"backing_timeout: "0" must be greater than 0"#,
        ),
        (
            "MCCACHE_BACKING_POOL_MAX",
            "0",
            r#"backing_pool_max: "0" is not a whole number of connections (1 to 1024)"#,
        ),
        (
            "MCCACHE_BACKING_DOWN_AFTER",
            "many",
            r#"backing_down_after: "many" is not a whole number of failures (1 to 1000)"#,
        ),
        (
            "MCCACHE_CACHES__USERS__BACKING",
            "memcached://:11211",
            r#"caches.users.backing: "memcached://:11211" is not memcached://host:port[,host:port...] (or "none")"#,
        ),
    ];
    for (var, value, message) in cases {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env(var, value);
            assert_eq!(load_err(), *message, "{var}={value}");
            Ok(())
        });
    }
    let typo = Config::from_toml_str("backing_timout = 1").unwrap_err();
    assert_eq!(
        typo.to_string(),
        r#"backing_timout: "1" is not a known key (did you mean backing_timeout?)"#
    );
}

#[cfg(not(feature = "memcached"))]
#[test]
fn backing_without_the_feature_is_an_error_that_says_so() {
    let err = Config::from_toml_str(r#"backing = "memcached://127.0.0.1:11211""#).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"backing: "memcached://127.0.0.1:11211" needs mccache built with the `memcached` feature (cargo add mccache --features memcached)"#
    );
    // "none" needs no feature.
    let c = Config::from_toml_str(r#"backing = "none""#).unwrap();
    assert_eq!(c.cache_config("x").backing, None);
    let _ = mccache::WritePolicy::Invalidate;
}
