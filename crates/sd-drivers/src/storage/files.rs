//! The file-level building blocks the storage backends share: staging names
//! (`<path>.preparing-<pid>`), the leftovers of interrupted work (staging siblings, partial saved
//! images), no-replace renames, syncs, and the names of saved images.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, Result, io_error};

/// Renames the complete image `partial` to its final name in `save_dir`, never replacing an
/// existing file, and syncs the directory (best effort).
pub(crate) fn publish_image(
    partial: &Path,
    save_dir: &Path,
    name: &str,
    unix_seconds: u64,
    extension: &str,
) -> Result<PathBuf> {
    let mut attempt = 0;
    loop {
        let image = save_dir.join(image_file_name(name, unix_seconds, extension, attempt));
        match rename_no_replace(partial, &image) {
            Ok(()) => {
                sync_directory(save_dir);
                return Ok(image);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => {
                attempt += 1
            }
            Err(error) => return Err(io_error("cannot save the image as", image)(error)),
        }
    }
}

/// `<name>-<seconds>.<extension>`; `<name>-<seconds>.<attempt>.<extension>` after a clash.
pub(crate) fn image_file_name(
    name: &str,
    unix_seconds: u64,
    extension: &str,
    attempt: u32,
) -> String {
    let name = sanitized_name(name);
    if attempt == 0 {
        format!("{name}-{unix_seconds}.{extension}")
    } else {
        format!("{name}-{unix_seconds}.{attempt}.{extension}")
    }
}

/// Replaces the characters of `name` that do not belong in a file name; never empty, never
/// starting with a dot.
pub(crate) fn sanitized_name(name: &str) -> String {
    let sanitized: String = name
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-') {
                character
            } else {
                '_'
            }
        })
        .collect();
    let sanitized = sanitized.trim_start_matches('.');
    if sanitized.is_empty() {
        "domain".to_string()
    } else {
        sanitized.to_string()
    }
}

/// `.<name>.partial-<pid>-<sequence>`: where an image is written before it gets its name (the
/// same form for every backend, so each removes the others' leftovers).
pub(crate) fn partial_file_name(name: &str, pid: u32, sequence: u64) -> String {
    format!(".{}.partial-{pid}-{sequence}", sanitized_name(name))
}

/// The pid in `candidate` if it is a partial image of `name` (see [`partial_file_name`]).
pub(crate) fn partial_file_pid(name: &str, candidate: &OsStr) -> Option<u32> {
    let rest = candidate
        .to_str()?
        .strip_prefix('.')?
        .strip_prefix(sanitized_name(name).as_str())?;
    let (pid, sequence) = rest.strip_prefix(".partial-")?.split_once('-')?;
    if !is_decimal(pid) || !is_decimal(sequence) {
        return None;
    }
    pid.parse().ok()
}

/// Removes, with `remove`, the partial images of `name` in `save_dir` left by processes that are
/// gone.
pub(crate) fn remove_partial_leftovers<T>(
    save_dir: &Path,
    name: &str,
    remove: impl Fn(&Path) -> io::Result<T>,
) -> Result<()> {
    let entries = fs::read_dir(save_dir).map_err(io_error("cannot list", save_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list", save_dir))?;
        let Some(pid) = partial_file_pid(name, &entry.file_name()) else {
            continue;
        };
        if process_is_gone(pid) {
            let leftover = entry.path();
            remove(&leftover).map_err(io_error("cannot remove", &leftover))?;
        }
    }
    Ok(())
}

/// Whether the process `pid` is certainly gone.
pub(crate) fn process_is_gone(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

pub(crate) fn is_decimal(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// `path` made absolute (against the current directory), without resolving symlinks.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(io_error("cannot make absolute", path))
}

/// Refuses a path that exists (even as a dangling symlink).
pub(crate) fn refuse_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(Error::Io {
            action: "cannot prepare",
            path: path.to_path_buf(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("cannot prepare", path)(error)),
    }
}

/// `<path>.preparing-<pid>`: where a disk or working directory is made before it gets its name.
pub(crate) fn staging_path(path: &Path, pid: u32) -> Result<PathBuf> {
    let Some(name) = path.file_name() else {
        return Err(Error::Io {
            action: "cannot prepare",
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path needs a name of its own",
            ),
        });
    };
    let mut staging_name = name.to_os_string();
    staging_name.push(format!(".preparing-{pid}"));
    Ok(path.with_file_name(staging_name))
}

/// Whether `candidate` (a sibling's file name) is `<name>.preparing-<pid>`.
pub(crate) fn is_staging_leftover(name: &OsStr, candidate: &OsStr) -> bool {
    let (Some(name), Some(candidate)) = (name.to_str(), candidate.to_str()) else {
        return false;
    };
    candidate
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(".preparing-"))
        .is_some_and(is_decimal)
}

/// Removes, with `remove`, every `<path>.preparing-<pid>` sibling (the leftovers of interrupted
/// prepares).
pub(crate) fn remove_staging_leftovers<T>(
    path: &Path,
    remove: impl Fn(&Path) -> io::Result<T>,
) -> Result<()> {
    let (Some(name), Some(parent)) = (path.file_name(), path.parent()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("cannot list", parent)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list", parent))?;
        if is_staging_leftover(name, &entry.file_name()) {
            let leftover = entry.path();
            remove(&leftover).map_err(io_error("cannot remove", &leftover))?;
        }
    }
    Ok(())
}

/// Creates the missing ancestors of `path`, returning those it created, outermost first.
pub(crate) fn create_parents(path: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut ancestor = path.parent();
    while let Some(candidate) = ancestor {
        if candidate.as_os_str().is_empty() || fs::symlink_metadata(candidate).is_ok() {
            break;
        }
        missing.push(candidate.to_path_buf());
        ancestor = candidate.parent();
    }
    missing.reverse();
    let mut created = Vec::new();
    for directory in missing {
        match fs::create_dir(&directory) {
            Ok(()) => created.push(directory),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                remove_created_parents(&created);
                return Err(io_error("cannot create", &directory)(error));
            }
        }
    }
    Ok(created)
}

/// Removes the directories [`create_parents`] created, innermost first (best effort: a
/// directory something else has since put a file into stays).
pub(crate) fn remove_created_parents(created: &[PathBuf]) {
    for directory in created.iter().rev() {
        let _ = fs::remove_dir(directory);
    }
}

/// Removes the file `path`; returns whether there was one.
pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Flushes the file `path` to disk.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(io_error("cannot sync", path))
}

/// Flushes the directory `dir` (its entries) to disk, best effort.
pub(crate) fn sync_directory(dir: &Path) {
    if let Ok(directory) = File::open(dir) {
        let _ = directory.sync_all();
    }
}

/// Syncs the directory that holds `path`, best effort.
pub(crate) fn sync_parent(path: &Path) {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_directory(parent),
        _ => sync_directory(Path::new(".")),
    }
}

/// Renames `from` to `to`, failing with `AlreadyExists` rather than replacing anything at `to`.
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags};
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: check, then rename (racy, but only there).
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        Err(errno) => Err(errno.into()),
    }
}
