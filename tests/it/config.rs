//! Configuration loading: layers (defaults, file, environment), error messages for every bad
//! value of every key, per-cache overrides. `figment::Jail` gives each test its own working
//! directory and environment and runs them one at a time.
// `figment::Jail` closures must return `figment::Result`, whose error is large; not ours to shrink.
#![allow(clippy::result_large_err)]

use std::net::Ipv4Addr;
use std::time::Duration;

use figment::Jail;
use figment::providers::Serialized;
use mccache::{CacheMode, TantrumSide, generate_key};
use mccache::{Config, ConfigError};

/// `Config::load` with the error rendered, so `?` works inside a jail.
fn load() -> Result<Config, String> {
    Config::load().map_err(|e| e.to_string())
}

/// The message of a load that must fail.
fn load_err() -> String {
    match Config::load() {
        Ok(c) => panic!("expected an error, loaded {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_without_file_or_env() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let c = load()?;
        assert_eq!(c, Config::default());
        assert_eq!(c.cache_ttl, 3600.0);
        assert_eq!(c.cache_max, 256);
        assert_eq!(c.cache_size, 8 * 1024 * 1024);
        assert_eq!(c.cache_mode, CacheMode::Replicate);
        assert_eq!(c.pulse(), Duration::from_secs(5));
        assert_eq!(c.daemon_sleep(), Duration::from_secs(1));
        assert_eq!(c.callback_window(), Duration::from_secs(5));
        assert_eq!(c.group().to_string(), "239.255.77.3:4000");
        assert_eq!(c.packet_mtu, 1472);
        assert_eq!(c.multicast_hops, 1);
        assert_eq!(c.monkey_tantrum_side, TantrumSide::Both);
        assert_eq!(c.interface, Ipv4Addr::UNSPECIFIED);
        assert_eq!(c.cluster_name, "mccache");
        assert!(c.crypto_keyring().map_err(|e| e.to_string())?.is_empty());
        Ok(())
    });
}

#[test]
fn file_layer_sets_every_kind_of_key() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let key = generate_key();
        jail.create_file(
            "mccache.toml",
            &format!(
                r#"
                cache_ttl = 60
                cache_max = 1000.0
                cache_size = "2 MiB"
                cache_mode = 2
                cache_pulse = 0.5
                crypto_key = "{key}"
                packet_mtu = 9000
                multicast_ip = "239.1.2.3"
                multicast_port = 4100
                multicast_hops = 3
                callback_win = 0
                daemon_sleep = 0.25
                monkey_tantrum = 12.5
                monkey_tantrum_side = "recv"
                interface = "127.0.0.1"
                max_message_size = 65536
                node_name = "web-1"
                cluster_name = "prod"
                queue_max = 10
                overload = "Block"
                overload_timeout = 0.5
                "#
            ),
        )?;
        let c = load()?;
        assert_eq!(c.cache_ttl, 60.0);
        assert_eq!(c.cache_max, 1000);
        assert_eq!(c.cache_size, 2 * 1024 * 1024);
        assert_eq!(c.cache_mode, CacheMode::Invalidate);
        assert_eq!(c.pulse(), Duration::from_millis(500));
        assert_eq!(c.crypto_key.as_deref(), Some(key.as_str()));
        assert_eq!(c.crypto_keyring().map_err(|e| e.to_string())?.len(), 1);
        assert_eq!(c.packet_mtu, 9000);
        assert_eq!(c.group().to_string(), "239.1.2.3:4100");
        assert_eq!(c.multicast_hops, 3);
        assert_eq!(c.callback_window(), Duration::ZERO);
        assert_eq!(c.daemon_sleep(), Duration::from_millis(250));
        assert_eq!(c.monkey_tantrum, 12.5);
        assert_eq!(c.monkey_tantrum_side, TantrumSide::Recv);
        assert_eq!(c.interface, Ipv4Addr::LOCALHOST);
        assert_eq!(c.max_message_size, 65536);
        assert_eq!(c.node_name_or_default(), "web-1");
        assert_eq!(c.cluster_name, "prod");
        assert_eq!(c.queue_max, 10);
        assert_eq!(c.overload, mccache::Overload::Block);
        assert_eq!(c.overload_wait(), Duration::from_millis(500));
        Ok(())
    });
}

