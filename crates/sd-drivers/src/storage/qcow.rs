//! The qcow storage backend (`QcowStorageBackend`): a qcow2 copy-on-write overlay over a base
//! image, made at prepare and removed after use.
//!
//! [`prepare`] makes the overlay `disk` with `qemu-img create -f qcow2 -F <raw|qcow2> -b <base>`
//! (the base's format is found with `qemu-img info` and always passed, never probed again by
//! qemu); a `.zst` or `.gz` base is first decompressed once into the image cache (see
//! [`image::uncompressed_base`]). The guest's writes go to the overlay only: the base is never
//! written, and one base serves any number of domains. [`cleanup`] removes the overlay, after
//! saving it as a standalone image (`<saveDir>/<name>-<unix seconds>.qcow2`, or `.qcow2.zst`)
//! when the domain asks for `saveImage true`.
//!
//! Guarantees:
//! - Nothing is written outside the paths given: the overlay `disk` (and its temporary sibling
//!   `<disk>.preparing-<pid>`, and its missing parent directories), the image cache, and the
//!   save directory. The base is only read.
//! - The overlay is made under the temporary name, synced, and renamed into place: `disk` only
//!   ever names a complete overlay. An existing `disk` is refused, never replaced. A prepare that
//!   fails removes what it created (the temporary file, the parents it made).
//! - [`cleanup`] is idempotent: it can be repeated, also after a crash at any point of prepare or
//!   cleanup (it removes the temporary siblings too). If saving fails the overlay is kept, so
//!   that nothing is lost and cleanup can be retried.
//!
//! The overlay's backing file is recorded as an absolute path: the base (or cached
//! decompressed base) must stay where it is while the overlay exists.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::files;
use super::image::{self, ImageFormat};
use super::run;
use crate::{Result, io_error};

/// What a qcow storage backend is asked to do, for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QcowSpec {
    /// The base image: raw or qcow2, possibly compressed (`.zst`, `.gz`).
    pub base: PathBuf,
    /// Where the overlay goes. It must not exist yet; missing parents are created.
    pub disk: PathBuf,
    /// The disk's size in MiB; 0 for the base's size. It may not be smaller than the base.
    pub disk_size_mib: u64,
    /// Whether [`cleanup`] saves the disk into `save_dir` before removing it.
    pub save_image: bool,
    /// Whether a saved image is compressed with zstd (`.qcow2.zst`) or a plain `.qcow2`.
    pub compress_image: bool,
    /// Where saved images go; created if missing.
    pub save_dir: PathBuf,
    /// The domain's name, used in the saved image's file name.
    pub name: String,
    /// Where compressed bases are decompressed to (shared by all domains), e.g.
    /// `<data dir>/images`; created if missing.
    pub image_cache: PathBuf,
}

/// An overlay made by [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedQcow {
    /// The overlay: the spec's `disk` (format qcow2).
    pub disk: PathBuf,
    /// Its backing file, absolute: the base, or its decompressed copy in the image cache.
    pub backing_file: PathBuf,
    /// The backing file's format.
    pub backing_format: ImageFormat,
    /// The size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
}

/// Makes the overlay `spec.disk` over `spec.base`.
///
/// # Errors
///
/// [`Error::MissingBase`](crate::Error::MissingBase) if the base does not exist;
/// [`Error::BadBase`](crate::Error::BadBase) if it is not a raw or qcow2 image or does not
/// decompress; [`Error::DiskSize`](crate::Error::DiskSize) if `disk_size_mib` is smaller than the
/// base; [`Error::Io`](crate::Error::Io) if `disk` exists or cannot be written;
/// [`Error::Command`](crate::Error::Command) if `qemu-img` fails.
pub fn prepare(spec: &QcowSpec) -> Result<PreparedQcow> {
    let disk = &spec.disk;
    files::refuse_existing(disk)?;
    let staging = files::staging_path(disk, std::process::id())?;
    let base = image::uncompressed_base(&spec.base, &spec.image_cache)?;
    let base_info = image::info(&base)?;
    let size = image::disk_size(disk, spec.disk_size_mib, &base, base_info.virtual_size)?;

    // A leftover of an earlier run of a process that had our pid: it cannot be in use.
    files::remove_file_if_exists(&staging).map_err(io_error("cannot remove", &staging))?;
    let created_parents = files::create_parents(disk)?;
    let outcome = create_overlay(&base, base_info.format, size, &staging).and_then(|()| {
        files::rename_no_replace(&staging, disk)
            .map_err(io_error("cannot rename the prepared overlay to", disk))
    });
    if outcome.is_err() {
        // Best effort: the error that made us roll back is the one worth reporting.
        let _ = files::remove_file_if_exists(&staging);
        files::remove_created_parents(&created_parents);
    }
    outcome?;
    files::sync_parent(disk);
    Ok(PreparedQcow {
        disk: disk.clone(),
        backing_file: base,
        backing_format: base_info.format,
        virtual_size: size.unwrap_or(base_info.virtual_size),
    })
}

/// `qemu-img create` of the overlay `target` over `base`, then synced.
fn create_overlay(
    base: &Path,
    base_format: ImageFormat,
    size: Option<u64>,
    target: &Path,
) -> Result<()> {
    let target = files::absolute(target)?;
    let size = size.map(|bytes| bytes.to_string());
    let mut args = vec![
        OsStr::new("create"),
        OsStr::new("-q"),
        OsStr::new("-f"),
        OsStr::new("qcow2"),
        OsStr::new("-F"),
        OsStr::new(base_format.as_str()),
        OsStr::new("-b"),
        base.as_os_str(),
        target.as_os_str(),
    ];
    if let Some(size) = &size {
        args.push(OsStr::new(size));
    }
    run("qemu-img", &args)?;
    files::sync_file(&target)
}

/// Saves the overlay if `spec.save_image`, then removes it.
///
/// Returns the saved image's path (a standalone qcow2, flattened: no backing file), or `None`
/// when nothing was saved (`save_image` is false, or the overlay no longer exists). The domain
/// must be stopped first. The base and the image cache are left as they are.
///
/// # Errors
///
/// [`Error::Command`](crate::Error::Command) or [`Error::Io`](crate::Error::Io) if the image
/// cannot be saved (the overlay is then kept) or the overlay cannot be removed.
pub fn cleanup(spec: &QcowSpec) -> Result<Option<PathBuf>> {
    let disk = &spec.disk;
    files::remove_staging_leftovers(disk, files::remove_file_if_exists)?;
    match fs::symlink_metadata(disk) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("cannot clean up", disk)(error)),
    }
    let saved = if spec.save_image {
        Some(image::save_image(
            disk,
            ImageFormat::Qcow2,
            &spec.save_dir,
            &spec.name,
            spec.compress_image,
        )?)
    } else {
        None
    };
    files::remove_file_if_exists(disk).map_err(io_error("cannot remove", disk))?;
    Ok(saved)
}
