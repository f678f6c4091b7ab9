//! The LVM storage backend (`LVMStorageBackend`): only the host check exists.
//!
//! SmartDomains' LVM backend gives each domain a logical volume (a snapshot of a base volume, or
//! a new volume filled from a base image) and removes it after use. That needs the kernel's
//! device-mapper and the `lvm2` tools. This build implements **only the check** for them:
//!
//! - [`check_host`] fails with [`Error::Unavailable`] naming what is missing: device-mapper
//!   (`/dev/mapper/control`, and `device-mapper` in `/proc/misc` or `/proc/devices`), or the
//!   `lvcreate` program.
//! - [`prepare`] runs that check, and on a host that passes it fails with
//!   [`Error::Unimplemented`]: the volume path (`lvcreate --snapshot`, or `lvcreate` and a copy
//!   of the base, then `lvremove` at cleanup) was not written, because the machine this was built
//!   on has no device-mapper to test it on, and an untested path that destroys volumes is worse
//!   than a clear refusal. Nothing ever succeeds falsely.
//! - [`cleanup`] therefore has nothing to remove and returns `Ok(None)`: no prepare of this build
//!   creates a volume.
//!
//! Guarantees: nothing is written anywhere (the check only reads `/dev`, `/proc` and `$PATH`);
//! cleanup is trivially idempotent.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The backend's name, as in descriptions and messages.
const BACKEND: &str = "LVMStorageBackend";

/// The device-mapper control node.
const MAPPER_CONTROL: &str = "/dev/mapper/control";

/// Where the kernel lists its misc devices and device majors.
const PROC_LISTS: [&str; 2] = ["/proc/misc", "/proc/devices"];

/// Where `lvcreate` is looked for besides `$PATH` (the sbin directories are often not in it).
const SBIN_DIRECTORIES: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// What an LVM storage backend is asked to do, for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvmSpec {
    /// The base image (raw or qcow2, possibly compressed), copied into the volume.
    pub base: PathBuf,
    /// The volume group the domain's logical volume is made in.
    pub volume_group: String,
    /// The volume's size in MiB; 0 for the base's size.
    pub disk_size_mib: u64,
    /// Whether [`cleanup`] saves the volume into `save_dir` before removing it.
    pub save_image: bool,
    /// Whether a saved image is compressed with zstd.
    pub compress_image: bool,
    /// Where saved images go.
    pub save_dir: PathBuf,
    /// The domain's name (also that of its logical volume).
    pub name: String,
    /// Where compressed bases are decompressed to.
    pub image_cache: PathBuf,
}

/// A logical volume made by [`prepare`] (never, in this build: see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedLvm {
    /// The volume's block device, e.g. `/dev/<vg>/<name>`.
    pub device: PathBuf,
}

/// Checks that this host can run LVM volumes: device-mapper in the kernel, and `lvcreate`.
///
/// # Errors
///
/// [`Error::Unavailable`] naming what is missing, e.g. "device-mapper is not available in this
/// kernel (no /dev/mapper/control): LVMStorageBackend needs it".
pub fn check_host() -> Result<()> {
    let proc_lists: Vec<&Path> = PROC_LISTS.iter().map(Path::new).collect();
    check_device_mapper(Path::new(MAPPER_CONTROL), &proc_lists)?;
    if find_program("lvcreate").is_none() {
        return Err(Error::Unavailable {
            backend: BACKEND,
            missing: "the program `lvcreate` (package lvm2) is not installed (not in $PATH nor in the sbin directories)".to_string(),
        });
    }
    Ok(())
}

/// Would make the domain's logical volume; in this build, checks the host and then refuses.
///
/// # Errors
///
/// [`Error::Unavailable`] on a host without device-mapper or `lvcreate` (see [`check_host`]);
/// [`Error::Unimplemented`] on a host that has them.
pub fn prepare(spec: &LvmSpec) -> Result<PreparedLvm> {
    let _ = spec;
    check_host()?;
    Err(Error::Unimplemented {
        backend: BACKEND,
        reason: "this build only checks for device-mapper and lvm2: the volume path was never tested on a host that has them, so it is not offered (use QcowStorageBackend or LoopbackStorageBackend)",
    })
}

