//! Embeds the web client: scans `../web-client` and generates a static table of
//! `(path, bytes, etag)` that `src/http.rs` serves, so the binary is self-contained.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File types served to browsers; anything else in web-client/ (tests, package.json, notes)
/// stays out of the binary.
const SERVED_EXTENSIONS: &[&str] = &[
    "html",
    "js",
    "mjs",
    "css",
    "svg",
    "png",
    "jpg",
    "jpeg",
    "webp",
    "ico",
    "woff2",
    "webmanifest",
    "wav",
    "ogg",
    "mp3",
    "txt",
];

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let web_dir = manifest_dir.join("../web-client");
    println!("cargo:rerun-if-changed=../web-client");
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    if web_dir.is_dir() {
        collect(&web_dir, &web_dir, &mut files);
    }
    files.sort();

    let mut out = String::from(
        "/// Embedded web client files: (path relative to web-client/, contents, quoted ETag).\n\
         pub static WEB_ASSETS: &[(&str, &[u8], &str)] = &[\n",
    );
    for (rel, abs) in &files {
        let bytes =
            std::fs::read(abs).unwrap_or_else(|e| panic!("cannot read {}: {e}", abs.display()));
        let etag = format!("\"{:016x}\"", fnv1a(&bytes));
        let _ = writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?}), {etag:?}),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    let out_path = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("web_assets.rs");
    std::fs::write(&out_path, out)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out_path.display()));
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "node_modules" || name == "test" || name == "tests" {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let is_test = name.ends_with(".test.js") || name.ends_with(".spec.js");
        if !SERVED_EXTENSIONS.contains(&ext) || is_test {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("walked path is under root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let abs = path.canonicalize().unwrap_or(path);
        files.push((rel, abs));
    }
}

/// FNV-1a: a stable content hash for ETags (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
