//! Helpers shared by the test modules: loopback clusters, namespaces, fault nodes, forged
//! datagrams, the simulator, stress processes, and the re-run of this test binary as one test.
//! (`memcached.rs` here is not one of them: only `tests/memcached.rs`, a binary of its own
//! built with the `memcached` feature, includes it.)

pub mod app_env;
pub mod cluster;
pub mod fault_node;
pub mod forger;
pub mod netns;
pub mod sim;
pub mod stress_nodes;

/// The name libtest knows a test of module `module` (its `module_path!()`) by, for re-running
/// this binary as one test alone (`--exact`): the module path without the crate's name.
pub fn test_name(module: &str, test: &str) -> String {
    let module = module.split_once("::").map_or("", |(_, m)| m);
    if module.is_empty() {
        test.to_string()
    } else {
        format!("{module}::{test}")
    }
}

/// Runs the calling test again in a process of its own, for a test that measures or sets up
/// something process-wide (its RSS, the global metrics recorder or tracing subscriber), which
/// the other tests of this binary would share. In the test process: re-runs this binary as
/// `test` of `module` alone, panics with its output if it fails, and returns true (the caller
/// returns). In that child: returns false (the caller goes on with the test).
pub fn in_own_process(module: &str, test: &str) -> bool {
    const CHILD: &str = "MCCACHE_IT_OWN_PROCESS";
    let name = test_name(module, test);
    if std::env::var(CHILD).is_ok_and(|v| v == name) {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env(CHILD, &name)
        .output()
        .expect("run the test in its own process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, in its own process: {}\n{stdout}\n{stderr}",
        out.status
    );
    true
}
