//! The loopback storage backend (`LoopbackStorageBackend`, as in the SmartDomains paper): a raw
//! copy of a base image, attached to a loop device, detached and removed after use.
//!
//! [`prepare`] copies the base into the raw image `image` with `qemu-img convert -f <raw|qcow2>
//! -O raw` (a qcow2 base is converted; zeros become holes, so the copy takes only the space of
//! what the base holds), grows it to `disk_size_mib` when that is larger, then attaches it with
//! `losetup --find --show` and returns the loop device (`/dev/loopN`). A `.zst` or `.gz` base is
//! first decompressed once into the image cache (see [`image::uncompressed_base`]).
//! [`cleanup`] detaches every loop device backed by the image, then removes the image, after
//! saving it (`<saveDir>/<name>-<unix seconds>.raw`, or `.raw.zst`) when the domain asks for
//! `saveImage true`.
//!
//! Guarantees:
//! - Nothing is written outside the paths given: the image (and its temporary sibling
//!   `<image>.preparing-<pid>`, and its missing parent directories), the loop device attached to
//!   it, the image cache, and the save directory. The base is only read.
//! - The image is made under the temporary name, synced, and renamed into place before it is
//!   attached: `image` only ever names a complete copy. An existing `image` is refused, never
//!   replaced. A prepare that fails detaches and removes what it made.
//! - [`cleanup`] is idempotent and safe after a crash: loop devices are found by their backing
//!   file (`losetup -j <image>`, and `/sys/block/loop*/loop/backing_file` for an image that was
//!   deleted while attached), not by a device path remembered from prepare. An image is removed
//!   only once no loop device uses it: a device still held open by a process (`losetup -d` then
//!   only marks it to be detached at close) is an [`Error::LoopDeviceBusy`], and cleanup can be
//!   retried. If saving fails, the image is kept.
//!
//! Loop devices need root (or `CAP_SYS_ADMIN`); where `losetup` fails, the error names the
//! command and what it wrote on stderr.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::files;
use super::image::{self, ImageFormat};
use super::{run, shown_args};
use crate::{Error, Result, io_error};

/// How long [`cleanup`] waits for a detached loop device to go (udev may hold it open briefly).
const DETACH_WAIT: Duration = Duration::from_secs(2);

/// The interval of that wait.
const DETACH_POLL: Duration = Duration::from_millis(50);

/// What a loopback storage backend is asked to do, for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopbackSpec {
    /// The base image: raw or qcow2, possibly compressed (`.zst`, `.gz`).
    pub base: PathBuf,
    /// Where the raw copy goes. It must not exist yet; missing parents are created.
    pub image: PathBuf,
    /// The disk's size in MiB; 0 for the base's size. It may not be smaller than the base.
    pub disk_size_mib: u64,
    /// Whether [`cleanup`] saves the image into `save_dir` before removing it.
    pub save_image: bool,
    /// Whether a saved image is compressed with zstd (`.raw.zst`) or a plain `.raw`.
    pub compress_image: bool,
    /// Where saved images go; created if missing.
    pub save_dir: PathBuf,
    /// The domain's name, used in the saved image's file name.
    pub name: String,
    /// Where compressed bases are decompressed to (shared by all domains), e.g.
    /// `<data dir>/images`; created if missing.
    pub image_cache: PathBuf,
}

/// A raw image attached to a loop device, made by [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedLoopback {
    /// The raw image: the spec's `image`.
    pub image: PathBuf,
    /// The loop device it is attached to, e.g. `/dev/loop3`.
    pub device: PathBuf,
    /// The disk's size, in bytes.
    pub size: u64,
}

