//! Configuration errors as a user meets them: separate OS processes (the `mccache` tool, and
//! this test binary run again as an application) with a bad `MCCACHE_*` value or a bad
//! `mccache.toml`, and the `source()` chain of configuration errors.

use std::error::Error as _;
use std::path::PathBuf;
use std::process::{Command, Output};

use mccache::{Config, ConfigError, Error, Node};

/// A fresh, empty working directory for one child process.
fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mccache-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `mccache node` in `dir` with only `vars` in its environment: it loads the configuration
/// first, so a bad one ends it before any socket is opened.
fn mccache_node(dir: &PathBuf, vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mccache"))
        .args(["node", "--duration", "0"])
        .env_clear()
        .envs(vars.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_tool_names_a_bad_environment_value() {
    let dir = workdir("env");
    for (var, value, expected) in [
        (
            "MCCACHE_CACHE_TTL",
            "abc",
            r#"cache_ttl: "abc" is not a number of seconds"#,
        ),
        (
            "MCCACHE_MULTICAST_IP",
            "10.0.0.1",
            r#"multicast_ip: "10.0.0.1" is not an IPv4 multicast address (224.0.0.0/4)"#,
        ),
        (
            "MCCACHE_CACHES__USERS__CACHE_MODE",
            "7",
            r#"caches.users.cache_mode: "7" must be 0, 1 or 2"#,
        ),
    ] {
        let o = mccache_node(&dir, &[(var, value)]);
        assert_eq!(o.status.code(), Some(2), "{var}={value}: {}", stderr(&o));
        assert_eq!(
            stderr(&o).trim_end(),
            format!("mccache: error: {expected}"),
            "{var}={value}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_tool_names_a_bad_file_value_and_a_typo() {
    let dir = workdir("file");
    for (toml, expected) in [
        (
            "packet_mtu = 100",
            r#"packet_mtu: "100" must be between 576 and 65507"#,
        ),
        (
            "cache_tll = 60",
            r#"cache_tll: "60" is not a known key (did you mean cache_ttl?)"#,
        ),
        (
            "[caches.users]\ncache_size = \"8 MB\"",
            r#"caches.users.cache_size: "8 MB" is not a byte count"#,
        ),
    ] {
        std::fs::write(dir.join("mccache.toml"), toml).unwrap();
        let o = mccache_node(&dir, &[]);
        assert_eq!(o.status.code(), Some(2), "{toml}: {}", stderr(&o));
        assert_eq!(
            stderr(&o).trim_end(),
            format!("mccache: error: {expected}"),
            "{toml}"
        );
    }
    // An unparsable file: the message names the file, and its source (printed after it) the
    // TOML error.
    std::fs::write(dir.join("mccache.toml"), "cache_ttl = = 3").unwrap();
    let o = mccache_node(&dir, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("mccache: error: config file ")
            && err.contains("mccache.toml could not be used: "),
        "{err}"
    );
    // And a file named by MCCACHE_CONFIG that is not there.
    let o = mccache_node(&dir, &[("MCCACHE_CONFIG", "nowhere.toml")]);
    assert_eq!(
        stderr(&o).trim_end(),
        "mccache: error: config file nowhere.toml could not be used: MCCACHE_CONFIG names no such file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The application side of [`an_application_gets_the_key_and_value_from_the_default_node`]:
/// opens a cache through the process-wide default node (which runs `Config::load`) and prints
/// the error's key, value and display.
#[test]
#[ignore = "run by an_application_gets_the_key_and_value_from_the_default_node in a child process"]
fn application() {
    match mccache::try_get_cache::<String, String>("users") {
        Ok(_) => println!("@@ started"),
        Err(Error::Config(e)) => println!(
            "@@ config key={} value={} display={e}",
            e.key().unwrap_or("-"),
            e.value().unwrap_or("-")
        ),
        Err(e) => println!("@@ other {e:?}"),
    }
}

#[test]
fn an_application_gets_the_key_and_value_from_the_default_node() {
    let dir = workdir("app");
    std::fs::write(dir.join("mccache.toml"), "cache_max = 10\nqueue_max = 0").unwrap();
    for (vars, expected) in [
        (
            vec![("MCCACHE_DAEMON_SLEEP", "-1")],
            r#"@@ config key=daemon_sleep value=-1 display=daemon_sleep: "-1" must not be negative"#,
        ),
        (
            vec![],
            r#"@@ config key=queue_max value=0 display=queue_max: "0" must be at least 1"#,
        ),
    ] {
        let o = Command::new(std::env::current_exe().unwrap())
            .arg("--exact")
            .arg(crate::support::test_name(module_path!(), "application"))
            .args(["--ignored", "--nocapture"])
            .env_clear()
            .envs(vars.iter().copied())
            .current_dir(&dir)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out.lines().find(|l| l.starts_with("@@ "));
        assert_eq!(line, Some(expected), "{out}{}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_socket_failure_names_the_key_and_keeps_the_os_error_as_source() {
    let mut config = Config::default();
    config.interface = "192.0.2.1".parse().unwrap(); // TEST-NET-1: no address of this host
    config.multicast_ip = "239.255.119.1".parse().unwrap();
    config.multicast_port = 47_901;
    config.cluster_name = "t-config-process".into();
    config.crypto_key = Some(mccache::generate_key());
    let err = Node::start(config).unwrap_err();
    let Error::Config(inner) = &err else {
        panic!("expected a configuration error, got {err:?}");
    };
    assert_eq!(inner.key(), Some("interface"));
    assert_eq!(
        err.to_string(),
        r#"interface: "192.0.2.1" is not an address of this host"#
    );
    let source = err.source().expect("the OS error is kept");
    let io = source
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert!(io.raw_os_error().is_some(), "{io:?}");
    assert!(source.source().is_none());
}

#[test]
fn file_errors_keep_the_parse_error_and_value_errors_have_no_source() {
    let file = Config::from_figment(&figment::Figment::from(
        <figment::providers::Toml as figment::providers::Format>::file_exact(
            "/nonexistent/dir/mccache.toml",
        ),
    ));
    let Err(e @ ConfigError::File { .. }) = file else {
        panic!("{file:?}");
    };
    assert!(e.source().is_some(), "{e:?}");
    assert_eq!(e.key(), None);

    let err: Error = Config::from_toml_str("cache_pulse = 0").unwrap_err().into();
    assert!(
        matches!(&err, Error::Config(ConfigError::Invalid { key, .. }) if key == "cache_pulse")
    );
    assert!(
        err.source().is_none(),
        "a range error has nothing underneath"
    );
}

/// A value whose serialization always fails.
#[derive(Clone, Debug)]
struct Refuses;

impl serde::Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused on purpose"))
    }
}

impl<'de> serde::Deserialize<'de> for Refuses {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("never read"))
    }
}

#[test]
fn serialization_errors_keep_the_codec_error_as_source() {
    let node = Node::start_local(Config::default()).unwrap();
    let cache = node.cache::<u8, Refuses>("ser").unwrap();
    let err = cache.insert(1, Refuses).unwrap_err();
    assert!(matches!(err, Error::Serialization(_)), "{err:?}");
    let source = err.source().expect("the rmp-serde error is kept");
    assert!(
        source.to_string().contains("refused on purpose"),
        "{source}"
    );
}
