//! The dir storage backend: a domain's working directory, made from a base and removed after use.
//!
//! [`prepare`] makes the working directory from a base: nothing (an empty directory), a directory
//! (copied), a `.tar` archive or a `.tar.zst` archive (unpacked, streaming). [`cleanup`] removes
//! it, after saving it as `<saveDir>/<name>-<unix seconds>.tar.zst` (or `.tar`) when the domain
//! asks for `saveImage true`.
//!
//! Guarantees:
//! - Nothing is written outside the working directory: archive entries with an absolute path,
//!   a `..` component, or a path through a symlink that leads out of the directory are refused;
//!   symlinks are copied, archived and unpacked as symlinks, never followed.
//! - The working directory is built under a temporary sibling name (`<work_dir>.preparing-<pid>`)
//!   and renamed into place at the end: the final name only ever holds a complete directory.
//!   A prepare that fails removes what it created before returning.
//! - A saved image is written under a temporary name in `saveDir` and renamed into place once
//!   complete and synced: `saveDir` never holds a truncated image under a final name.
//! - [`cleanup`] is idempotent: after a crash it can be repeated, and it also removes the
//!   leftovers of an interrupted prepare or save.
//!
//! Copies and unpacked archives keep the permission bits (`rwx` for user, group and others) and
//! the modification times of files, but not their owners, and therefore not the setuid, setgid
//! and sticky bits either. Bases and saved images hold regular files, directories and symlinks
//! only: a base holding a device node or a fifo is refused, and sockets, fifos and device nodes
//! are left out of a saved image (so that every saved image can be used as a base again).
//!
//! Everything here is synchronous, plain std I/O: callers run it on a blocking thread. Files are
//! streamed, never held in memory, and no size is limited.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::files::{
    create_parents, partial_file_name, publish_image, remove_partial_leftovers,
    remove_staging_leftovers, rename_no_replace, staging_path,
};
#[cfg(test)]
use super::files::{is_staging_leftover, partial_file_pid, process_is_gone};
use crate::{Error, Result, io_error};

/// The zstd level of saved images: fast, and most of the gain of the higher levels.
const ZSTD_LEVEL: i32 = 3;

/// The permission bits kept when copying or unpacking (no setuid, setgid or sticky bit).
const PERMISSION_BITS: u32 = 0o777;

/// The forms of base that [`prepare`] accepts, for error messages.
const ACCEPTED_BASES: &str = "a base must be a directory, a `.tar` archive or a `.tar.zst` archive (or empty, for an empty directory)";

/// Tells apart the temporary files of concurrent saves in one process.
static SAVE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// What a dir storage backend is asked to do, for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    /// What the working directory starts from: a directory, a `.tar` or a `.tar.zst` archive.
    /// `None` or an empty path gives an empty directory.
    pub base: Option<PathBuf>,
    /// Where the domain's working directory goes. It must not exist yet; missing parents are
    /// created (and removed again if the prepare fails).
    pub work_dir: PathBuf,
    /// Whether [`cleanup`] saves the working directory into `save_dir` before removing it.
    pub save_image: bool,
    /// Whether a saved image is compressed with zstd (`.tar.zst`) or a plain `.tar`.
    pub compress_image: bool,
    /// Where saved images go; created if missing.
    pub save_dir: PathBuf,
    /// The domain's name, used in the saved image's file name (characters other than ASCII
    /// letters, digits, `.`, `_` and `-` are replaced by `_`).
    pub name: String,
}

/// A working directory made by [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDir {
    /// The working directory: the spec's `work_dir`.
    pub path: PathBuf,
}

