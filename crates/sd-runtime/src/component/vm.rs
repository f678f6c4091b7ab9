//! What makes a domain a QEMU virtual machine: its command line (built from the domain's
//! attributes), its readiness, its liveness through QMP and its graceful stop. The VMM is
//! otherwise supervised like any domain process (see `domain.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_drivers::qemu::qmp::Qmp;
use sd_drivers::qemu::{
    Accelerator, Disk, Machine, PortForward, QEMU_BINARY, QemuSpec, Readiness, host_tsc_khz,
    wait_ready,
};
use sd_lang::Component;

use super::Deployment;
use super::attributes::{number, seconds, strings, text};

/// A QEMU domain's settings and run directory.
pub(crate) struct Vm {
    description: Component,
    run_dir: Option<PathBuf>,
    boot_timeout: Duration,
    marker: String,
    port: u16,
    /// MiB the guest runs with after boot (the balloon target).
    memory_mib: u64,
    /// MiB it boots with.
    boot_memory_mib: u64,
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(component: &Component, attribute: &str) -> u64 {
    number(component, attribute)
        .filter(|n| *n > 0.0)
        .map_or(0, |n| n as u64)
}

fn existing(component: &Component, attribute: &str) -> Result<Option<PathBuf>, String> {
    let path = text(component, attribute);
    if path.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!(
            "`{attribute}` names `{}`, which does not exist",
            path.display()
        ));
    }
    Ok(Some(path))
}

impl Vm {
    pub fn new(description: &Component) -> Vm {
        let memory_mib = whole(description, "memory").max(16);
        #[allow(clippy::cast_possible_truncation)]
        let port = whole(description, "readyPort").min(u64::from(u16::MAX)) as u16;
        Vm {
            boot_timeout: seconds(description, "bootTimeout", Duration::from_secs(120)),
            marker: text(description, "readyMarker"),
            port,
            memory_mib,
            boot_memory_mib: whole(description, "maxMemory").max(memory_mib),
            description: description.clone(),
            run_dir: None,
        }
    }