#[test]
fn env_beats_file_and_accepts_number_spellings() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "mccache.toml",
            "cache_ttl = 60\ncache_max = 5\nqueue_max = 7",
        )?;
        jail.set_env("MCCACHE_CACHE_TTL", "2");
        jail.set_env("MCCACHE_CACHE_MAX", "2.0");
        jail.set_env("mccache_daemon_sleep", " 3 ");
        jail.set_env("MCCACHE_CACHE_PULSE", "1e1");
        jail.set_env("MCCACHE_OVERLOAD", " error ");
        let c = load()?;
        assert_eq!(c.overload, mccache::Overload::Error);
        assert_eq!(c.cache_ttl, 2.0);
        assert_eq!(c.cache_max, 2);
        assert_eq!(c.daemon_sleep, 3.0);
        assert_eq!(c.cache_pulse, 10.0);
        assert_eq!(
            c.queue_max, 7,
            "keys the environment does not set keep the file's value"
        );
        Ok(())
    });
}

#[test]
fn env_strings_stay_strings() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("MCCACHE_CLUSTER_NAME", "2024");
        jail.set_env("MCCACHE_NODE_NAME", "[a, b]");
        let c = load()?;
        assert_eq!(c.cluster_name, "2024");
        assert_eq!(c.node_name.as_deref(), Some("[a, b]"));
        Ok(())
    });
}

#[test]
fn unknown_env_variables_are_ignored_but_file_typos_are_errors() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("MCCACHE_NOT_A_KEY", "whatever");
        jail.set_env("MCCACHE_CACHES__USERS__NOPE", "1");
        jail.set_env("MCCACHE_CACHES", "x");
        assert_eq!(load()?, Config::default());

        jail.create_file("mccache.toml", "cache_tll = 60")?;
        assert_eq!(
            load_err(),
            r#"cache_tll: "60" is not a known key (did you mean cache_ttl?)"#
        );

        jail.create_file("mccache.toml", "[caches.users]\ncache_mac = 5")?;
        assert_eq!(
            load_err(),
            r#"caches.users.cache_mac: "5" is not a known key (did you mean cache_max?)"#
        );

        jail.create_file("mccache.toml", "completely_different = true")?;
        assert_eq!(
            load_err(),
            r#"completely_different: "true" is not a known key"#
        );
        Ok(())
    });
}

#[test]
fn mccache_config_names_the_file() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("mccache.toml", "cache_max = 5")?;
        jail.create_file("other.toml", "cache_max = 9")?;
        jail.set_env("MCCACHE_CONFIG", "other.toml");
        assert_eq!(
            load()?.cache_max,
            9,
            "MCCACHE_CONFIG replaces ./mccache.toml"
        );

        jail.set_env("MCCACHE_CONFIG", "");
        assert_eq!(
            load()?.cache_max,
            256,
            "an empty MCCACHE_CONFIG reads no file"
        );

        jail.set_env("MCCACHE_CONFIG", "missing/nowhere.toml");
        match Config::load() {
            Err(ConfigError::File { path, .. }) => assert_eq!(path, "missing/nowhere.toml"),
            other => panic!("expected a file error, got {other:?}"),
        }
        assert!(load_err().contains("missing/nowhere.toml"));
        Ok(())
    });
}

#[test]
fn default_file_is_only_read_from_the_working_directory() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("mccache.toml", "cache_max = 5")?;
        std::fs::create_dir("sub").map_err(|e| e.to_string())?;
        jail.change_dir("sub")?;
        assert_eq!(
            load()?.cache_max,
            256,
            "a parent directory's mccache.toml is not read"
        );
        Ok(())
    });
}

