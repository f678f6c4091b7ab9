//! Embeds the component library (configs/prelude and configs/compat) into the crate, so
//! `#include "prelude.sf"` works from any directory with no installation step.

use std::fmt::Write;
use std::path::{Path, PathBuf};

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "sf") {
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((name, path));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let configs = manifest.join("../../configs");
    let mut files = Vec::new();
    for library in ["prelude", "compat"] {
        let root = configs.join(library);
        println!("cargo:rerun-if-changed={}", root.display());
        collect(&root, &root, &mut files);
    }
    let mut code = String::from(
        "/// The embedded library: (include name, text).\npub static FILES: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let path = path.canonicalize().expect("library file exists");
        writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("write to string");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("library.rs");
    std::fs::write(out, code).expect("write library.rs");
}
