//! QEMU domains: the command line of a VM, its readiness, its graceful stop, and which
//! accelerator this host can use.
//!
//! The VMM is an ordinary supervised process (see [`crate::process`]): it runs in its own
//! process group with its output and the guest's serial console appended to the domain's log,
//! is watched through a pidfd and re-adopted by pid and start time. What is particular to a VM
//! is here:
//! - [`QemuSpec::process`]: the `qemu-system-x86_64` argv for a `microvm`, `pc` or `q35`
//!   machine, virtio devices (mmio on microvm, pci otherwise), user-mode networking with port
//!   forwards on the host's loopback, a QMP socket in the domain's run directory;
//! - [`wait_ready`]: readiness is a marker on the serial console or a forwarded TCP port that
//!   answers, within a deadline;
//! - [`qmp`]: status, `system_powerdown`, `quit`, and memory through the balloon device;
//! - [`probe_accelerator`]: whether KVM runs guest code here (nested KVM may hang), decided
//!   once per node by booting a one-instruction guest with a timeout.

pub mod qmp;

use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::ProcessSpec;
use crate::{Error, Result};

/// The QEMU binary sd runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// Minimal, virtio-mmio devices, fastest boot.
    Microvm,
    /// i440FX PC, virtio-pci devices.
    Pc,
    /// Q35 PC, virtio-pci devices.
    Q35,
}

impl Machine {
    /// Reads `"microvm"`, `"pc"` or `"q35"`.
    pub fn parse(text: &str) -> Option<Machine> {
        match text {
            "microvm" => Some(Machine::Microvm),
            "pc" => Some(Machine::Pc),
            "q35" => Some(Machine::Q35),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }

    /// The virtio device model of kind `kind` (`net`, `blk`, `balloon`) on this machine.
    fn virtio(self, kind: &str) -> String {
        match self {
            Machine::Microvm => format!("virtio-{kind}-device"),
            Machine::Pc | Machine::Q35 => format!("virtio-{kind}-pci"),
        }
    }
}

/// The accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accelerator {
    /// `kvm` or `tcg`.
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// A host port forwarded to a guest port (user-mode networking), on the host's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// `tcp` (true) or `udp` (false).
    pub tcp: bool,
    /// The host port.
    pub host: u16,
    /// The guest port.
    pub guest: u16,
}

impl PortForward {
    /// Reads `"tcp:HOSTPORT:GUESTPORT"` or `"udp:HOSTPORT:GUESTPORT"`.
    pub fn parse(text: &str) -> Option<PortForward> {
        let mut parts = text.split(':');
        let tcp = match parts.next()? {
            "tcp" => true,
            "udp" => false,
            _ => return None,
        };
        let host = parts.next()?.parse().ok()?;
        let guest = parts.next()?.parse().ok()?;
        parts
            .next()
            .is_none()
            .then_some(PortForward { tcp, host, guest })
    }
}

/// A disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// A file or a block device (a loop device).
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    /// The QEMU binary (usually [`QEMU_BINARY`], found on PATH).
    pub binary: PathBuf,
    /// The machine type.
    pub machine: Machine,
    /// The accelerator.
    pub accelerator: Accelerator,
    /// MiB the guest boots with (the balloon takes it down to the domain's `memory` later).
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line.
    pub cmdline: String,
    /// The disk, if any.
    pub disk: Option<Disk>,
    /// `None`: no network; otherwise user-mode networking with these forwards.
    pub network: Option<Vec<PortForward>>,
    /// Extra arguments, appended.
    pub extra_args: Vec<String>,
    /// The domain's run directory: the QMP socket lives there.
    pub run_dir: PathBuf,
    /// The domain's log: QEMU's own output and the guest's serial console.
    pub log: PathBuf,
}