/// Makes the working directory `spec.work_dir` from `spec.base`.
///
/// A directory base is copied recursively (files, directories, symlinks as symlinks); a `.tar`
/// base is unpacked; a `.tar.zst` base is decompressed and unpacked as a stream. On error,
/// nothing of what this call created is left (neither the directory nor its missing parents).
///
/// # Errors
///
/// [`Error::MissingBase`] if the base does not exist; [`Error::BadBase`] if it is not one of the
/// accepted forms, holds a device node or fifo, is a corrupt archive, or holds an entry that would
/// land outside the working directory; [`Error::Io`] if the working directory already exists or
/// cannot be written.
pub fn prepare(spec: &DirSpec) -> Result<PreparedDir> {
    let work_dir = &spec.work_dir;
    match fs::symlink_metadata(work_dir) {
        Ok(_) => {
            return Err(Error::Io {
                action: "cannot prepare",
                path: work_dir.clone(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("cannot prepare", work_dir)(error)),
    }
    let base = classify_base(spec.base.as_deref())?;
    let staging = staging_path(work_dir, std::process::id())?;
    // A leftover of an earlier run of a process that had our pid: it cannot be in use.
    remove_tree(&staging).map_err(io_error("cannot remove", &staging))?;

    let created_parents = create_parents(work_dir)?;
    let outcome = build_and_rename(&base, &staging, work_dir);
    if outcome.is_err() {
        // Best effort: the error that made us roll back is the one worth reporting.
        let _ = remove_tree(&staging);
        for parent in created_parents.iter().rev() {
            let _ = fs::remove_dir(parent);
        }
    }
    outcome.map(|()| PreparedDir {
        path: work_dir.clone(),
    })
}

/// Saves the working directory if `spec.save_image`, then removes it.
///
/// Returns the saved image's path, or `None` when nothing was saved (`save_image` is false, or
/// the working directory no longer exists). Leftovers of an interrupted prepare
/// (`<work_dir>.preparing-<pid>`) are removed too, so cleanup is safe to repeat after a crash.
/// The domain must be stopped first: a directory that changes while it is saved gives an image
/// of no particular moment.
///
/// # Errors
///
/// [`Error::Io`] if the image cannot be written (the working directory is then kept, so that
/// nothing is lost and cleanup can be retried) or the directory cannot be removed.
pub fn cleanup(spec: &DirSpec) -> Result<Option<PathBuf>> {
    let work_dir = &spec.work_dir;
    remove_staging_leftovers(work_dir, remove_tree)?;
    let metadata = match fs::symlink_metadata(work_dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("cannot clean up", work_dir)(error)),
    };
    let saved = if spec.save_image {
        if !metadata.is_dir() {
            return Err(Error::Io {
                action: "cannot save the image of",
                path: work_dir.clone(),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        Some(save_image(spec)?)
    } else {
        None
    };
    remove_tree(work_dir).map_err(io_error("cannot remove", work_dir))?;
    Ok(saved)
}

/// What a base is, once looked at.
#[derive(Debug)]
enum Base {
    /// No base: an empty directory.
    Empty,
    /// A directory to copy.
    Directory(PathBuf),
    /// A plain tar archive.
    Tar(PathBuf),
    /// A zstd-compressed tar archive.
    TarZst(PathBuf),
}

fn classify_base(base: Option<&Path>) -> Result<Base> {
    let Some(path) = base.filter(|path| !path.as_os_str().is_empty()) else {
        return Ok(Base::Empty);
    };
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(Error::MissingBase(path.to_path_buf()));
        }
        Err(error) => return Err(io_error("cannot read", path)(error)),
    };
    if metadata.is_dir() {
        return Ok(Base::Directory(path.to_path_buf()));
    }
    let kind = archive_kind(path);
    if !metadata.is_file() || kind.is_none() {
        return Err(Error::BadBase {
            path: path.to_path_buf(),
            reason: ACCEPTED_BASES.to_string(),
        });
    }
    Ok(match kind {
        Some(ArchiveKind::TarZst) => Base::TarZst(path.to_path_buf()),
        _ => Base::Tar(path.to_path_buf()),
    })
}

/// The archive forms a base can take, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveKind {
    Tar,
    TarZst,
}

fn archive_kind(path: &Path) -> Option<ArchiveKind> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".tar.zst") {
        Some(ArchiveKind::TarZst)
    } else if name.ends_with(".tar") {
        Some(ArchiveKind::Tar)
    } else {
        None
    }
}

