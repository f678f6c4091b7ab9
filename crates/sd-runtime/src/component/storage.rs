//! Storage backends: what a domain runs or boots from, prepared at deploy and removed (saved
//! first with `saveImage true`) at terminate. The work itself is the drivers' (`sd_drivers::
//! storage`), run on a blocking thread.
//!
//! - Dir: a working directory, published to process domains as their `cwd`;
//! - Qcow: a qcow2 overlay over `baseImage`, published to VMs as a qcow2 disk;
//! - Loopback: a raw copy of `baseImage` on a loop device, published as a raw disk;
//! - LVM: refused on hosts without device-mapper, with the missing feature named.
//!
//! Everything lives under the deployment's `storage/PATH` directory (removed with it); a
//! compressed base is decompressed once per node into `DATA_DIR/images`, shared by domains.
//! With a `shell` bound and a `setupScript`, the script runs through that shell in the
//! backend's directory once it is prepared (the paper's storage backends prepared disks
//! through their host's shell); a script that fails fails the deploy, and all is removed again.

use std::path::{Path, PathBuf};

use sd_drivers::qemu::Disk;
use sd_drivers::storage::dir::{self, DirSpec};
use sd_drivers::storage::{loopback, lvm, qcow};
use sd_lang::Value;

use super::Deployment;
use crate::plan::Kind;

/// Which backend, with its driver spec once deployed.
enum Backend {
    Dir(DirSpec),
    Qcow(qcow::QcowSpec),
    Loopback(loopback::LoopbackSpec),
    Lvm(lvm::LvmSpec),
}

/// A storage backend's own state.
pub(crate) struct Storage {
    kind: Kind,
    backend: Option<Backend>,
    /// The backend's directory (for a disk backend, the directory holding its image).
    dir: Option<PathBuf>,
    /// The disk it publishes (disk backends).
    disk: Option<Disk>,
}

fn text(deployment: &Deployment, index: usize, attribute: &str) -> Result<String, String> {
    match deployment.plan().component(index).get(attribute) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "`{attribute}` must be a string, not {}",
            other.type_name()
        )),
    }
}

fn flag(deployment: &Deployment, index: usize, attribute: &str, default: bool) -> bool {
    match deployment.plan().component(index).get(attribute) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    }
}