impl QemuSpec {
    /// Where the QMP socket is.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    /// The argv.
    pub fn argv(&self) -> Vec<String> {
        let machine = self.machine;
        let mut argv: Vec<String> = vec![
            self.binary.display().to_string(),
            "-M".into(),
            machine.name().into(),
            "-accel".into(),
            self.accelerator.name().into(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.vcpus.max(1).to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            // A guest that dies (panic=-1 reboots) ends the VMM, so the domain ends.
            "-no-reboot".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-chardev".into(),
            format!("file,id=console,path={},append=on", self.log.display()),
            "-serial".into(),
            "chardev:console".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket().display()),
            "-device".into(),
            machine.virtio("balloon"),
        ];
        if let Some(initrd) = &self.initrd {
            argv.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        if let Some(forwards) = &self.network {
            let mut netdev = "user,id=net0".to_string();
            for forward in forwards {
                let proto = if forward.tcp { "tcp" } else { "udp" };
                netdev.push_str(&format!(
                    ",hostfwd={proto}:127.0.0.1:{}-:{}",
                    forward.host, forward.guest
                ));
            }
            argv.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!("{},netdev=net0", machine.virtio("net")),
            ]);
        }
        if let Some(disk) = &self.disk {
            argv.extend([
                "-drive".into(),
                format!(
                    "id=disk0,file={},format={},if=none",
                    disk.path.display(),
                    disk.format
                ),
                "-device".into(),
                format!("{},drive=disk0", machine.virtio("blk")),
            ]);
        }
        argv.extend(self.extra_args.iter().cloned());
        argv
    }

    /// The process that runs the VM.
    pub fn process(&self, env: Vec<(String, String)>) -> ProcessSpec {
        ProcessSpec {
            command: self.argv(),
            env,
            cwd: self.run_dir.clone(),
            log: self.log.clone(),
        }
    }
}

/// What makes a guest ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Text on the serial console (in the log after `log_offset`); empty: not used.
    pub marker: String,
    /// A host port (forwarded into the guest) that must answer with at least one byte;
    /// 0: not used.
    pub port: u16,
    /// Where this boot's output starts in the log (earlier boots' output is ignored).
    pub log_offset: u64,
}

/// Whether `needle` is in the log after `offset`.
fn log_holds(log: &Path, offset: u64, needle: &str) -> bool {
    let Ok(mut file) = std::fs::File::open(log) else {
        return false;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let mut text = Vec::new();
    // The console of a booting guest is small; a cap keeps a noisy one from costing memory.
    if file.take(64 << 20).read_to_end(&mut text).is_err() {
        return false;
    }
    text.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Whether something answers on the host's loopback `port` with at least one byte.
async fn port_answers(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let mut byte = [0u8; 1];
        (stream.read(&mut byte).await.ok()? > 0).then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(()))
    )
}