/// Fills `staging` from `base`, then renames it to `work_dir`.
fn build_and_rename(base: &Base, staging: &Path, work_dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(staging)
        .map_err(io_error("cannot create", staging))?;
    match base {
        Base::Empty => {}
        Base::Directory(source) => {
            refuse_copy_into_itself(source, staging)?;
            copy_tree(source, staging)?;
        }
        Base::Tar(archive) => {
            let file = File::open(archive).map_err(io_error("cannot open", archive))?;
            unpack(BufReader::new(file), archive, staging)?;
        }
        Base::TarZst(archive) => {
            let file = File::open(archive).map_err(io_error("cannot open", archive))?;
            let decoder = zstd::stream::read::Decoder::new(file)
                .map_err(io_error("cannot decompress", archive))?;
            unpack(decoder, archive, staging)?;
        }
    }
    rename_no_replace(staging, work_dir).map_err(io_error(
        "cannot rename the prepared directory to",
        work_dir,
    ))
}

/// Whether `inner` is `outer` or below it, both followed through symlinks.
fn is_within(inner: &Path, outer: &Path) -> Result<bool> {
    let outer_canonical = outer
        .canonicalize()
        .map_err(io_error("cannot read", outer))?;
    let inner_canonical = inner
        .canonicalize()
        .map_err(io_error("cannot read", inner))?;
    Ok(inner_canonical.starts_with(&outer_canonical))
}

/// Refuses a base directory that contains the place its copy goes (the copy would never end).
fn refuse_copy_into_itself(source: &Path, staging: &Path) -> Result<()> {
    if is_within(staging, source)? {
        return Err(Error::BadBase {
            path: source.to_path_buf(),
            reason: format!(
                "the working directory `{}` would be inside it",
                staging.display()
            ),
        });
    }
    Ok(())
}

/// Copies the contents of the directory `source` into the existing, empty directory `target`.
///
/// Walks with an explicit stack (no recursion, so no depth limit); never follows a symlink below
/// `source`. Directory permissions are applied last, so that read-only directories can be filled.
fn copy_tree(source: &Path, target: &Path) -> Result<()> {
    let source_metadata = fs::metadata(source).map_err(io_error("cannot read", source))?;
    let mut directory_modes = vec![(target.to_path_buf(), source_metadata.mode())];
    let mut pending = vec![(source.to_path_buf(), target.to_path_buf())];
    while let Some((from_dir, to_dir)) = pending.pop() {
        let entries = fs::read_dir(&from_dir).map_err(io_error("cannot list", &from_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("cannot list", &from_dir))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let metadata = fs::symlink_metadata(&from).map_err(io_error("cannot read", &from))?;
            let file_type = metadata.file_type();
            if file_type.is_dir() {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&to)
                    .map_err(io_error("cannot create", &to))?;
                directory_modes.push((to.clone(), metadata.mode()));
                pending.push((from, to));
            } else if file_type.is_symlink() {
                let link = fs::read_link(&from).map_err(io_error("cannot read", &from))?;
                std::os::unix::fs::symlink(&link, &to).map_err(io_error("cannot create", &to))?;
            } else if file_type.is_file() {
                copy_file(&from, &to)?;
            } else {
                return Err(Error::BadBase {
                    path: source.to_path_buf(),
                    reason: format!(
                        "`{}` is a {}: a base directory may hold only files, directories and symlinks",
                        from.display(),
                        special_kind(&metadata),
                    ),
                });
            }
        }
    }
    for (directory, mode) in directory_modes.iter().rev() {
        fs::set_permissions(
            directory,
            fs::Permissions::from_mode(mode & PERMISSION_BITS),
        )
        .map_err(io_error("cannot set the permissions of", directory))?;
    }
    Ok(())
}

/// Names the kind of a file that is neither a regular file, a directory nor a symlink.
fn special_kind(metadata: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Opens a regular file for reading without following a symlink in its last component.
fn open_no_follow(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Copies one regular file, streaming, with its permission bits and modification time.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let mut source = open_no_follow(from).map_err(io_error("cannot read", from))?;
    let metadata = source.metadata().map_err(io_error("cannot read", from))?;
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_error("cannot create", to))?;
    // `io::copy` between two files uses `copy_file_range`: the kernel copies, without a buffer here.
    io::copy(&mut source, &mut target).map_err(io_error("cannot copy", from))?;
    target
        .set_permissions(fs::Permissions::from_mode(
            metadata.mode() & PERMISSION_BITS,
        ))
        .map_err(io_error("cannot set the permissions of", to))?;
    if let Ok(modified) = metadata.modified() {
        target
            .set_modified(modified)
            .map_err(io_error("cannot set the times of", to))?;
    }
    Ok(())
}

