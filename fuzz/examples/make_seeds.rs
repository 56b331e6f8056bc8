//! Writes the seed corpus of the `queue` fuzz target: valid sessions, each
//! prefixed with its prelude mode and digests bytes (see src/lib.rs).
//!
//! Run from fuzz/: `cargo run --example make_seeds [DIR]` (default: seeds/queue).

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/queue"));
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    for (name, bytes) in nvmf_tpc_fuzz::seeds() {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).expect("write a seed");
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}