#[test]
fn broken_toml_is_a_config_file_error() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("mccache.toml", "cache_ttl = = 3")?;
        match Config::load() {
            Err(e @ ConfigError::File { .. }) => {
                assert!(
                    e.to_string().ends_with("mccache.toml could not be used"),
                    "{e}"
                );
                let source = std::error::Error::source(&e).expect("the TOML error is kept");
                assert!(source.to_string().contains("cache_ttl"), "{source}");
            }
            other => panic!("expected a file error, got {other:?}"),
        }
        Ok(())
    });
}

#[test]
fn ip_port_form_sets_the_port_and_wins() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("MCCACHE_MULTICAST_IP", "239.9.9.9:5001");
        assert_eq!(load()?.group().to_string(), "239.9.9.9:5001");

        // The port inside multicast_ip wins over multicast_port, whichever layer sets it.
        jail.set_env("MCCACHE_MULTICAST_PORT", "6000");
        assert_eq!(load()?.group().to_string(), "239.9.9.9:5001");

        jail.set_env("MCCACHE_MULTICAST_IP", "224.0.0.70");
        let c = load()?;
        assert_eq!(
            c.group().to_string(),
            "224.0.0.70:6000",
            "B20: any 224.0.0.0/4 address works"
        );
        Ok(())
    });
}

#[test]
fn per_cache_overrides_from_file_and_env() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "mccache.toml",
            r#"
            cache_ttl = 100
            [caches.users]
            cache_ttl = 10
            cache_max = 3
            cache_mode = 0
            [caches.orders]
            cache_size = "1 KiB"
            callback_win = 1.5
            "#,
        )?;
        jail.set_env("MCCACHE_CACHES__USERS__CACHE_TTL", "20");
        jail.set_env("MCCACHE_CACHES__SESSIONS__CACHE_MODE", "2");
        let c = load()?;

        let users = c.cache_config("users");
        assert_eq!(
            users.ttl,
            Some(Duration::from_secs(20)),
            "env beats the file per cache too"
        );
        assert_eq!(users.max_entries, 3);
        assert_eq!(users.mode, CacheMode::UpdateIfPresent);
        assert_eq!(users.max_bytes, 8 * 1024 * 1024);

        let orders = c.cache_config("orders");
        assert_eq!(orders.max_bytes, 1024);
        assert_eq!(orders.callback_win, Duration::from_millis(1500));
        assert_eq!(orders.ttl, Some(Duration::from_secs(100)));

        assert_eq!(c.cache_config("sessions").mode, CacheMode::Invalidate);
        let other = c.cache_config("other");
        assert_eq!(other.ttl, Some(Duration::from_secs(100)));
        assert_eq!(other.mode, CacheMode::Replicate);
        Ok(())
    });
}

#[test]
fn zero_ttl_means_no_expiry() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("MCCACHE_CACHE_TTL", "0");
        assert_eq!(load()?.cache_config("any").ttl, None);
        Ok(())
    });
}

#[test]
fn keyring_from_env_list_and_single_key() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let (a, b) = (generate_key(), generate_key());
        jail.set_env("MCCACHE_CRYPTO_KEYS", format!("{a}, {b}"));
        let c = load()?;
        assert_eq!(c.crypto_keys, vec![a.clone(), b.clone()]);
        let ring = c.crypto_keyring().map_err(|e| e.to_string())?;
        assert_eq!(ring.len(), 2);

        // crypto_key comes first (it sends) and is not repeated.
        jail.set_env("MCCACHE_CRYPTO_KEY", &b);
        let ring2 = load()?.crypto_keyring().map_err(|e| e.to_string())?;
        assert_eq!(ring2, vec![ring[1], ring[0]]);

        // An empty crypto_key turns it off.
        jail.set_env("MCCACHE_CRYPTO_KEY", "");
        jail.set_env("MCCACHE_CRYPTO_KEYS", "");
        assert!(
            load()?
                .crypto_keyring()
                .map_err(|e| e.to_string())?
                .is_empty()
        );
        Ok(())
    });
}