/// A reader that remembers its last error, so that a failure seen through a library (tar)
/// can be blamed on the right side: the data read, or the place written.
struct WatchedRead<R> {
    inner: R,
    failure: Rc<Cell<Option<String>>>,
}

impl<R> WatchedRead<R> {
    fn new(inner: R, failure: Rc<Cell<Option<String>>>) -> Self {
        Self { inner, failure }
    }
}

impl<R: Read> Read for WatchedRead<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let outcome = self.inner.read(buffer);
        if let Err(error) = &outcome
            && error.kind() != io::ErrorKind::Interrupted
        {
            self.failure.set(Some(error.to_string()));
        }
        outcome
    }
}

/// Unpacks the tar stream `reader` (read from the base `archive`) into the empty directory `root`.
///
/// Every entry is checked before it is written: see [`entry_destination`] and [`check_parents`].
/// Directory entries are applied last, deepest first, so that their permissions cannot stop the
/// unpacking of their contents (as `tar::Archive::unpack` does).
fn unpack(reader: impl Read, archive: &Path, root: &Path) -> Result<()> {
    let read_failure = Rc::new(Cell::new(None));
    let mut tar = tar::Archive::new(WatchedRead::new(reader, Rc::clone(&read_failure)));
    tar.set_preserve_permissions(false);
    tar.set_preserve_ownerships(false);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let root_canonical = root.canonicalize().map_err(io_error("cannot read", root))?;
    let bad = |reason: String| Error::BadBase {
        path: archive.to_path_buf(),
        reason,
    };
    let unreadable = |error: io::Error| {
        let cause = read_failure.take().unwrap_or_else(|| error.to_string());
        bad(format!("cannot read the archive: {cause}"))
    };

    let mut directories = Vec::new();
    for entry in tar.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let entry_type = entry.header().entry_type();
        if !is_supported_entry(entry_type) {
            return Err(bad(format!(
                "entry `{name}` is a {}: an archive base may hold only files, directories and symlinks",
                entry_kind(entry_type)
            )));
        }
        let path = entry
            .path()
            .map_err(|error| bad(format!("entry `{name}` has an unusable path: {error}")))?;
        let relative = match entry_destination(&path) {
            Ok(Some(relative)) => relative,
            // The archive's root itself ("./"): the working directory already exists.
            Ok(None) => continue,
            Err(problem) => return Err(bad(format!("entry `{name}` {problem}"))),
        };
        if entry_type.is_hard_link() {
            check_hard_link(&entry, root, &root_canonical)
                .map_err(|problem| bad(format!("entry `{name}` {problem}")))?;
        }
        if entry_type.is_dir() {
            directories.push((relative, entry));
            continue;
        }
        unpack_entry(
            entry,
            &name,
            &relative,
            root,
            &root_canonical,
            archive,
            &read_failure,
        )?;
    }
    directories.sort_by(|(left, _), (right, _)| right.cmp(left));
    for (relative, entry) in directories {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        unpack_entry(
            entry,
            &name,
            &relative,
            root,
            &root_canonical,
            archive,
            &read_failure,
        )?;
    }
    Ok(())
}

/// Checks that `entry` stays inside `root`, then writes it there.
fn unpack_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    name: &str,
    relative: &Path,
    root: &Path,
    root_canonical: &Path,
    archive: &Path,
    read_failure: &Cell<Option<String>>,
) -> Result<()> {
    let bad = |reason: String| Error::BadBase {
        path: archive.to_path_buf(),
        reason,
    };
    check_parents(root, root_canonical, relative)
        .map_err(|problem| bad(format!("entry `{name}` {problem}")))?;
    let destination = root.join(relative);
    match entry.unpack_in(root) {
        Ok(true) => Ok(()),
        Ok(false) => Err(bad(format!(
            "entry `{name}` would land outside the working directory"
        ))),
        Err(error) => {
            if let Some(cause) = read_failure.take() {
                return Err(bad(format!(
                    "cannot read the archive at entry `{name}`: {cause}"
                )));
            }
            if is_destination_failure(&error) {
                return Err(io_error("cannot unpack into", destination)(error));
            }
            Err(bad(format!("cannot unpack entry `{name}`: {error}")))
        }
    }
}