    /// Checks the files and builds the VMM's argv; `run_dir` holds its QMP socket.
    pub async fn command(
        &mut self,
        deployment: &Deployment,
        index: usize,
        run_dir: &Path,
        disk: Option<Disk>,
        log: &Path,
    ) -> Result<Vec<String>, String> {
        let d = &self.description;
        let qemu = deployment.services.vm_host.qemu().ok_or_else(|| {
            format!(
                "the qemu driver is not available on node \"{}\": {QEMU_BINARY} is not installed",
                deployment.services.node
            )
        })?;
        let machine = Machine::parse(&text(d, "machine")).ok_or_else(|| {
            format!(
                "`machine` is \"{}\": use \"microvm\", \"pc\" or \"q35\"",
                text(d, "machine")
            )
        })?;
        let accelerator = match text(d, "accelerator").as_str() {
            "kvm" => Accelerator::Kvm,
            "tcg" => Accelerator::Tcg,
            "auto" | "" => deployment.services.vm_host.accelerator().await,
            other => {
                return Err(format!(
                    "`accelerator` is \"{other}\": use \"auto\", \"kvm\" or \"tcg\""
                ));
            }
        };
        let kernel = existing(d, "kernel")?.ok_or("`kernel` is empty: it must name a kernel")?;
        let initrd = existing(d, "initrd")?;
        let path = deployment.plan().components[index].path.clone();
        let domain_name = match text(d, "domainName") {
            name if name.is_empty() => path.last().cloned().unwrap_or_else(|| "vm".into()),
            name => name,
        };
        let hostname = match text(d, "hostname") {
            name if name.is_empty() => domain_name,
            name => name,
        };
        let mut cmdline = text(d, "cmdline");
        cmdline.push_str(" panic=-1");
        if machine == Machine::Microvm
            && !cmdline.contains("tsc_early_khz=")
            && let Some(khz) = host_tsc_khz()
        {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        cmdline.push_str(&format!(" sd.hostname={hostname}"));
        let ip = text(d, "ip");
        if !ip.is_empty() {
            cmdline.push_str(&format!(" sd.ip={ip}"));
        }
        let mut forwards = Vec::new();
        for entry in strings(d, "portForwards") {
            forwards.push(PortForward::parse(&entry).ok_or_else(|| {
                format!("`portForwards` entry \"{entry}\" is not \"tcp:HOSTPORT:GUESTPORT\"")
            })?);
        }
        let network = match text(d, "network").as_str() {
            "user" | "" => Some(forwards),
            "none" => None,
            other => {
                return Err(format!(
                    "`network` is \"{other}\": use \"user\" or \"none\""
                ));
            }
        };
        #[allow(clippy::cast_possible_truncation)]
        let vcpus = whole(d, "vcpus").clamp(1, 255) as u32;
        let spec = QemuSpec {
            binary: qemu,
            machine,
            accelerator,
            memory_mib: self.boot_memory_mib,
            vcpus,
            kernel,
            initrd,
            cmdline,
            disk,
            network,
            extra_args: strings(d, "qemuArgs"),
            run_dir: run_dir.to_path_buf(),
            log: log.to_path_buf(),
        };
        // Unix socket paths are limited to 107 bytes.
        if spec.qmp_socket().as_os_str().len() > 100 {
            return Err(format!(
                "the QMP socket path `{}` is too long for a Unix socket: use a shorter data dir or deployment name",
                spec.qmp_socket().display()
            ));
        }
        self.run_dir = Some(run_dir.to_path_buf());
        Ok(spec.argv())
    }

    /// Waits until the guest is ready (its marker or port), then sets its memory.
    pub async fn wait_ready(
        &self,
        log: &Path,
        log_offset: u64,
        alive: impl Fn() -> bool,
    ) -> Result<Duration, String> {
        let readiness = Readiness {
            marker: self.marker.clone(),
            port: self.port,
            log_offset,
        };
        let took = wait_ready(log, &readiness, self.boot_timeout, alive).await?;
        if self.boot_memory_mib > self.memory_mib {
            self.set_memory(self.memory_mib).await?;
        }
        Ok(took)
    }

    async fn qmp(&self) -> Result<Qmp, String> {
        let run_dir = self.run_dir.as_deref().ok_or("the VM is not deployed")?;
        Qmp::connect(&run_dir.join("qmp.sock"))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sets the running guest's memory to `mib` through the balloon, from now on (and for a
    /// reboot of the same VMM); `commit` false only checks that it can be done.
    pub async fn resize(&mut self, mib: u64, commit: bool) -> Result<(), String> {
        if !(16..=self.boot_memory_mib).contains(&mib) {
            return Err(format!(
                "must be between 16 and {} MiB: the VM booted with {} MiB (`maxMemory`), the most the balloon can give it",
                self.boot_memory_mib, self.boot_memory_mib
            ));
        }
        if !commit {
            // The balloon must answer: a VM that cannot be changed refuses in the first phase.
            let mut qmp = self.qmp().await?;
            return qmp.balloon().await.map(|_| ()).map_err(|e| e.to_string());
        }
        self.set_memory(mib).await?;
        self.memory_mib = mib;
        Ok(())
    }

    /// The guest's memory, through the balloon (MiB).
    pub async fn set_memory(&self, mib: u64) -> Result<(), String> {
        let mut qmp = self.qmp().await?;
        qmp.set_balloon(mib).await.map_err(|e| e.to_string())
    }

    /// The VM's run state must be `running`.
    pub async fn check_running(&self) -> Result<(), String> {
        let mut qmp = self.qmp().await?;
        match qmp.status().await.map_err(|e| e.to_string())?.as_str() {
            "running" => Ok(()),
            other => Err(format!("the VM is {other}")),
        }
    }

    /// Asks the guest to power off; the caller then waits for the VMM to end.
    pub async fn power_down(&self) {
        if let Ok(mut qmp) = self.qmp().await {
            let _ = qmp.powerdown().await;
        }
    }
}
