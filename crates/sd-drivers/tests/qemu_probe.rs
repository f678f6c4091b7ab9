//! The accelerator probe against the real QEMU (skipped where QEMU is not installed).

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use sd_drivers::qemu::{QEMU_BINARY, find_binary, host_kernel, probe_accelerator};

#[tokio::test]
async fn the_probe_decides_within_its_timeout() {
    let Some(qemu) = find_binary(Path::new(QEMU_BINARY)) else {
        eprintln!("skipped: {QEMU_BINARY} is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let kernel = host_kernel();
    let probe = probe_accelerator(&qemu, kernel.as_deref(), dir.path(), Duration::from_secs(5))
        .await
        .unwrap();
    eprintln!("accelerator here: {probe:?} in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "the probe leaves nothing behind"
    );
}