/// Whether an unpacking error comes from the host (disk full, permissions) rather than from
/// the archive's contents (truncated data, conflicting entries).
fn is_destination_failure(error: &io::Error) -> bool {
    use io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
            | ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::FileTooLarge
            | ErrorKind::OutOfMemory
            | ErrorKind::ResourceBusy
    )
}

fn is_supported_entry(entry_type: tar::EntryType) -> bool {
    use tar::EntryType;
    matches!(
        entry_type,
        EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    )
}

fn entry_kind(entry_type: tar::EntryType) -> String {
    use tar::EntryType;
    match entry_type {
        EntryType::Char => "character device".to_string(),
        EntryType::Block => "block device".to_string(),
        EntryType::Fifo => "fifo".to_string(),
        other => format!(
            "entry of unsupported type `{}`",
            char::from(other.as_byte()).escape_default()
        ),
    }
}

/// Where an archive entry named `path` goes, relative to the working directory: `Ok(None)` for
/// the directory itself (`.`, `./`), `Err` with the reason for a path that is absolute or
/// contains `..` (the error reads after "entry `NAME` ").
fn entry_destination(path: &Path) -> std::result::Result<Option<PathBuf>, &'static str> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => return Err("has an absolute path"),
            Component::ParentDir => {
                return Err("contains `..`: it would land outside the working directory");
            }
            Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
        }
    }
    Ok((!relative.as_os_str().is_empty()).then_some(relative))
}

/// Checks that the directories leading to `relative` (below `root`) do not go through a
/// symlink that leads out of `root`, or through a dangling one (tar would create what it points
/// to). The error reads after "entry `NAME` ".
fn check_parents(
    root: &Path,
    root_canonical: &Path,
    relative: &Path,
) -> std::result::Result<(), String> {
    let Some(parents) = relative.parent() else {
        return Ok(());
    };
    let mut current = root.to_path_buf();
    for part in parents.components() {
        current.push(part);
        let metadata = match fs::symlink_metadata(&current) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(format!("cannot be checked: {error}")),
        };
        if !metadata.file_type().is_symlink() {
            continue;
        }
        let shown = current.strip_prefix(root).unwrap_or(&current).display();
        match current.canonicalize() {
            Ok(target) if target.starts_with(root_canonical) => {}
            Ok(_) => {
                return Err(format!(
                    "goes through the symlink `{shown}`, which leads outside the working directory"
                ));
            }
            Err(_) => return Err(format!("goes through the dangling symlink `{shown}`")),
        }
    }
    Ok(())
}

/// Checks that a hard link entry links to something already unpacked inside `root`.
fn check_hard_link<R: Read>(
    entry: &tar::Entry<'_, R>,
    root: &Path,
    root_canonical: &Path,
) -> std::result::Result<(), String> {
    let target = match entry.link_name() {
        Ok(Some(target)) => target,
        Ok(None) => return Err("is a hard link without a target".to_string()),
        Err(error) => return Err(format!("has an unusable link target: {error}")),
    };
    let shown = target.display().to_string();
    let relative = match entry_destination(&target) {
        Ok(Some(relative)) => relative,
        Ok(None) => return Err("is a hard link to the working directory itself".to_string()),
        Err(problem) => return Err(format!("is a hard link to `{shown}`, which {problem}")),
    };
    match root.join(relative).canonicalize() {
        Ok(resolved) if resolved.starts_with(root_canonical) => Ok(()),
        Ok(_) => Err(format!(
            "is a hard link to `{shown}`, which leads outside the working directory"
        )),
        Err(_) => Err(format!(
            "is a hard link to `{shown}`, which is not in the archive before it"
        )),
    }
}

/// Removes `path` (a directory tree, or a single file or symlink) without following symlinks.
/// A missing path is not an error. Read-only directories are made writable when needed.
fn remove_tree(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.is_dir() {
        return ignore_not_found(fs::remove_file(path));
    }
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            make_directories_writable(path)?;
            ignore_not_found(fs::remove_dir_all(path))
        }
        outcome => ignore_not_found(outcome),
    }
}

fn ignore_not_found(outcome: io::Result<()>) -> io::Result<()> {
    match outcome {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        outcome => outcome,
    }
}