/// Would remove the domain's logical volume; no prepare of this build makes one, so there is
/// nothing to remove or save.
///
/// # Errors
///
/// None in this build.
pub fn cleanup(spec: &LvmSpec) -> Result<Option<PathBuf>> {
    let _ = spec;
    Ok(None)
}

/// Checks for device-mapper: the control node `control`, and `device-mapper` listed in one of
/// `proc_lists`.
fn check_device_mapper(control: &Path, proc_lists: &[&Path]) -> Result<()> {
    if fs::symlink_metadata(control).is_err() {
        return Err(Error::Unavailable {
            backend: BACKEND,
            missing: format!(
                "device-mapper is not available in this kernel (no {})",
                control.display()
            ),
        });
    }
    let listed = proc_lists.iter().any(|list| {
        fs::read_to_string(list).is_ok_and(|text| {
            text.lines()
                .any(|line| line.split_whitespace().nth(1) == Some("device-mapper"))
        })
    });
    if !listed {
        let lists: Vec<String> = proc_lists
            .iter()
            .map(|list| list.display().to_string())
            .collect();
        return Err(Error::Unavailable {
            backend: BACKEND,
            missing: format!(
                "device-mapper is not available in this kernel (not listed in {})",
                lists.join(" nor ")
            ),
        });
    }
    Ok(())
}

/// The executable `program` in `$PATH` or the sbin directories.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRECTORIES.iter().map(PathBuf::from))
        .map(|directory| directory.join(program))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|metadata| {
                metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_control_node_names_the_kernel_feature() {
        let scratch = tempfile::tempdir().unwrap();
        let error = check_device_mapper(&scratch.path().join("control"), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "device-mapper is not available in this kernel (no {}): LVMStorageBackend needs it",
                scratch.path().join("control").display()
            )
        );
    }

    #[test]
    fn the_kernel_must_list_device_mapper() {
        let scratch = tempfile::tempdir().unwrap();
        let control = scratch.path().join("control");
        fs::write(&control, b"").unwrap();
        let misc = scratch.path().join("misc");
        let devices = scratch.path().join("devices");
        fs::write(&misc, " 237 loop-control\n 229 fuse\n").unwrap();
        fs::write(&devices, "Block devices:\n  7 loop\n").unwrap();
        let error = check_device_mapper(&control, &[&misc, &devices]).unwrap_err();
        assert!(error.to_string().contains("not listed in"), "{error}");
        fs::write(&devices, "Block devices:\n  7 loop\n254 device-mapper\n").unwrap();
        check_device_mapper(&control, &[&misc, &devices]).unwrap();
        fs::write(&devices, "").unwrap();
        fs::write(&misc, " 236 device-mapper\n").unwrap();
        check_device_mapper(&control, &[&misc, &devices]).unwrap();
    }

    #[test]
    fn programs_are_found_in_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-here").is_none());
    }

    #[test]
    fn this_host_gets_a_clear_refusal_and_cleanup_is_a_no_op() {
        let spec = LvmSpec {
            base: PathBuf::from("/nonexistent/base.raw"),
            volume_group: "vg".to_string(),
            disk_size_mib: 0,
            save_image: true,
            compress_image: true,
            save_dir: PathBuf::from("/nonexistent/saved"),
            name: "vm1".to_string(),
            image_cache: PathBuf::from("/nonexistent/images"),
        };
        let error = prepare(&spec).unwrap_err();
        if !Path::new(MAPPER_CONTROL).exists() {
            assert_eq!(
                error.to_string(),
                "device-mapper is not available in this kernel (no /dev/mapper/control): LVMStorageBackend needs it"
            );
        } else {
            assert!(
                matches!(
                    error,
                    Error::Unavailable { .. } | Error::Unimplemented { .. }
                ),
                "{error}"
            );
        }
        assert_eq!(cleanup(&spec).unwrap(), None);
        assert_eq!(cleanup(&spec).unwrap(), None);
    }
}