#[test]
fn mccache_fernet_keys_are_accepted() {
    // McCache used Fernet keys: URL-safe base64 of 32 bytes.
    let fernet = "-_8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0=";
    let mut c = Config::default();
    c.crypto_key = Some(fernet.to_string());
    c.validate().unwrap();
    let ring = c.crypto_keyring().unwrap();
    let expected: Vec<u8> = [0xfb, 0xff].into_iter().chain(0..30).collect();
    assert_eq!(
        ring,
        vec![<[u8; 32]>::try_from(expected.as_slice()).unwrap()]
    );
}

#[test]
fn generated_keys_are_distinct_and_valid() {
    let keys: Vec<String> = (0..8).map(|_| generate_key()).collect();
    let mut c = Config::default();
    c.crypto_keys = keys.clone();
    assert_eq!(c.crypto_keyring().unwrap().len(), 8, "eight different keys");
}

/// Every bad value of every key, set through the environment: the exact message.
#[test]
fn every_bad_env_value_names_key_and_value() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "CACHE_TTL",
            "abc",
            r#"cache_ttl: "abc" is not a number of seconds"#,
        ),
        (
            "CACHE_TTL",
            "",
            r#"cache_ttl: "" is not a number of seconds"#,
        ),
        (
            "CACHE_TTL",
            "nan",
            r#"cache_ttl: "nan" is not a number of seconds"#,
        ),
        (
            "CACHE_TTL",
            "inf",
            r#"cache_ttl: "inf" is not a number of seconds"#,
        ),
        ("CACHE_TTL", "-1", r#"cache_ttl: "-1" must not be negative"#),
        (
            "CACHE_TTL",
            "1e10",
            r#"cache_ttl: "1e10" must be at most 1000000000 seconds"#,
        ),
        (
            "CACHE_MAX",
            "many",
            r#"cache_max: "many" is not a whole number of entries"#,
        ),
        (
            "CACHE_MAX",
            "2.5",
            r#"cache_max: "2.5" is not a whole number of entries"#,
        ),
        (
            "CACHE_MAX",
            "-3",
            r#"cache_max: "-3" is not a whole number of entries"#,
        ),
        ("CACHE_MAX", "0", r#"cache_max: "0" must be at least 1"#),
        (
            "CACHE_SIZE",
            "big",
            r#"cache_size: "big" is not a byte count"#,
        ),
        (
            "CACHE_SIZE",
            "8 MB",
            r#"cache_size: "8 MB" is not a byte count"#,
        ),
        ("CACHE_SIZE", "0", r#"cache_size: "0" must be at least 1"#),
        ("CACHE_MODE", "3", r#"cache_mode: "3" must be 0, 1 or 2"#),
        (
            "CACHE_MODE",
            "one",
            r#"cache_mode: "one" must be 0, 1 or 2"#,
        ),
        (
            "CACHE_MODE",
            "1.5",
            r#"cache_mode: "1.5" must be 0, 1 or 2"#,
        ),
        (
            "CACHE_PULSE",
            "soon",
            r#"cache_pulse: "soon" is not a number of seconds"#,
        ),
        (
            "CACHE_PULSE",
            "0",
            r#"cache_pulse: "0" must be greater than 0"#,
        ),
        (
            "CACHE_PULSE",
            "-5",
            r#"cache_pulse: "-5" must not be negative"#,
        ),
        (
            "CRYPTO_KEY",
            "not-a-key",
            r#"crypto_key: "<9 characters, not shown>" is not valid base64 of 32 bytes"#,
        ),
        (
            "CRYPTO_KEY",
            "AAAA",
            r#"crypto_key: "<4 characters, not shown>" is not valid base64 of 32 bytes"#,
        ),
        (
            "CRYPTO_KEYS",
            "AAAA",
            r#"crypto_keys[0]: "<4 characters, not shown>" is not valid base64 of 32 bytes"#,
        ),
        (
            "PACKET_MTU",
            "jumbo",
            r#"packet_mtu: "jumbo" must be between 576 and 65507"#,
        ),
        (
            "PACKET_MTU",
            "575",
            r#"packet_mtu: "575" must be between 576 and 65507"#,
        ),
        (
            "PACKET_MTU",
            "65508",
            r#"packet_mtu: "65508" must be between 576 and 65507"#,
        ),
        (
            "PACKET_MTU",
            "100000",
            r#"packet_mtu: "100000" must be between 576 and 65507"#,
        ),
        (
            "MULTICAST_IP",
            "10.0.0.1",
            r#"multicast_ip: "10.0.0.1" is not an IPv4 multicast address (224.0.0.0/4)"#,
        ),
        (
            "MULTICAST_IP",
            "240.0.0.1",
            r#"multicast_ip: "240.0.0.1" is not an IPv4 multicast address (224.0.0.0/4)"#,
        ),
        (
            "MULTICAST_IP",
            "group",
            r#"multicast_ip: "group" is not an IPv4 multicast address (224.0.0.0/4)"#,
        ),
        (
            "MULTICAST_IP",
            "239.1.1.1:0",
            r#"multicast_ip: "239.1.1.1:0" has a port that is not a port number (1 to 65535)"#,
        ),
        (
            "MULTICAST_IP",
            "239.1.1.1:x",
            r#"multicast_ip: "239.1.1.1:x" has a port that is not a port number (1 to 65535)"#,
        ),
        (
            "MULTICAST_PORT",
            "0",
            r#"multicast_port: "0" is not a port number (1 to 65535)"#,
        ),
        (
            "MULTICAST_PORT",
            "65536",
            r#"multicast_port: "65536" is not a port number (1 to 65535)"#,
        ),
        (
            "MULTICAST_PORT",
            "http",
            r#"multicast_port: "http" is not a port number (1 to 65535)"#,
        ),
        (
            "MULTICAST_HOPS",
            "0",
            r#"multicast_hops: "0" is not a hop count (1 to 255)"#,
        ),
        (
            "MULTICAST_HOPS",
            "256",
            r#"multicast_hops: "256" is not a hop count (1 to 255)"#,
        ),
        (
            "CALLBACK_WIN",
            "x",
            r#"callback_win: "x" is not a number of seconds"#,
        ),
        (
            "CALLBACK_WIN",
            "-0.1",
            r#"callback_win: "-0.1" must not be negative"#,
        ),
        (
            "DAEMON_SLEEP",
            "zzz",
            r#"daemon_sleep: "zzz" is not a number of seconds"#,
        ),
        (
            "DAEMON_SLEEP",
            "0",
            r#"daemon_sleep: "0" must be greater than 0"#,
        ),
        (
            "MONKEY_TANTRUM",
            "101",
            r#"monkey_tantrum: "101" is not a percentage (0 to 100)"#,
        ),
        (
            "MONKEY_TANTRUM",
            "-1",
            r#"monkey_tantrum: "-1" is not a percentage (0 to 100)"#,
        ),
        (
            "MONKEY_TANTRUM",
            "lots",
            r#"monkey_tantrum: "lots" is not a percentage (0 to 100)"#,
        ),
        (
            "MONKEY_TANTRUM_SIDE",
            "left",
            r#"monkey_tantrum_side: "left" must be send, recv or both"#,
        ),
        (
            "OVERLOAD",
            "drop",
            r#"overload: "drop" must be repair, block or error"#,
        ),
        (
            "OVERLOAD_TIMEOUT",
            "-1",
            r#"overload_timeout: "-1" must not be negative"#,
        ),
        (
            "INTERFACE",
            "eth0",
            r#"interface: "eth0" is not a unicast IPv4 address or 0.0.0.0"#,
        ),
        (
            "INTERFACE",
            "239.1.1.1",
            r#"interface: "239.1.1.1" is not a unicast IPv4 address or 0.0.0.0"#,
        ),
        (
            "INTERFACE",
            "255.255.255.255",
            r#"interface: "255.255.255.255" is not a unicast IPv4 address or 0.0.0.0"#,
        ),
        (
            "MAX_MESSAGE_SIZE",
            "0",
            r#"max_message_size: "0" must be between 1 byte and 64 MiB"#,
        ),
        (
            "MAX_MESSAGE_SIZE",
            "65 MiB",
            r#"max_message_size: "65 MiB" must be between 1 byte and 64 MiB"#,
        ),
        (
            "MAX_MESSAGE_SIZE",
            "huge",
            r#"max_message_size: "huge" must be between 1 byte and 64 MiB"#,
        ),
        (
            "NODE_NAME",
            "",
            r#"node_name: "" must be 1 to 255 bytes of text"#,
        ),
        (
            "CLUSTER_NAME",
            "",
            r#"cluster_name: "" must be 1 to 64 bytes of text"#,
        ),
        ("QUEUE_MAX", "0", r#"queue_max: "0" must be at least 1"#),
        (
            "QUEUE_MAX_BYTES",
            "0",
            r#"queue_max_bytes: "0" must be at least 1"#,
        ),
        (
            "QUEUE_MAX_BYTES",
            "lots",
            r#"queue_max_bytes: "lots" is not a byte count"#,
        ),
        (
            "QUEUE_MAX",
            "lots",
            r#"queue_max: "lots" is not a whole number of changes"#,
        ),
        (
            "CACHES__USERS__CACHE_TTL",
            "abc",
            r#"caches.users.cache_ttl: "abc" is not a number of seconds"#,
        ),
        (
            "CACHES__USERS__CACHE_MAX",
            "0",
            r#"caches.users.cache_max: "0" must be at least 1"#,
        ),
        (
            "CACHES__USERS__CACHE_SIZE",
            "1 TB",
            r#"caches.users.cache_size: "1 TB" is not a byte count"#,
        ),
        (
            "CACHES__USERS__CACHE_MODE",
            "9",
            r#"caches.users.cache_mode: "9" must be 0, 1 or 2"#,
        ),
        (
            "CACHES__USERS__CALLBACK_WIN",
            "-1",
            r#"caches.users.callback_win: "-1" must not be negative"#,
        ),
    ];
    let long_name = "x".repeat(65);
    let long_cluster = format!(r#"cluster_name: "{long_name}" must be 1 to 64 bytes of text"#);
    let mut all: Vec<(&str, &str, &str)> = cases.to_vec();
    all.push(("CLUSTER_NAME", &long_name, &long_cluster));

    for (var, value, expected) in all {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env(format!("MCCACHE_{var}"), value);
            let got = load_err();
            assert_eq!(got, expected, "MCCACHE_{var}={value:?}");
            match Config::load() {
                Err(e @ ConfigError::Invalid { .. }) => {
                    let key = e.key().unwrap_or_default();
                    assert!(expected.starts_with(&format!("{key}: ")))
                }
                other => {
                    panic!("MCCACHE_{var}={value:?}: expected an invalid value, got {other:?}")
                }
            }
            Ok(())
        });
    }
}

/// Bad values that only a TOML file can spell (wrong types, tables, arrays).
#[test]
fn every_bad_toml_type_names_key_and_value() {
    let cases: &[(&str, &str)] = &[
        (
            "cache_ttl = true",
            r#"cache_ttl: "true" is not a number of seconds"#,
        ),
        (
            "cache_ttl = [1]",
            r#"cache_ttl: "[1]" is not a number of seconds"#,
        ),
        (
            "cache_max = -1",
            r#"cache_max: "-1" is not a whole number of entries"#,
        ),
        (
            "cache_max = 1.5",
            r#"cache_max: "1.5" is not a whole number of entries"#,
        ),
        (
            "cache_size = 1e30",
            r#"cache_size: "1000000000000000000000000000000" is not a byte count"#,
        ),
        ("cache_mode = -1", r#"cache_mode: "-1" must be 0, 1 or 2"#),
        (
            "cache_pulse = nan",
            r#"cache_pulse: "NaN" is not a number of seconds"#,
        ),
        (
            "crypto_key = 5",
            r#"crypto_key: "<1 characters, not shown>" is not valid base64 of 32 bytes"#,
        ),
        (
            "crypto_keys = 5",
            r#"crypto_keys: "5" is not a list of base64 keys"#,
        ),
        (
            "packet_mtu = 1500.5",
            r#"packet_mtu: "1500.5" must be between 576 and 65507"#,
        ),
        (
            "multicast_ip = 239",
            r#"multicast_ip: "239" is not an IPv4 multicast address (224.0.0.0/4)"#,
        ),
        (
            "multicast_port = -4000",
            r#"multicast_port: "-4000" is not a port number (1 to 65535)"#,
        ),
        (
            "multicast_hops = 1.5",
            r#"multicast_hops: "1.5" is not a hop count (1 to 255)"#,
        ),
        (
            "callback_win = {a = 1}",
            r#"callback_win: "{a = 1}" is not a number of seconds"#,
        ),
        (
            "daemon_sleep = inf",
            r#"daemon_sleep: "inf" is not a number of seconds"#,
        ),
        (
            "monkey_tantrum = 100.5",
            r#"monkey_tantrum: "100.5" is not a percentage (0 to 100)"#,
        ),
        (
            "monkey_tantrum_side = 1",
            r#"monkey_tantrum_side: "1" must be send, recv or both"#,
        ),
        (
            "interface = 127",
            r#"interface: "127" is not a unicast IPv4 address or 0.0.0.0"#,
        ),
        (
            "max_message_size = 67108865",
            r#"max_message_size: "67108865" must be between 1 byte and 64 MiB"#,
        ),
        ("node_name = [1]", r#"node_name: "[1]" is not text"#),
        ("cluster_name = {}", r#"cluster_name: "{}" is not text"#),
        ("queue_max = 0", r#"queue_max: "0" must be at least 1"#),
        (
            "queue_max_bytes = -1",
            r#"queue_max_bytes: "-1" is not a byte count"#,
        ),
        (
            "overload = 1",
            r#"overload: "1" must be repair, block or error"#,
        ),
        (
            "overload_timeout = \"soon\"",
            r#"overload_timeout: "soon" is not a number of seconds"#,
        ),
        (
            "caches = 5",
            r#"caches: "5" is not a table of cache settings"#,
        ),
        (
            "caches = { users = 5 }",
            r#"caches.users: "5" is not a table of cache settings"#,
        ),
        (
            "[caches.users]\ncache_ttl = \"x\"",
            r#"caches.users.cache_ttl: "x" is not a number of seconds"#,
        ),
    ];
    for (toml, expected) in cases {
        let got = Config::from_toml_str(toml).expect_err(toml).to_string();
        assert_eq!(&got, expected, "{toml}");
    }
}

#[test]
fn validate_catches_bad_programmatic_configs() {
    let cases: Vec<(Config, &str)> = vec![
        (
            {
                let mut c = Config::default();
                c.cache_ttl = f64::NAN;
                c
            },
            r#"cache_ttl: "NaN" is not a number of seconds"#,
        ),
        (
            {
                let mut c = Config::default();
                c.cache_ttl = -1.0;
                c
            },
            r#"cache_ttl: "-1" must not be negative"#,
        ),
        (
            {
                let mut c = Config::default();
                c.cache_max = 0;
                c
            },
            r#"cache_max: "0" must be at least 1"#,
        ),
        (
            {
                let mut c = Config::default();
                c.cache_size = 0;
                c
            },
            r#"cache_size: "0" must be at least 1"#,
        ),
        (
            {
                let mut c = Config::default();
                c.cache_pulse = 0.0;
                c
            },
            r#"cache_pulse: "0" must be greater than 0"#,
        ),
        (
            {
                let mut c = Config::default();
                c.crypto_key = Some("short".into());
                c
            },
            r#"crypto_key: "<5 characters, not shown>" is not valid base64 of 32 bytes"#,
        ),
        (
            {
                let mut c = Config::default();
                c.crypto_keys = vec![generate_key(), String::new()];
                c
            },
            r#"crypto_keys[1]: "<0 characters, not shown>" is not valid base64 of 32 bytes"#,
        ),
        (
            {
                let mut c = Config::default();
                c.packet_mtu = 100;
                c
            },
            r#"packet_mtu: "100" must be between 576 and 65507"#,
        ),
        (
            {
                let mut c = Config::default();
                c.multicast_ip = Ipv4Addr::new(192, 168, 1, 1);
                c
            },
            r#"multicast_ip: "192.168.1.1" is not an IPv4 multicast address (224.0.0.0/4)"#,
        ),
        (
            {
                let mut c = Config::default();
                c.multicast_port = 0;
                c
            },
            r#"multicast_port: "0" is not a port number (1 to 65535)"#,
        ),
        (
            {
                let mut c = Config::default();
                c.multicast_hops = 0;
                c
            },
            r#"multicast_hops: "0" is not a hop count (1 to 255)"#,
        ),
        (
            {
                let mut c = Config::default();
                c.callback_win = -2.0;
                c
            },
            r#"callback_win: "-2" must not be negative"#,
        ),
        (
            {
                let mut c = Config::default();
                c.daemon_sleep = f64::INFINITY;
                c
            },
            r#"daemon_sleep: "inf" is not a number of seconds"#,
        ),
        (
            {
                let mut c = Config::default();
                c.monkey_tantrum = 200.0;
                c
            },
            r#"monkey_tantrum: "200" is not a percentage (0 to 100)"#,
        ),
        (
            {
                let mut c = Config::default();
                c.interface = Ipv4Addr::new(224, 0, 0, 1);
                c
            },
            r#"interface: "224.0.0.1" is not a unicast IPv4 address or 0.0.0.0"#,
        ),
        (
            {
                let mut c = Config::default();
                c.max_message_size = 0;
                c
            },
            r#"max_message_size: "0" must be between 1 byte and 64 MiB"#,
        ),
        (
            {
                let mut c = Config::default();
                c.node_name = Some(String::new());
                c
            },
            r#"node_name: "" must be 1 to 255 bytes of text"#,
        ),
        (
            {
                let mut c = Config::default();
                c.cluster_name = String::new();
                c
            },
            r#"cluster_name: "" must be 1 to 64 bytes of text"#,
        ),
        (
            {
                let mut c = Config::default();
                c.queue_max = 0;
                c
            },
            r#"queue_max: "0" must be at least 1"#,
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config.validate().unwrap_err().to_string(), expected);
    }
    assert!(Config::default().validate().is_ok());
}

#[test]
fn validate_checks_cache_overrides() {
    let mut c = Config::default();
    c.caches.entry("users".into()).or_default().cache_max = Some(0);
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        r#"caches.users.cache_max: "0" must be at least 1"#
    );
}

#[test]
fn config_is_a_figment_provider() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("MCCACHE_CACHE_MAX", "7");
        // An application's own config over ours: it decides precedence.
        let mut mine = Config::default();
        mine.cluster_name = "app".into();
        mine.cache_max = 99;
        let figment = Config::figment().merge(mine.clone());
        let c = Config::from_figment(&figment).map_err(|e| e.to_string())?;
        assert_eq!(c, mine, "a Config merged last replaces every layer");

        let figment = Config::figment().merge(Serialized::default("cluster_name", "app"));
        let c = Config::from_figment(&figment).map_err(|e| e.to_string())?;
        assert_eq!((c.cache_max, c.cluster_name.as_str()), (7, "app"));
        Ok(())
    });
}

#[test]
fn hostname_default_node_name() {
    let name = Config::default().node_name_or_default();
    let (host, pid) = name.rsplit_once(':').unwrap();
    assert!(!host.is_empty());
    assert_eq!(pid, std::process::id().to_string());
}

#[test]
fn the_example_in_the_docs_loads() {
    let doc = include_str!("../../docs/CONFIG.md");
    let start = doc
        .find("```toml\n")
        .expect("docs/CONFIG.md has a toml example")
        + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("the example is closed");
    let c = Config::from_toml_str(&doc[start..end]).unwrap();
    assert_eq!(c.cache_size, 64 << 20);
    assert_eq!(c.cache_config("sessions").mode, CacheMode::Invalidate);
    assert_eq!(c.group().to_string(), "239.255.77.3:4000");
}