/// Gives the owner `rwx` on every directory of the tree at `root` (symlinks not followed).
fn make_directories_writable(root: &Path) -> io::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let metadata = fs::symlink_metadata(&directory)?;
        if !metadata.is_dir() {
            continue;
        }
        fs::set_permissions(
            &directory,
            fs::Permissions::from_mode(metadata.mode() | 0o700),
        )?;
        for entry in fs::read_dir(&directory)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// The extension of a saved image: `tar.zst`, or `tar` uncompressed.
fn archive_extension(compress: bool) -> &'static str {
    if compress { "tar.zst" } else { "tar" }
}

/// Archives `spec.work_dir` into `spec.save_dir`, returning the image's path.
fn save_image(spec: &DirSpec) -> Result<PathBuf> {
    let save_dir = &spec.save_dir;
    fs::create_dir_all(save_dir).map_err(io_error("cannot create", save_dir))?;
    refuse_save_inside(&spec.work_dir, save_dir)?;
    remove_partial_leftovers(save_dir, &spec.name, remove_tree)?;

    let sequence = SAVE_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let partial = save_dir.join(partial_file_name(&spec.name, std::process::id(), sequence));
    let outcome = write_image(&spec.work_dir, &partial, spec.compress_image).and_then(|()| {
        let unix_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        publish_image(
            &partial,
            save_dir,
            &spec.name,
            unix_seconds,
            archive_extension(spec.compress_image),
        )
    });
    if outcome.is_err() {
        let _ = fs::remove_file(&partial);
    }
    outcome
}

/// Refuses a save directory inside the directory being saved (it would archive itself, then be
/// removed with it).
fn refuse_save_inside(work_dir: &Path, save_dir: &Path) -> Result<()> {
    if is_within(save_dir, work_dir)? {
        return Err(Error::Io {
            action: "cannot save an image into",
            path: save_dir.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is inside the directory being saved",
            ),
        });
    }
    Ok(())
}

/// Writes the tar (zstd-compressed if `compress`) of the tree at `root` into the new file `path`,
/// synced to disk.
fn write_image(root: &Path, path: &Path, compress: bool) -> Result<()> {
    let write_failed = io_error("cannot write", path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(io_error("cannot create", path))?;
    let file = if compress {
        let encode = || -> io::Result<_> {
            let mut encoder = zstd::stream::write::Encoder::new(file, ZSTD_LEVEL)?;
            encoder.include_checksum(true)?;
            Ok(encoder)
        };
        let encoder = encode().map_err(io_error("cannot write", path))?;
        let encoder = write_tree(root, path, encoder)?;
        encoder.finish().map_err(io_error("cannot write", path))?
    } else {
        let writer = write_tree(root, path, BufWriter::new(file))?;
        writer
            .into_inner()
            .map_err(|error| io_error("cannot write", path)(error.into_error()))?
    };
    file.sync_all().map_err(write_failed)
}

/// Appends the tree at `root` to a tar stream on `output` (the file `path`) and finishes it.
///
/// Entries are named relative to `root`; directories come before their contents, in name
/// order; symlinks are stored as symlinks; sockets, fifos and devices are left out.
fn write_tree<W: Write>(root: &Path, path: &Path, output: W) -> Result<W> {
    let mut builder = tar::Builder::new(output);
    builder.follow_symlinks(false);
    let mut pending = vec![PathBuf::new()];
    while let Some(relative_dir) = pending.pop() {
        let directory = root.join(&relative_dir);
        let mut names: Vec<OsString> = fs::read_dir(&directory)
            .map_err(io_error("cannot list", &directory))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_error("cannot list", &directory))?;
        names.sort();
        let mut subdirectories = Vec::new();
        for name in names {
            let relative = relative_dir.join(&name);
            let source = root.join(&relative);
            if append_entry(&mut builder, &source, &relative, path)? {
                subdirectories.push(relative);
            }
        }
        // Popped in name order.
        pending.extend(subdirectories.into_iter().rev());
    }
    builder.into_inner().map_err(io_error("cannot write", path))
}

