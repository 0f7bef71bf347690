//! Audit checks that run with the tests: `unsafe` appears only in `src/net/sockopt.rs`, and the
//! crate root denies it everywhere else (so a new `unsafe` block elsewhere fails to compile,
//! and an `allow` elsewhere fails this test).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn unsafe_is_confined_to_sockopt() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 10);
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("unsafe")
                && rel != "src/net/sockopt.rs"
                && code.trim() != "#![deny(unsafe_code)]"
            {
                offenders.push(format!("{rel}:{}: {line}", n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "unsafe outside src/net/sockopt.rs:\n{}",
        offenders.join("\n")
    );
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("read lib.rs");
    assert!(lib.contains("#![deny(unsafe_code)]") || lib.contains("#![forbid(unsafe_code)]"));
    let sockopt =
        std::fs::read_to_string(root.join("src/net/sockopt.rs")).expect("read sockopt.rs");
    // Every unsafe block in the one allowed module states why it is sound.
    let blocks = sockopt.matches("unsafe {").count();
    let reasons = sockopt.matches("SAFETY").count();
    assert!(
        reasons >= blocks,
        "{blocks} unsafe blocks, {reasons} SAFETY comments"
    );
}
