//! The environment of an application process that a test starts: only what the test sets.
//!
//! Use it from a test module with `use crate::support::app_env;`.

use std::process::Command;

/// Removes every `MCCACHE_*` variable (any case) that `cmd` would inherit from the environment
/// the tests run in (`.ci/run` exports `MCCACHE_INTERFACE`, a developer may have more), so the
/// child sees only the configuration the test gives it.
pub fn clear_mccache_vars(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("MCCACHE_")
        {
            cmd.env_remove(k);
        }
    }
}