/// Appends one entry; returns whether it is a directory (whose contents come next).
fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    source: &Path,
    relative: &Path,
    path: &Path,
) -> Result<bool> {
    let metadata = fs::symlink_metadata(source).map_err(io_error("cannot read", source))?;
    let file_type = metadata.file_type();
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    if file_type.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        builder
            .append_data(&mut header, relative, io::empty())
            .map_err(io_error("cannot write", path))?;
        return Ok(true);
    }
    if file_type.is_symlink() {
        let target = fs::read_link(source).map_err(io_error("cannot read", source))?;
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, relative, target)
            .map_err(io_error("cannot write", path))?;
        return Ok(false);
    }
    if !file_type.is_file() {
        return Ok(false);
    }
    let file = open_no_follow(source).map_err(io_error("cannot read", source))?;
    let metadata = file.metadata().map_err(io_error("cannot read", source))?;
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    let size = metadata.len();
    header.set_size(size);
    let read_failure = Rc::new(Cell::new(None));
    // Exactly `size` bytes, even if the file changed since: the archive stays well-formed.
    let data = WatchedRead::new(file, Rc::clone(&read_failure))
        .take(size)
        .chain(io::repeat(0))
        .take(size);
    builder
        .append_data(&mut header, relative, data)
        .map_err(|error| match read_failure.take() {
            Some(_) => io_error("cannot read", source)(error),
            None => io_error("cannot write", path)(error),
        })?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    /// `<name>-<seconds>.tar.zst` (or `.tar`); `<name>-<seconds>.<attempt>.tar.zst` after a clash.
    fn image_file_name(name: &str, unix_seconds: u64, compress: bool, attempt: u32) -> String {
        super::super::files::image_file_name(
            name,
            unix_seconds,
            archive_extension(compress),
            attempt,
        )
    }

    #[test]
    fn entry_destination_keeps_relative_paths() {
        assert_eq!(
            entry_destination(Path::new("a/b/c")),
            Ok(Some(PathBuf::from("a/b/c")))
        );
        assert_eq!(
            entry_destination(Path::new("./a/./b/")),
            Ok(Some(PathBuf::from("a/b")))
        );
        assert_eq!(
            entry_destination(Path::new("a//b")),
            Ok(Some(PathBuf::from("a/b")))
        );
    }

    #[test]
    fn entry_destination_skips_the_root_itself() {
        assert_eq!(entry_destination(Path::new(".")), Ok(None));
        assert_eq!(entry_destination(Path::new("./")), Ok(None));
        assert_eq!(entry_destination(Path::new("")), Ok(None));
    }

    #[test]
    fn entry_destination_refuses_absolute_paths() {
        assert_eq!(
            entry_destination(Path::new("/etc/passwd")),
            Err("has an absolute path")
        );
        assert_eq!(
            entry_destination(Path::new("/")),
            Err("has an absolute path")
        );
    }

    #[test]
    fn entry_destination_refuses_parent_components() {
        for path in ["../evil", "a/../../evil", "a/..", "..", "a/b/../c"] {
            let refused = entry_destination(Path::new(path));
            assert!(
                refused.is_err_and(|reason| reason.contains("..")),
                "{path} accepted"
            );
        }
        // A name that merely starts with dots is an ordinary name.
        assert_eq!(
            entry_destination(Path::new("..hidden")),
            Ok(Some(PathBuf::from("..hidden")))
        );
    }

    #[test]
    fn check_parents_refuses_a_symlink_out_of_the_tree() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let root_canonical = root.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink("nowhere", root.path().join("dangling")).unwrap();
        fs::create_dir(root.path().join("inside")).unwrap();
        std::os::unix::fs::symlink("inside", root.path().join("alias")).unwrap();

        let through_out = check_parents(root.path(), &root_canonical, Path::new("out/file"));
        assert!(through_out.is_err_and(|reason| reason.contains("symlink `out`")));
        let through_dangling =
            check_parents(root.path(), &root_canonical, Path::new("dangling/x/file"));
        assert!(
            through_dangling.is_err_and(|reason| reason.contains("dangling symlink `dangling`"))
        );
        assert_eq!(
            check_parents(root.path(), &root_canonical, Path::new("alias/file")),
            Ok(())
        );
        assert_eq!(
            check_parents(root.path(), &root_canonical, Path::new("new/deep/file")),
            Ok(())
        );
        // The entry's own name may be a symlink: tar replaces it rather than writing through it.
        assert_eq!(
            check_parents(root.path(), &root_canonical, Path::new("out")),
            Ok(())
        );
    }

    #[test]
    fn archive_kind_by_extension() {
        assert_eq!(
            archive_kind(Path::new("/b/root.tar")),
            Some(ArchiveKind::Tar)
        );
        assert_eq!(
            archive_kind(Path::new("root.tar.zst")),
            Some(ArchiveKind::TarZst)
        );
        assert_eq!(archive_kind(Path::new("root.zip")), None);
        assert_eq!(archive_kind(Path::new("root.tar.gz")), None);
        assert_eq!(archive_kind(Path::new("root.zst")), None);
    }

    #[test]
    fn staging_names() {
        let staging = staging_path(Path::new("/data/work/vm1"), 42).unwrap();
        assert_eq!(staging, PathBuf::from("/data/work/vm1.preparing-42"));
        assert!(staging_path(Path::new("/"), 42).is_err());

        let work = OsStr::new("vm1");
        assert!(is_staging_leftover(work, OsStr::new("vm1.preparing-42")));
        assert!(!is_staging_leftover(work, OsStr::new("vm1")));
        assert!(!is_staging_leftover(work, OsStr::new("vm1.preparing-")));
        assert!(!is_staging_leftover(
            work,
            OsStr::new("vm1.preparing-notes")
        ));
        assert!(!is_staging_leftover(work, OsStr::new("vm10.preparing-42")));
        assert!(!is_staging_leftover(work, OsStr::new("vm1.preparing-42/")));
    }

    #[test]
    fn image_names() {
        assert_eq!(
            image_file_name("vm1", 1_700_000_000, true, 0),
            "vm1-1700000000.tar.zst"
        );
        assert_eq!(
            image_file_name("vm1", 1_700_000_000, false, 0),
            "vm1-1700000000.tar"
        );
        assert_eq!(image_file_name("vm1", 7, true, 2), "vm1-7.2.tar.zst");
        assert_eq!(image_file_name("pool/vm 1", 7, false, 0), "pool_vm_1-7.tar");
        assert_eq!(image_file_name("", 7, true, 0), "domain-7.tar.zst");
        assert_eq!(image_file_name("..", 7, true, 0), "domain-7.tar.zst");
        assert_eq!(
            image_file_name("../../etc/x", 7, true, 0),
            "_.._etc_x-7.tar.zst"
        );
        assert_eq!(image_file_name("été", 7, true, 0), "_t_-7.tar.zst");
    }

    #[test]
    fn partial_names_round_trip() {
        let partial = partial_file_name("vm", 1234, 5);
        assert_eq!(partial, ".vm.partial-1234-5");
        assert_eq!(partial_file_pid("vm", OsStr::new(&partial)), Some(1234));
        // Another domain's partial image, or a finished image, is not ours.
        assert_eq!(
            partial_file_pid("vm", OsStr::new(".vm-2.partial-1234-5")),
            None
        );
        assert_eq!(
            partial_file_pid("vm", OsStr::new(".vm.partial-1-2.partial-5-6")),
            None
        );
        assert_eq!(partial_file_pid("vm", OsStr::new("vm-7.tar.zst")), None);
        assert_eq!(partial_file_pid("vm", OsStr::new(".vm.partial-12")), None);
        assert_eq!(partial_file_pid("vm", OsStr::new(".vm.partial-x-1")), None);
    }

    #[test]
    fn a_live_process_is_not_gone() {
        assert!(!process_is_gone(std::process::id()));
        assert!(!process_is_gone(0));
    }

    #[test]
    fn remove_tree_handles_read_only_directories_and_missing_paths() {
        let scratch = tempfile::tempdir().unwrap();
        let tree = scratch.path().join("tree");
        fs::create_dir_all(tree.join("locked/inner")).unwrap();
        fs::write(tree.join("locked/inner/file"), b"x").unwrap();
        fs::set_permissions(tree.join("locked"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        remove_tree(&tree).unwrap();
    }

    #[test]
    fn rename_no_replace_refuses_to_replace() {
        let scratch = tempfile::tempdir().unwrap();
        let from = scratch.path().join("from");
        let to = scratch.path().join("to");
        fs::create_dir(&from).unwrap();
        fs::create_dir(&to).unwrap();
        let refused = rename_no_replace(&from, &to).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        fs::remove_dir(&to).unwrap();
        rename_no_replace(&from, &to).unwrap();
        assert!(to.is_dir() && !from.exists());
    }
}