/// Waits until the guest is ready, or `timeout` passes, or `alive` says the VMM is gone.
/// Readiness with neither a marker nor a port is immediate.
pub async fn wait_ready(
    log: &Path,
    readiness: &Readiness,
    timeout: Duration,
    alive: impl Fn() -> bool,
) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let mut marker_seen = readiness.marker.is_empty();
    let mut port_seen = readiness.port == 0;
    loop {
        if !marker_seen {
            marker_seen = log_holds(log, readiness.log_offset, &readiness.marker);
        }
        if marker_seen && !port_seen {
            port_seen = port_answers(readiness.port).await;
        }
        if marker_seen && port_seen {
            return Ok(started.elapsed());
        }
        if !alive() {
            return Err("the VM ended before it was ready".into());
        }
        if started.elapsed() >= timeout {
            let missing = match (marker_seen, port_seen) {
                (false, _) => format!("no \"{}\" on its console", readiness.marker),
                _ => format!("port {} does not answer", readiness.port),
            };
            return Err(format!(
                "not ready within {} s: {missing}",
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo` ("cpu MHz"). A microvm guest under
/// TCG has no other clock to calibrate its TSC against (no PIT, HPET or ACPI PM timer) and
/// hangs in early boot on a busy host; `tsc_early_khz=` on its command line avoids that.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|line| line.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((mhz * 1000.0) as u64)
}

/// Whether `binary` can be run (found on PATH or at its path).
pub fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .find(|candidate| candidate.is_file())
}

/// The newest kernel in `/boot` (`vmlinuz-*`), to probe the accelerator with.
pub fn host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// What the accelerator probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The accelerator guests use here.
    pub accelerator: Accelerator,
    /// Why, in a few words (shown in the node's metadata).
    pub reason: String,
}

/// coreutils' `timeout`, which the KVM probe runs QEMU under.
const TIMEOUT_BINARY: &str = "/usr/bin/timeout";

/// Which accelerator boots guests here: KVM if `/dev/kvm` exists and `kernel` boots under it
/// to its end within `timeout`, otherwise TCG. With no root file system the kernel panics
/// after its early boot, and with `panic=-1` and `-no-reboot` QEMU then exits: that exit,
/// with the kernel's banner on the console, proves that KVM runs a real guest (nested KVM can
/// run trivial code and still hang a kernel at early boot). `work_dir` holds the console log.
pub async fn probe_accelerator(
    binary: &Path,
    kernel: Option<&Path>,
    work_dir: &Path,
    timeout: Duration,
) -> Result<Probe> {
    let tcg = |reason: String| Probe {
        accelerator: Accelerator::Tcg,
        reason,
    };
    if !Path::new("/dev/kvm").exists() {
        return Ok(tcg("no /dev/kvm".into()));
    }
    let Some(kernel) = kernel else {
        return Ok(tcg("no kernel to probe KVM with".into()));
    };
    let console = work_dir.join("kvm-probe.log");
    // Under coreutils' `timeout`, which kills QEMU by itself at the deadline: a probe whose
    // agent is SIGKILLed meanwhile must not leave a hung guest behind (the chaos runs found
    // such orphans, which `kill_on_drop` cannot catch).
    let wrapped = Path::new(TIMEOUT_BINARY).exists();
    let mut command = if wrapped {
        let mut command = tokio::process::Command::new(TIMEOUT_BINARY);
        command
            .args(["-s", "KILL", &format!("{}", timeout.as_secs_f64())])
            .arg(binary);
        command
    } else {
        tokio::process::Command::new(binary)
    };
    command
        .args(["-M", "pc", "-accel", "kvm", "-m", "128M", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: binary.display().to_string(),
        source,
    })?;
    // Under `timeout`, QEMU is killed at the deadline and the wrapper exits with 124 or 137
    // (killed by SIGKILL): a timeout too. Our own deadline is a little later, in case.
    let wait = if wrapped {
        timeout + Duration::from_secs(5)
    } else {
        timeout
    };
    let exited = match tokio::time::timeout(wait, child.wait()).await {
        Ok(Ok(status)) => !(wrapped && matches!(status.code(), Some(124 | 137))),
        Ok(Err(_)) => true,
        Err(_) => {
            let _ = child.kill().await;
            false
        }
    };
    let booted = log_holds(&console, 0, "Linux version");
    let _ = std::fs::remove_file(&console);
    Ok(match (exited, booted) {
        (true, true) => Probe {
            accelerator: Accelerator::Kvm,
            reason: format!("a kernel boots under KVM ({})", kernel.display()),
        },
        (true, false) => tcg("QEMU with KVM failed to boot a kernel".into()),
        (false, _) => tcg(format!(
            "a kernel under KVM did not finish booting within {} s (nested KVM hangs)",
            timeout.as_secs_f64()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(machine: Machine) -> QemuSpec {
        QemuSpec {
            binary: QEMU_BINARY.into(),
            machine,
            accelerator: Accelerator::Tcg,
            memory_mib: 128,
            vcpus: 1,
            kernel: "/g/vmlinuz".into(),
            initrd: Some("/g/initrd.img".into()),
            cmdline: "console=ttyS0 sd.hostname=h".into(),
            disk: Some(Disk {
                path: "/dev/loop3".into(),
                format: "raw".into(),
            }),
            network: Some(vec![PortForward {
                tcp: true,
                host: 17000,
                guest: 7000,
            }]),
            extra_args: vec!["-S".into()],
            run_dir: "/run/d".into(),
            log: "/log/d.log".into(),
        }
    }

    #[test]
    fn microvm_uses_mmio_devices_and_pc_uses_pci() {
        let argv = spec(Machine::Microvm).argv().join(" ");
        assert!(argv.contains("-M microvm -accel tcg -m 128M"), "{argv}");
        assert!(argv.contains("virtio-net-device,netdev=net0"), "{argv}");
        assert!(argv.contains("virtio-blk-device,drive=disk0"), "{argv}");
        assert!(argv.contains("hostfwd=tcp:127.0.0.1:17000-:7000"), "{argv}");
        assert!(
            argv.contains("-qmp unix:/run/d/qmp.sock,server=on,wait=off"),
            "{argv}"
        );
        assert!(
            argv.contains("file,id=console,path=/log/d.log,append=on"),
            "{argv}"
        );
        assert!(argv.ends_with("-S"), "extra arguments come last: {argv}");
        let argv = spec(Machine::Pc).argv().join(" ");
        assert!(argv.contains("virtio-net-pci") && argv.contains("virtio-balloon-pci"));
    }

    #[test]
    fn port_forwards_parse() {
        assert_eq!(
            PortForward::parse("udp:5353:53"),
            Some(PortForward {
                tcp: false,
                host: 5353,
                guest: 53
            })
        );
        assert_eq!(PortForward::parse("tcp:1"), None);
        assert_eq!(PortForward::parse("sctp:1:2"), None);
        assert_eq!(PortForward::parse("tcp:1:2:3"), None);
    }
}
