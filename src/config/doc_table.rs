//! The key table of `docs/CONFIG.md`, written from the key declarations (`keys.rs`); the test
//! below fails when the file is stale. `UPDATE_CONFIG_DOC=1 cargo test --lib
//! config::doc_table` rewrites the table.

use super::ENV_PREFIX;
use super::keys::KEYS;

const BEGIN: &str = "<!-- keys: written from src/config/keys.rs, do not edit by hand -->\n";
const END: &str = "<!-- end of keys -->\n";

/// The Markdown table of every key, then the `caches.NAME.*` row.
fn table() -> String {
    let mut out = String::from(
        "| key | environment variable | type / unit | default | meaning |\n|---|---|---|---|---|\n",
    );
    for k in KEYS {
        let meaning: Vec<&str> = k.doc.lines().map(str::trim).collect();
        out += &format!(
            "| `{}` | `{ENV_PREFIX}{}` | {} | {} | {} |\n",
            k.name,
            k.name.to_ascii_uppercase(),
            k.unit,
            k.default,
            meaning.join(" ")
        );
    }
    let per_cache: Vec<String> = (KEYS.iter().filter(|k| k.per_cache))
        .map(|k| format!("`{}`", k.name))
        .collect();
    out += &format!(
        "| `caches.NAME.*` | `{ENV_PREFIX}CACHES__NAME__<KEY>` | table | none | Settings for one \
         cache: {}. Unset keys take the node-wide value. |\n",
        per_cache.join(", ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_md_lists_every_key_as_declared() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md");
        let doc = std::fs::read_to_string(path).expect("docs/CONFIG.md");
        let (start, end) = (doc.find(BEGIN), doc.find(END));
        let (Some(start), Some(end)) = (start, end) else {
            panic!("docs/CONFIG.md lacks the markers {BEGIN:?} and {END:?}");
        };
        let current = &doc[start + BEGIN.len()..end];
        let expected = table();
        if current == expected {
            return;
        }
        if std::env::var_os("UPDATE_CONFIG_DOC").is_some() {
            let updated = format!("{}{BEGIN}{expected}{}", &doc[..start], &doc[end..]);
            std::fs::write(path, updated).expect("write docs/CONFIG.md");
            return;
        }
        panic!(
            "docs/CONFIG.md's key table is stale: run `UPDATE_CONFIG_DOC=1 cargo test --lib \
             config::doc_table` and commit the result. Expected:\n{expected}"
        );
    }

    #[test]
    fn documented_defaults_match_the_declared_ones() {
        use figment::value::Value;
        let defaults: figment::value::Dict = figment::Figment::from(crate::Config::default())
            .extract()
            .unwrap();
        for k in KEYS {
            let Some(rest) = k.default.strip_prefix('`') else {
                continue;
            };
            let documented = &rest[..rest.find('`').unwrap()];
            match &defaults[k.name] {
                Value::Empty(..) => {} // an optional key whose default is described in words
                v => assert_eq!(super::super::values::shown(v), documented, "{}", k.name),
            }
        }
    }

    #[test]
    fn per_cache_keys_say_so() {
        for k in KEYS {
            assert_eq!(k.per_cache, k.doc.contains("set per cache"), "{}", k.name);
        }
    }
}
