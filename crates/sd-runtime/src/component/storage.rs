//! The dir storage backend: a domain's working directory, prepared at deploy and removed
//! (saved first with `saveImage true`) at terminate. The preparing runs on a blocking thread.
//!
//! With a `shell` bound and a `setupScript`, the script runs through that shell in the new
//! directory once it is prepared (the paper's storage backends prepared disks through their
//! host's shell); a script that fails fails the deploy, and the directory is removed again.

use std::path::PathBuf;

use sd_drivers::storage::dir::{self, DirSpec};
use sd_lang::Value;

use super::Deployment;

/// A dir storage backend's own state.
pub(crate) struct DirStorage {
    spec: Option<DirSpec>,
}

fn text(deployment: &Deployment, index: usize, attribute: &str) -> Result<String, String> {
    match deployment.plan.component(index).get(attribute) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "`{attribute}` must be a string, not {}",
            other.type_name()
        )),
    }
}

fn flag(deployment: &Deployment, index: usize, attribute: &str, default: bool) -> bool {
    match deployment.plan.component(index).get(attribute) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    }
}

impl DirStorage {
    pub fn new() -> DirStorage {
        DirStorage { spec: None }
    }

    pub async fn deploy(&mut self, deployment: &Deployment, index: usize) -> Result<(), String> {
        let base = text(deployment, index, "baseImage")?;
        let save_dir = text(deployment, index, "saveDir")?;
        let domain_name = text(deployment, index, "domainName")?;
        let script = text(deployment, index, "setupScript")?;
        let path = deployment.plan.components[index].path.clone();
        let spec = DirSpec {
            base: (!base.is_empty()).then(|| PathBuf::from(base)),
            work_dir: deployment.component_dir("storage", index),
            save_image: flag(deployment, index, "saveImage", false),
            compress_image: flag(deployment, index, "compressImage", true),
            save_dir: if save_dir.is_empty() {
                deployment.services.data_dir.join("saved")
            } else {
                PathBuf::from(save_dir)
            },
            name: if domain_name.is_empty() {
                format!("{}-{}", deployment.name, path.join("-"))
            } else {
                domain_name
            },
        };
        let recovered = deployment
            .take_recovered(index)
            .is_some_and(|record| record.state != sd_proto::ComponentState::Deploying);
        if !(recovered && spec.work_dir.is_dir()) {
            let prepared = spec.clone();
            tokio::task::spawn_blocking(move || dir::prepare(&prepared))
                .await
                .map_err(|e| format!("preparing the directory stopped: {e}"))?
                .map_err(|e| e.to_string())?;
            if !script.is_empty()
                && let Err(reason) = self.setup(deployment, index, &spec, script).await
            {
                let cleaned = DirSpec {
                    save_image: false,
                    ..spec.clone()
                };
                let _ = tokio::task::spawn_blocking(move || dir::cleanup(&cleaned)).await;
                return Err(reason);
            }
        }
        deployment.publish_work_dir(index, Some(spec.work_dir.clone()));
        self.spec = Some(spec);
        Ok(())
    }

    async fn setup(
        &self,
        deployment: &Deployment,
        index: usize,
        spec: &DirSpec,
        script: String,
    ) -> Result<(), String> {
        let shell = deployment
            .bind_component(index, "shell")?
            .ok_or("`setupScript` needs a `shell` to run it")?;
        let shell = deployment.live_component(shell).ok_or_else(|| {
            format!(
                "its shell `{}` is not running (it must be deployed before this backend)",
                deployment.plan.components[shell].path_text()
            )
        })?;
        shell
            .exec(script, spec.work_dir.clone())
            .await
            .map(drop)
            .map_err(|e| format!("setupScript failed: {e}"))
    }

    pub fn ping(&self) -> Result<(), String> {
        match &self.spec {
            Some(spec) if spec.work_dir.is_dir() => Ok(()),
            Some(spec) => Err(format!("`{}` is gone", spec.work_dir.display())),
            None => Ok(()),
        }
    }

    pub async fn terminate(&mut self, deployment: &Deployment, index: usize) {
        deployment.publish_work_dir(index, None);
        let Some(spec) = self.spec.take() else {
            return;
        };
        let path = deployment.plan.components[index].path_text();
        match tokio::task::spawn_blocking(move || dir::cleanup(&spec)).await {
            Ok(Ok(Some(saved))) => deployment.services.records.note(
                &deployment.name,
                &path,
                "saved",
                format!("image saved to {}", saved.display()),
            ),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                deployment.record(index, |record| record.last_error = Some(error.to_string()));
            }
            Err(error) => {
                deployment.record(index, |record| record.last_error = Some(error.to_string()));
            }
        }
    }
}