/// Copies `spec.base` into the raw image `spec.image` and attaches it to a free loop device.
///
/// # Errors
///
/// [`Error::MissingBase`] if the base does not exist; [`Error::BadBase`] if it is not a raw or
/// qcow2 image or does not decompress; [`Error::DiskSize`] if `disk_size_mib` is smaller than the
/// base; [`Error::Io`] if `image` exists or cannot be written; [`Error::Command`] if `qemu-img`
/// or `losetup` fails.
pub fn prepare(spec: &LoopbackSpec) -> Result<PreparedLoopback> {
    let image_path = &spec.image;
    files::refuse_existing(image_path)?;
    let staging = files::staging_path(image_path, std::process::id())?;
    let base = image::uncompressed_base(&spec.base, &spec.image_cache)?;
    let base_info = image::info(&base)?;
    let size = image::disk_size(
        image_path,
        spec.disk_size_mib,
        &base,
        base_info.virtual_size,
    )?
    .unwrap_or(base_info.virtual_size);

    // A leftover of an earlier run of a process that had our pid: it cannot be in use.
    files::remove_file_if_exists(&staging).map_err(io_error("cannot remove", &staging))?;
    let created_parents = files::create_parents(image_path)?;
    let made = copy_base(&base, base_info.format, size, &staging).and_then(|()| {
        files::rename_no_replace(&staging, image_path)
            .map_err(io_error("cannot rename the prepared image to", image_path))
    });
    if made.is_err() {
        let _ = files::remove_file_if_exists(&staging);
        files::remove_created_parents(&created_parents);
    }
    made?;
    files::sync_parent(image_path);

    match attach(image_path) {
        Ok(device) => Ok(PreparedLoopback {
            image: image_path.clone(),
            device,
            size,
        }),
        Err(error) => {
            // Best effort: the error that made us roll back is the one worth reporting.
            let _ = detach_all(image_path);
            let _ = files::remove_file_if_exists(image_path);
            files::remove_created_parents(&created_parents);
            Err(error)
        }
    }
}

/// Writes the raw copy of `base` into the new file `target`, `size` bytes long, synced.
fn copy_base(base: &Path, base_format: ImageFormat, size: u64, target: &Path) -> Result<()> {
    let target = files::absolute(target)?;
    run(
        "qemu-img",
        &[
            OsStr::new("convert"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new(base_format.as_str()),
            OsStr::new("-O"),
            OsStr::new("raw"),
            base.as_os_str(),
            target.as_os_str(),
        ],
    )?;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .map_err(io_error("cannot open", &target))?;
    let length = file
        .metadata()
        .map_err(io_error("cannot read", &target))?
        .len();
    if length < size {
        file.set_len(size)
            .map_err(io_error("cannot grow", &target))?;
    }
    // qemu-img does not flush what it wrote.
    file.sync_all().map_err(io_error("cannot sync", &target))
}

/// `losetup --find --show <image>`: attaches the image to a free loop device and returns it.
fn attach(image_path: &Path) -> Result<PathBuf> {
    let absolute = files::absolute(image_path)?;
    let args = [
        OsStr::new("--find"),
        OsStr::new("--show"),
        absolute.as_os_str(),
    ];
    let output = run("losetup", &args)?;
    let device = String::from_utf8_lossy(&output).trim().to_string();
    if !device.starts_with("/dev/") || device.contains(char::is_whitespace) {
        return Err(Error::CommandOutput {
            program: "losetup".to_string(),
            args: shown_args(&args),
            reason: format!("expected a device path, got `{device}`"),
        });
    }
    Ok(PathBuf::from(device))
}

/// Detaches every loop device backed by `image` (`losetup -d`), then waits briefly for them to
/// go.
///
/// # Errors
///
/// [`Error::LoopDeviceBusy`] if a device stays attached (it is held open);
/// [`Error::Command`] if `losetup` fails.
fn detach_all(image_path: &Path) -> Result<()> {
    let devices = attached_devices(image_path)?;
    if devices.is_empty() {
        return Ok(());
    }
    for device in &devices {
        if let Err(error) = run("losetup", &[OsStr::new("-d"), device.as_os_str()]) {
            // Gone in the meantime (another cleanup): what counts is the check below.
            if !attached_devices(image_path)?.contains(device) {
                continue;
            }
            return Err(error);
        }
    }
    let mut waited = Duration::ZERO;
    loop {
        let remaining = attached_devices(image_path)?;
        let Some(device) = remaining.into_iter().next() else {
            return Ok(());
        };
        if waited >= DETACH_WAIT {
            return Err(Error::LoopDeviceBusy {
                device,
                image: image_path.to_path_buf(),
            });
        }
        thread::sleep(DETACH_POLL);
        waited += DETACH_POLL;
    }
}

/// The loop devices backed by `image`: `losetup -j <image>` while the image exists, and the
/// devices whose `/sys/block/loopN/loop/backing_file` names it (also as `<image> (deleted)`).
pub fn attached_devices(image_path: &Path) -> Result<Vec<PathBuf>> {
    let absolute = files::absolute(image_path)?;
    let mut devices = Vec::new();
    if fs::metadata(&absolute).is_ok() {
        let output = run("losetup", &[OsStr::new("-j"), absolute.as_os_str()])?;
        devices.extend(parse_losetup_list(&String::from_utf8_lossy(&output)));
    }
    for device in devices_in_sysfs(&kernel_path(&absolute))? {
        if !devices.contains(&device) {
            devices.push(device);
        }
    }
    Ok(devices)
}

/// The device paths in the output of `losetup -j` (`/dev/loop3: [2049]:1234 (/path)` per line).
fn parse_losetup_list(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(device, _)| device.trim())
        .filter(|device| device.starts_with("/dev/"))
        .map(PathBuf::from)
        .collect()
}

