//! What this node offers its domains: its capacity (CPUs, memory), and for virtual machines
//! whether QEMU is installed and which accelerator boots guests here. The accelerator is probed once per node (a kernel booted under KVM with
//! a timeout, see `sd_drivers::qemu::probe_accelerator`) and recorded in the data dir, so a
//! later agent reuses it as long as QEMU and the probe kernel are the same files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_drivers::qemu::{
    Accelerator, Probe, QEMU_BINARY, find_binary, host_kernel, probe_accelerator,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// How long the probe kernel may take to boot under KVM before KVM is judged unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// The recorded probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Recorded {
    qemu: PathBuf,
    kernel: Option<PathBuf>,
    accelerator: String,
    reason: String,
}

/// The node's VM capabilities.
pub(crate) struct VmHost {
    qemu: Option<PathBuf>,
    record: PathBuf,
    probe: OnceCell<Probe>,
}

impl VmHost {
    /// `fixed`: the accelerator to use without probing.
    pub fn new(data_dir: &Path, fixed: Option<Accelerator>) -> VmHost {
        let probe = match fixed {
            Some(accelerator) => OnceCell::new_with(Some(Probe {
                accelerator,
                reason: "set in the agent's configuration".into(),
            })),
            None => OnceCell::new(),
        };
        VmHost {
            qemu: find_binary(Path::new(QEMU_BINARY)),
            record: data_dir.join("accelerator.json"),
            probe,
        }
    }

    /// The QEMU binary, if installed.
    pub fn qemu(&self) -> Option<PathBuf> {
        self.qemu.clone()
    }

    /// The probe's result (probing now if this node never did).
    pub async fn probe(&self) -> Option<Probe> {
        let qemu = self.qemu.clone()?;
        let probe = self
            .probe
            .get_or_init(|| async {
                let kernel = host_kernel();
                if let Some(recorded) = std::fs::read(&self.record)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Recorded>(&bytes).ok())
                    .filter(|r| r.qemu == qemu && r.kernel == kernel)
                {
                    return Probe {
                        accelerator: if recorded.accelerator == "kvm" {
                            Accelerator::Kvm
                        } else {
                            Accelerator::Tcg
                        },
                        reason: recorded.reason,
                    };
                }
                let dir = self
                    .record
                    .parent()
                    .unwrap_or(Path::new("/tmp"))
                    .to_path_buf();
                let probe = probe_accelerator(&qemu, kernel.as_deref(), &dir, PROBE_TIMEOUT)
                    .await
                    .unwrap_or_else(|error| Probe {
                        accelerator: Accelerator::Tcg,
                        reason: format!("the probe failed: {error}"),
                    });
                let recorded = Recorded {
                    qemu: qemu.clone(),
                    kernel,
                    accelerator: probe.accelerator.name().into(),
                    reason: probe.reason.clone(),
                };
                if let Ok(bytes) = serde_json::to_vec_pretty(&recorded) {
                    let temporary = self.record.with_extension("json.tmp");
                    if std::fs::write(&temporary, bytes).is_ok() {
                        let _ = std::fs::rename(&temporary, &self.record);
                    }
                }
                probe
            })
            .await;
        Some(probe.clone())
    }

    /// The accelerator `auto` means here.
    pub async fn accelerator(&self) -> Accelerator {
        self.probe()
            .await
            .map_or(Accelerator::Tcg, |probe| probe.accelerator)
    }

    /// One line for the node's metadata: `qemu: kvm (...)`, or why there is no VM driver.
    pub fn describe(&self) -> String {
        match (&self.qemu, self.probe.get()) {
            (None, _) => format!("unavailable: {QEMU_BINARY} is not installed"),
            (Some(_), None) => "qemu: accelerator not probed yet".into(),
            (Some(_), Some(probe)) => {
                format!("qemu: {} ({})", probe.accelerator.name(), probe.reason)
            }
        }
    }
}

/// What this host offers domains: its CPUs and its memory (from `/proc/meminfo`).
pub fn host_capacity() -> sd_placement::Resources {
    let vcpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib / 1024);
    sd_placement::Resources { vcpus, memory_mib }
}
