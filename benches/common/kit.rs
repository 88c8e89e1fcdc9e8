//! What `tests/it/testhosts.rs` takes from the integration tests' kit, for
//! the benchmarks that start test hosts (they include this file as `kit`).

pub fn sh(script: &str) -> String {
    let out = std::process::Command::new("sh").arg("-c").arg(script).output().expect("sh runs");
    assert!(out.status.success(), "sh -c {script:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn tempdir() -> tempfile::TempDir {
    let parent = std::env::var_os("FERRY_BENCH_SCRATCH").map_or_else(std::env::temp_dir, Into::into);
    tempfile::Builder::new().prefix("ferry-bench-").tempdir_in(parent).expect("a scratch directory")
}

pub fn is_root() -> bool {
    sh("id -u").trim() == "0"
}

/// `n` free TCP ports of this machine (the kernel's choice), for the S3
/// test server (only the fleet benchmark starts one).
#[allow(dead_code)]
pub fn local_ports(n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let l = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("a free port");
            u32::from(l.local_addr().expect("its address").port())
        })
        .collect()
}
