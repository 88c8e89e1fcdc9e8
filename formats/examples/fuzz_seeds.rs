//! Writes the seed inputs of the format fuzz targets (`fuzz/`) into
//! `<dir>/<target>/<name>` (see `ferry_formats::fuzz::seeds`).
//!
//!     cargo run -p ferry-formats --example fuzz_seeds -- fuzz/corpus

fn main() -> std::io::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    for (target, name, bytes) in ferry_formats::fuzz::seeds::seeds()? {
        fs_err::create_dir_all(out.join(target))?;
        fs_err::write(out.join(target).join(name), bytes)?;
    }
    Ok(())
}