fn size_mib(deployment: &Deployment, index: usize) -> u64 {
    match deployment.plan().component(index).get("diskSize") {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Value::Long(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// Runs a driver call on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> sd_drivers::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("the storage work stopped: {e}"))?
        .map_err(|e| e.to_string())
}

fn remove_dir(dir: &Path) {
    // Gone already is fine; anything else goes with the deployment's directory.
    let _ = std::fs::remove_dir_all(dir);
}

impl Storage {
    pub fn new(kind: Kind) -> Storage {
        Storage {
            kind,
            backend: None,
            dir: None,
            disk: None,
        }
    }

    /// Whether the disk or directory is saved when the backend is cleaned away (`saveImage`,
    /// live).
    pub fn set_save_image(&mut self, save: bool) {
        match &mut self.backend {
            Some(Backend::Dir(spec)) => spec.save_image = save,
            Some(Backend::Qcow(spec)) => spec.save_image = save,
            Some(Backend::Loopback(spec)) => spec.save_image = save,
            Some(Backend::Lvm(spec)) => spec.save_image = save,
            None => {}
        }
    }

    fn spec(&self, deployment: &Deployment, index: usize) -> Result<Backend, String> {
        let base = text(deployment, index, "baseImage")?;
        let save_dir = match text(deployment, index, "saveDir")? {
            dir if dir.is_empty() => deployment.services.data_dir.join("saved"),
            dir => PathBuf::from(dir),
        };
        let name = match text(deployment, index, "domainName")? {
            name if name.is_empty() => format!(
                "{}-{}",
                deployment.name,
                deployment.plan().components[index].path.join("-")
            ),
            name => name,
        };
        let save_image = flag(deployment, index, "saveImage", false);
        let compress_image = flag(deployment, index, "compressImage", true);
        let dir = deployment.component_dir("storage", index);
        let image_cache = deployment.services.data_dir.join("images");
        let disk_size_mib = size_mib(deployment, index);
        let base_path = || -> Result<PathBuf, String> {
            if base.is_empty() {
                Err("`baseImage` is empty: a disk backend needs an image to start from".into())
            } else {
                Ok(PathBuf::from(&base))
            }
        };
        Ok(match self.kind {
            Kind::QcowStorageBackend => Backend::Qcow(qcow::QcowSpec {
                base: base_path()?,
                disk: dir.join("disk.qcow2"),
                disk_size_mib,
                save_image,
                compress_image,
                save_dir,
                name,
                image_cache,
            }),
            Kind::LoopbackStorageBackend => Backend::Loopback(loopback::LoopbackSpec {
                base: base_path()?,
                image: dir.join("disk.raw"),
                disk_size_mib,
                save_image,
                compress_image,
                save_dir,
                name,
                image_cache,
            }),
            Kind::LvmStorageBackend => Backend::Lvm(lvm::LvmSpec {
                base: base_path()?,
                volume_group: text(deployment, index, "volumeGroup")?,
                disk_size_mib,
                save_image,
                compress_image,
                save_dir,
                name,
                image_cache,
            }),
            _ => Backend::Dir(DirSpec {
                base: (!base.is_empty()).then(|| PathBuf::from(&base)),
                work_dir: dir,
                save_image,
                compress_image,
                save_dir,
                name,
            }),
        })
    }

    pub async fn deploy(&mut self, deployment: &Deployment, index: usize) -> Result<(), String> {
        let backend = self.spec(deployment, index)?;
        let script = text(deployment, index, "setupScript")?;
        let dir = deployment.component_dir("storage", index);
        let recovered = deployment
            .take_recovered(index)
            .is_some_and(|record| record.state != sd_proto::ComponentState::Deploying);
        let outcome = self.prepare(&backend, &dir, recovered).await;
        self.backend = Some(backend);
        self.dir = Some(dir.clone());
        if let Err(reason) = outcome {
            // The failure to report is the prepare's; cleaning is best effort.
            let _ = self.clean(false).await;
            return Err(reason);
        }
        if !script.is_empty()
            && !recovered
            && let Err(reason) = setup(deployment, index, &dir, script).await
        {
            let _ = self.clean(false).await;
            return Err(reason);
        }
        match &self.backend {
            Some(Backend::Dir(spec)) => {
                deployment.publish_work_dir(index, Some(spec.work_dir.clone()));
            }
            _ => deployment.publish_disk(index, self.disk.clone()),
        }
        Ok(())
    }

    /// Prepares the backend, or (recovering) finds what the previous agent prepared.
    async fn prepare(
        &mut self,
        backend: &Backend,
        dir: &Path,
        recovered: bool,
    ) -> Result<(), String> {
        match backend {
            Backend::Dir(spec) => {
                if !(recovered && spec.work_dir.is_dir()) {
                    let spec = spec.clone();
                    blocking(move || dir::prepare(&spec)).await?;
                }
            }
            Backend::Qcow(spec) => {
                if !(recovered && spec.disk.is_file()) {
                    create_dir(dir)?;
                    let spec = spec.clone();
                    blocking(move || qcow::prepare(&spec)).await?;
                }
                self.disk = Some(Disk {
                    path: spec.disk.clone(),
                    format: "qcow2".into(),
                });
            }
            Backend::Loopback(spec) => {
                let attached = if recovered && spec.image.is_file() {
                    let image = spec.image.clone();
                    blocking(move || loopback::attached_devices(&image))
                        .await?
                        .into_iter()
                        .next()
                } else {
                    None
                };
                let device = match attached {
                    Some(device) => device,
                    None => {
                        create_dir(dir)?;
                        let spec = spec.clone();
                        blocking(move || loopback::prepare(&spec)).await?.device
                    }
                };
                self.disk = Some(Disk {
                    path: device,
                    format: "raw".into(),
                });
            }
            Backend::Lvm(spec) => {
                let spec = spec.clone();
                let prepared = blocking(move || lvm::prepare(&spec)).await?;
                self.disk = Some(Disk {
                    path: prepared.device,
                    format: "raw".into(),
                });
            }
        }
        Ok(())
    }

    pub fn ping(&self) -> Result<(), String> {
        let present = |path: &Path| {
            if path.exists() {
                Ok(())
            } else {
                Err(format!("`{}` is gone", path.display()))
            }
        };
        match (&self.backend, &self.disk) {
            (Some(Backend::Dir(spec)), _) => present(&spec.work_dir),
            (Some(_), Some(disk)) => present(&disk.path),
            _ => Ok(()),
        }
    }

    /// Removes what the backend made, saving it first if asked (`save`).
    async fn clean(&mut self, save: bool) -> Result<Option<PathBuf>, String> {
        let Some(backend) = self.backend.take() else {
            return Ok(None);
        };
        self.disk = None;
        let saved = match backend {
            Backend::Dir(mut spec) => {
                spec.save_image &= save;
                blocking(move || dir::cleanup(&spec)).await
            }
            Backend::Qcow(mut spec) => {
                spec.save_image &= save;
                blocking(move || qcow::cleanup(&spec)).await
            }
            Backend::Loopback(mut spec) => {
                spec.save_image &= save;
                blocking(move || loopback::cleanup(&spec)).await
            }
            Backend::Lvm(mut spec) => {
                spec.save_image &= save;
                blocking(move || lvm::cleanup(&spec)).await
            }
        };
        if saved.is_ok()
            && let Some(dir) = self.dir.take()
        {
            remove_dir(&dir);
        }
        saved
    }

    pub async fn terminate(&mut self, deployment: &Deployment, index: usize) {
        deployment.publish_work_dir(index, None);
        deployment.publish_disk(index, None);
        let path = deployment.plan().components[index].path_text();
        match self.clean(true).await {
            Ok(Some(saved)) => deployment.services.records.note(
                &deployment.name,
                &path,
                "saved",
                format!("image saved to {}", saved.display()),
            ),
            Ok(None) => {}
            Err(error) => {
                deployment.record(index, |record| record.last_error = Some(error));
            }
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))
}

/// Runs `setupScript` through the backend's shell, in its directory.
async fn setup(
    deployment: &Deployment,
    index: usize,
    dir: &Path,
    script: String,
) -> Result<(), String> {
    let shell = deployment
        .bind_component(index, "shell")?
        .ok_or("`setupScript` needs a `shell` to run it")?;
    let result = match deployment.live_component(shell) {
        Some(live) => live.exec(script, dir.to_path_buf()).await,
        // The shell runs on another node: a host's commands run where the directory is, so
        // this node runs them with the same interpreter and environment.
        None if deployment.runs_elsewhere(shell) => {
            let local = super::shell::Shell::new(deployment.plan().component(shell));
            local.check()?;
            local.run_here(script, dir.to_path_buf()).await
        }
        None => {
            return Err(format!(
                "its shell `{}` is not running (it must be deployed before this backend)",
                deployment.plan().components[shell].path_text()
            ));
        }
    };
    result
        .map(drop)
        .map_err(|e| format!("setupScript failed: {e}"))
}