/// `path` as the kernel reports a loop device's backing file: with symlinks resolved (those of
/// its directory only, if the file itself is gone).
fn kernel_path(absolute: &Path) -> PathBuf {
    if let Ok(canonical) = absolute.canonicalize() {
        return canonical;
    }
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map_or_else(|_| absolute.to_path_buf(), |parent| parent.join(name)),
        _ => absolute.to_path_buf(),
    }
}

/// The loop devices whose sysfs `backing_file` is `path` or `<path> (deleted)`.
fn devices_in_sysfs(path: &Path) -> Result<Vec<PathBuf>> {
    let sys_block = Path::new("/sys/block");
    let entries = match fs::read_dir(sys_block) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error("cannot list", sys_block)(error)),
    };
    let Some(path) = path.to_str() else {
        return Ok(Vec::new());
    };
    let deleted = format!("{path} (deleted)");
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list", sys_block))?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|name| name.starts_with("loop")) else {
            continue;
        };
        // Only an attached device has a backing file.
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        if backing == path || backing == deleted {
            devices.push(Path::new("/dev").join(name));
        }
    }
    Ok(devices)
}

/// Detaches the image's loop devices, saves the image if `spec.save_image`, then removes it.
///
/// Returns the saved image's path (raw, or zstd-compressed raw), or `None` when nothing was
/// saved (`save_image` is false, or the image no longer exists). The domain must be stopped
/// first. The base and the image cache are left as they are.
///
/// # Errors
///
/// [`Error::LoopDeviceBusy`] if a loop device of the image is still open (nothing is removed);
/// [`Error::Command`] if `losetup` or `qemu-img` fails; [`Error::Io`] if the image cannot be
/// saved (it is then kept) or removed.
pub fn cleanup(spec: &LoopbackSpec) -> Result<Option<PathBuf>> {
    let image_path = &spec.image;
    files::remove_staging_leftovers(image_path, files::remove_file_if_exists)?;
    detach_all(image_path)?;
    match fs::symlink_metadata(image_path) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("cannot clean up", image_path)(error)),
    }
    let saved = if spec.save_image {
        Some(image::save_image(
            image_path,
            ImageFormat::Raw,
            &spec.save_dir,
            &spec.name,
            spec.compress_image,
        )?)
    } else {
        None
    };
    files::remove_file_if_exists(image_path).map_err(io_error("cannot remove", image_path))?;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losetup_list_output() {
        let output = "/dev/loop0: [65024]:10551738 (/tmp/lt/a.img)\n\
                      /dev/loop12: [65024]:10551738 (/tmp/lt/a: b.img)\n";
        assert_eq!(
            parse_losetup_list(output),
            vec![PathBuf::from("/dev/loop0"), PathBuf::from("/dev/loop12")]
        );
        assert!(parse_losetup_list("").is_empty());
        assert!(parse_losetup_list("garbage\n").is_empty());
    }

    #[test]
    fn kernel_path_of_a_missing_file_resolves_its_directory() {
        let scratch = tempfile::tempdir().unwrap();
        let real = scratch.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, scratch.path().join("alias")).unwrap();
        let canonical = real.canonicalize().unwrap();
        assert_eq!(
            kernel_path(&scratch.path().join("alias/gone.img")),
            canonical.join("gone.img")
        );
        fs::write(real.join("here.img"), b"").unwrap();
        assert_eq!(
            kernel_path(&scratch.path().join("alias/here.img")),
            canonical.join("here.img")
        );
    }
}
