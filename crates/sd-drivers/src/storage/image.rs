//! Disk images, shared by the disk backends ([`qcow`](super::qcow), [`loopback`](super::loopback)):
//! base images, `qemu-img info`, and saving a disk as an image.
//!
//! - [`uncompressed_base`]: a base image is used as it is, unless its name ends in `.zst` or
//!   `.gz`: it is then decompressed once into a cache directory, under the name
//!   `<blake3 of the compressed file>.img`, and every later prepare of the same content reuses
//!   that file. Runs of zeros are written as holes, so a mostly empty raw image stays small.
//! - [`info`]: the format (raw or qcow2) and size of an image, from `qemu-img info`.
//! - [`save_image`]: a copy of a disk as a standalone image `<saveDir>/<name>-<unix seconds>.qcow2`
//!   or `.raw`, with `.zst` appended when compressed. A qcow2 overlay is flattened (`qemu-img
//!   convert` copies what its backing chain holds), so the saved image needs no base.
//!
//! Guarantees:
//! - Nothing is written outside the paths given: the cache directory, the save directory, and
//!   (for the backends' helpers here) a disk's own path and its `<disk>.preparing-<pid>` sibling.
//!   A base image is only ever read.
//! - Temp name, sync, then rename for everything a later step trusts: a cached base appears
//!   under its final name only complete and synced (written as `.<hash>.partial-<pid>`), and a
//!   saved image only complete and synced (written as `.<name>.partial-<pid>-<n>`), never
//!   replacing an existing file. Concurrent prepares of the same compressed base (threads or
//!   processes) decompress it once: the cache directory is locked (`flock`) around the
//!   decompression, and the others then find the cached file. The lock is the kernel's, so a
//!   crashed process holds none; its partial file is removed by the next decompression.
//! - Cached bases are read-only (mode 0444) and never removed here: they are shared by every
//!   domain of that base.
//!
//! External programs (`qemu-img`) are run directly, never through a shell, always with absolute
//! paths (so that no file name is read as an option or as a qemu protocol such as `nbd:`), and
//! the format of an image is always passed explicitly (`-f`): a raw disk whose guest wrote
//! something that looks like a qcow2 header is never probed as qcow2.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::files::{
    absolute, is_decimal, partial_file_name, publish_image, remove_file_if_exists,
    remove_partial_leftovers, rename_no_replace, sync_directory, sync_file,
};
#[cfg(test)]
use super::files::{image_file_name, is_staging_leftover, partial_file_pid, staging_path};
use super::run;
use crate::{Error, Result, io_error};

/// The zstd level of saved images: fast, and most of the gain of the higher levels.
const ZSTD_LEVEL: i32 = 3;

/// The unit of hole detection when decompressing: a block of zeros this big becomes a hole.
const SPARSE_BLOCK: usize = 64 * 1024;

/// The buffer of decompression and compression.
const BUFFER_SIZE: usize = 1024 * 1024;

/// One mebibyte.
const MIB: u64 = 1024 * 1024;

/// Tells apart the temporary files of concurrent saves in one process.
static SAVE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The formats of disk image the backends use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A raw image: the disk's bytes.
    Raw,
    /// A qcow2 image (possibly an overlay with a backing file).
    Qcow2,
}

impl ImageFormat {
    /// The format's name for `qemu-img` (`-f`, `-F`, `-O`), also the saved images' extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its format.
    pub format: ImageFormat,
    /// The size of the disk it holds, in bytes.
    pub virtual_size: u64,
    /// Its backing file, for a qcow2 overlay (as written in the image).
    pub backing_file: Option<PathBuf>,
}

/// Looks at the image `path` with `qemu-img info --output=json` (the format is probed).
///
/// # Errors
///
/// [`Error::MissingBase`] if `path` does not exist; [`Error::Command`] if `qemu-img` cannot read
/// it; [`Error::BadBase`] if its format is neither raw nor qcow2; [`Error::Spawn`] if `qemu-img`
/// is not installed.
pub fn info(path: &Path) -> Result<ImageInfo> {
    if fs::metadata(path).is_err_and(|error| error.kind() == io::ErrorKind::NotFound) {
        return Err(Error::MissingBase(path.to_path_buf()));
    }
    let absolute = absolute(path)?;
    let args = [
        OsStr::new("info"),
        OsStr::new("--output=json"),
        absolute.as_os_str(),
    ];
    let output = run("qemu-img", &args)?;
    let bad_output = |reason: String| Error::CommandOutput {
        program: "qemu-img".to_string(),
        args: super::shown_args(&args),
        reason,
    };
    let json: serde_json::Value = serde_json::from_slice(&output)
        .map_err(|error| bad_output(format!("not JSON: {error}")))?;
    let format = match json.get("format").and_then(|format| format.as_str()) {
        Some("raw") => ImageFormat::Raw,
        Some("qcow2") => ImageFormat::Qcow2,
        Some(other) => {
            return Err(Error::BadBase {
                path: path.to_path_buf(),
                reason: format!("it is a `{other}` image: only raw and qcow2 images are supported"),
            });
        }
        None => return Err(bad_output("no `format`".to_string())),
    };
    let virtual_size = json
        .get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| bad_output("no `virtual-size`".to_string()))?;
    let backing_file = json
        .get("backing-filename")
        .and_then(|backing| backing.as_str())
        .map(PathBuf::from);
    Ok(ImageInfo {
        format,
        virtual_size,
        backing_file,
    })
}

/// How a base image is compressed, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Zstd,
    Gzip,
}

fn compression_of(path: &Path) -> Option<Compression> {
    match path.extension().and_then(OsStr::to_str) {
        Some("zst") => Some(Compression::Zstd),
        Some("gz") => Some(Compression::Gzip),
        _ => None,
    }
}

/// The base image to use for `base`, as an absolute path: `base` itself, or for a `.zst` or
/// `.gz` base its decompressed copy in `cache_dir` (made on first use, created if missing).
///
/// # Errors
///
/// [`Error::MissingBase`] if `base` does not exist; [`Error::BadBase`] if it is a directory or
/// does not decompress; [`Error::Io`] if the cache cannot be written.
pub fn uncompressed_base(base: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let metadata = match fs::metadata(base) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(Error::MissingBase(base.to_path_buf()));
        }
        Err(error) => return Err(io_error("cannot read", base)(error)),
    };
    if metadata.is_dir() {
        return Err(Error::BadBase {
            path: base.to_path_buf(),
            reason: "it is a directory: a base image is a raw or qcow2 file, possibly compressed (`.zst`, `.gz`)".to_string(),
        });
    }
    let Some(compression) = compression_of(base) else {
        return absolute(base);
    };
    let hash = hash_file(base)?;
    fs::create_dir_all(cache_dir).map_err(io_error("cannot create", cache_dir))?;
    let cached = cache_dir.join(format!("{hash}.img"));
    if exists(&cached)? {
        return absolute(&cached);
    }
    let _lock = lock_directory(cache_dir)?;
    // Another prepare may have made it while we waited for the lock.
    if exists(&cached)? {
        return absolute(&cached);
    }
    // Under the lock, any partial file is the leftover of an interrupted decompression.
    remove_cache_leftovers(cache_dir)?;
    let partial = cache_dir.join(format!(".{hash}.partial-{}", std::process::id()));
    let outcome = decompress(base, compression, &partial).and_then(|()| {
        rename_no_replace(&partial, &cached).map_err(io_error("cannot rename to", &cached))
    });
    if outcome.is_err() {
        let _ = fs::remove_file(&partial);
    }
    outcome?;
    sync_directory(cache_dir);
    absolute(&cached)
}

/// The blake3 hash of the file at `path`, in hex.
fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_error("cannot open", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(&mut file)
        .map_err(io_error("cannot read", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("cannot read", path)(error)),
    }
}

/// Takes an exclusive `flock` on the directory `dir`; it is released when the file is dropped
/// (or the process ends).
fn lock_directory(dir: &Path) -> Result<File> {
    let handle = File::open(dir).map_err(io_error("cannot open", dir))?;
    rustix::fs::flock(&handle, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|errno| io_error("cannot lock", dir)(errno.into()))?;
    Ok(handle)
}

/// Whether `name` is a cache partial file: `.<64 hex digits>.partial-<digits>`.
fn is_cache_partial(name: &OsStr) -> bool {
    let Some(rest) = name.to_str().and_then(|name| name.strip_prefix('.')) else {
        return false;
    };
    let Some((hash, pid)) = rest.split_once(".partial-") else {
        return false;
    };
    hash.len() == 64 && hash.bytes().all(|byte| byte.is_ascii_hexdigit()) && is_decimal(pid)
}

fn remove_cache_leftovers(cache_dir: &Path) -> Result<()> {
    let entries = fs::read_dir(cache_dir).map_err(io_error("cannot list", cache_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list", cache_dir))?;
        if is_cache_partial(&entry.file_name()) {
            let leftover = entry.path();
            remove_file_if_exists(&leftover).map_err(io_error("cannot remove", &leftover))?;
        }
    }
    Ok(())
}

/// Decompresses `base` into the new file `partial`, with holes for blocks of zeros; the file is
/// made read-only and synced.
fn decompress(base: &Path, compression: Compression, partial: &Path) -> Result<()> {
    let input = File::open(base).map_err(io_error("cannot open", base))?;
    let mut reader: Box<dyn Read> = match compression {
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(input)
                .map_err(io_error("cannot start decompressing", base))?,
        ),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(input))),
    };
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(io_error("cannot create", partial))?;
    let write_failed = io_error("cannot write", partial);
    let mut buffer = vec![0; BUFFER_SIZE];
    let mut total: u64 = 0;
    loop {
        let filled = read_full(&mut reader, &mut buffer).map_err(|error| Error::BadBase {
            path: base.to_path_buf(),
            reason: format!("cannot decompress it: {error}"),
        })?;
        write_sparse(&mut output, &buffer[..filled]).map_err(io_error("cannot write", partial))?;
        total += filled as u64;
        if filled < buffer.len() {
            break;
        }
    }
    output
        .set_len(total)
        .map_err(io_error("cannot write", partial))?;
    output
        .set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(io_error("cannot set the permissions of", partial))?;
    output.sync_all().map_err(write_failed)
}

/// Reads until `buffer` is full or the input ends; returns how much was read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Writes `data` at the current position, skipping (seeking over) blocks of zeros.
fn write_sparse(output: &mut File, data: &[u8]) -> io::Result<()> {
    for block in data.chunks(SPARSE_BLOCK) {
        if block.iter().all(|&byte| byte == 0) {
            // A block is at most SPARSE_BLOCK bytes: it fits an i64.
            output.seek(SeekFrom::Current(block.len() as i64))?;
        } else {
            output.write_all(block)?;
        }
    }
    Ok(())
}

/// Saves the disk `disk` (of format `format`) as a standalone image in `save_dir` (created if
/// missing): `<name>-<unix seconds>.<qcow2|raw>`, with `.zst` appended when `compress`, and
/// `.<n>` before the extension if that name is taken. Returns the image's path.
///
/// A qcow2 overlay is flattened: the image holds what the disk reads, and has no backing file.
/// A raw disk's holes stay holes in an uncompressed image. The disk is only read; what uses it
/// must be stopped first, or the image is of no particular moment. Partial images left in
/// `save_dir` by processes that are gone are removed.
///
/// # Errors
///
/// [`Error::Command`] if `qemu-img convert` fails; [`Error::Io`] if the image cannot be
/// written. Nothing is left in `save_dir` on error.
pub fn save_image(
    disk: &Path,
    format: ImageFormat,
    save_dir: &Path,
    name: &str,
    compress: bool,
) -> Result<PathBuf> {
    fs::create_dir_all(save_dir).map_err(io_error("cannot create", save_dir))?;
    remove_partial_leftovers(save_dir, name, remove_file_if_exists)?;
    let disk = absolute(disk)?;
    let mut partials = Vec::new();
    let outcome = write_saved_image(&disk, format, save_dir, name, compress, &mut partials)
        .and_then(|image_file| {
            let unix_seconds = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            let extension = saved_extension(format, compress);
            publish_image(&image_file, save_dir, name, unix_seconds, extension)
        });
    for partial in &partials {
        let _ = remove_file_if_exists(partial);
    }
    outcome
}

/// `qcow2`, `raw`, `qcow2.zst` or `raw.zst`.
fn saved_extension(format: ImageFormat, compress: bool) -> &'static str {
    match (format, compress) {
        (ImageFormat::Qcow2, false) => "qcow2",
        (ImageFormat::Raw, false) => "raw",
        (ImageFormat::Qcow2, true) => "qcow2.zst",
        (ImageFormat::Raw, true) => "raw.zst",
    }
}

/// Writes the image of `disk` into partial files of `save_dir` (each pushed on `partials` as it
/// is made) and returns the one that holds the complete, synced image.
fn write_saved_image(
    disk: &Path,
    format: ImageFormat,
    save_dir: &Path,
    name: &str,
    compress: bool,
    partials: &mut Vec<PathBuf>,
) -> Result<PathBuf> {
    let mut new_partial = || -> Result<PathBuf> {
        let sequence = SAVE_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let partial =
            absolute(&save_dir.join(partial_file_name(name, std::process::id(), sequence)))?;
        // Only a leftover of a process that had our pid can be there.
        remove_file_if_exists(&partial).map_err(io_error("cannot remove", &partial))?;
        partials.push(partial.clone());
        Ok(partial)
    };
    if compress && format == ImageFormat::Raw {
        // A raw disk is its own image: compress it directly.
        let compressed = new_partial()?;
        compress_file(disk, &compressed)?;
        return Ok(compressed);
    }
    let converted = new_partial()?;
    let fmt = OsStr::new(format.as_str());
    run(
        "qemu-img",
        &[
            OsStr::new("convert"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            fmt,
            OsStr::new("-O"),
            fmt,
            disk.as_os_str(),
            converted.as_os_str(),
        ],
    )?;
    if !compress {
        // qemu-img does not flush what it wrote.
        sync_file(&converted)?;
        return Ok(converted);
    }
    let compressed = new_partial()?;
    compress_file(&converted, &compressed)?;
    remove_file_if_exists(&converted).map_err(io_error("cannot remove", &converted))?;
    Ok(compressed)
}

/// Writes `from` compressed with zstd (with a checksum) into the new file `to`, synced.
fn compress_file(from: &Path, to: &Path) -> Result<()> {
    let mut input = File::open(from).map_err(io_error("cannot open", from))?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(to)
        .map_err(io_error("cannot create", to))?;
    let write_failed = || io_error("cannot write", to);
    let mut encoder =
        zstd::stream::write::Encoder::new(output, ZSTD_LEVEL).map_err(write_failed())?;
    encoder.include_checksum(true).map_err(write_failed())?;
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        let read = read_full(&mut input, &mut buffer).map_err(io_error("cannot read", from))?;
        encoder.write_all(&buffer[..read]).map_err(write_failed())?;
        if read < buffer.len() {
            break;
        }
    }
    let output = encoder.finish().map_err(write_failed())?;
    output.sync_all().map_err(write_failed())
}

// Helpers of the disk backends.

/// The size in bytes of a disk of `size_mib` MiB over a base of `base_size` bytes: `None` (the
/// base's size) for 0.
///
/// # Errors
///
/// [`Error::DiskSize`] if it is smaller than the base, or too large to count in bytes.
pub(crate) fn disk_size(
    disk: &Path,
    size_mib: u64,
    base: &Path,
    base_size: u64,
) -> Result<Option<u64>> {
    if size_mib == 0 {
        return Ok(None);
    }
    let Some(bytes) = size_mib.checked_mul(MIB) else {
        return Err(Error::DiskSize {
            disk: disk.to_path_buf(),
            size_mib,
            reason: "that is more bytes than can be counted".to_string(),
        });
    };
    if bytes < base_size {
        return Err(Error::DiskSize {
            disk: disk.to_path_buf(),
            size_mib,
            reason: format!(
                "that is smaller than its base `{}` ({base_size} bytes)",
                base.display()
            ),
        });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_by_extension() {
        assert_eq!(
            compression_of(Path::new("/b/disk.qcow2.zst")),
            Some(Compression::Zstd)
        );
        assert_eq!(
            compression_of(Path::new("disk.raw.gz")),
            Some(Compression::Gzip)
        );
        assert_eq!(compression_of(Path::new("disk.qcow2")), None);
        assert_eq!(compression_of(Path::new("disk.zstd")), None);
        assert_eq!(compression_of(Path::new(".gz")), None);
    }

    #[test]
    fn saved_image_names() {
        assert_eq!(
            image_file_name(
                "vm1",
                1_700_000_000,
                saved_extension(ImageFormat::Qcow2, true),
                0
            ),
            "vm1-1700000000.qcow2.zst"
        );
        assert_eq!(
            image_file_name("vm1", 7, saved_extension(ImageFormat::Raw, false), 0),
            "vm1-7.raw"
        );
        assert_eq!(
            image_file_name("vm1", 7, saved_extension(ImageFormat::Raw, true), 3),
            "vm1-7.3.raw.zst"
        );
        assert_eq!(image_file_name("../x y", 7, "qcow2", 0), "_x_y-7.qcow2");
        assert_eq!(image_file_name("", 7, "raw", 0), "domain-7.raw");
    }

    #[test]
    fn partial_names() {
        let partial = partial_file_name("vm", 1234, 5);
        assert_eq!(partial, ".vm.partial-1234-5");
        assert_eq!(partial_file_pid("vm", OsStr::new(&partial)), Some(1234));
        assert_eq!(partial_file_pid("vm", OsStr::new("vm-7.qcow2")), None);
        assert_eq!(
            partial_file_pid("vm", OsStr::new(".vm-2.partial-1234-5")),
            None
        );

        let hash = "0123456789abcdef".repeat(4);
        assert!(is_cache_partial(OsStr::new(&format!(".{hash}.partial-42"))));
        assert!(!is_cache_partial(OsStr::new(&format!("{hash}.img"))));
        assert!(!is_cache_partial(OsStr::new(&format!(".{hash}.partial-"))));
        assert!(!is_cache_partial(OsStr::new(".abc.partial-42")));
    }

    #[test]
    fn staging_names() {
        let staging = staging_path(Path::new("/data/vm1.qcow2"), 42).unwrap();
        assert_eq!(staging, PathBuf::from("/data/vm1.qcow2.preparing-42"));
        assert!(staging_path(Path::new("/"), 42).is_err());
        let name = OsStr::new("vm1.qcow2");
        assert!(is_staging_leftover(
            name,
            OsStr::new("vm1.qcow2.preparing-42")
        ));
        assert!(!is_staging_leftover(name, OsStr::new("vm1.qcow2")));
        assert!(!is_staging_leftover(
            name,
            OsStr::new("vm1.qcow2.preparing-x")
        ));
        assert!(!is_staging_leftover(
            name,
            OsStr::new("vm1.qcow20.preparing-1")
        ));
    }

    #[test]
    fn disk_sizes() {
        let (disk, base) = (Path::new("/d"), Path::new("/b"));
        assert_eq!(disk_size(disk, 0, base, 10 * MIB).unwrap(), None);
        assert_eq!(disk_size(disk, 10, base, 10 * MIB).unwrap(), Some(10 * MIB));
        let smaller = disk_size(disk, 9, base, 10 * MIB).unwrap_err();
        assert!(
            smaller
                .to_string()
                .contains("smaller than its base `/b` (10485760 bytes)"),
            "{smaller}"
        );
        assert!(disk_size(disk, u64::MAX, base, 0).is_err());
    }

    #[test]
    fn sparse_writes_leave_holes_and_keep_the_length() {
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("sparse");
        let mut file = File::create(&path).unwrap();
        let mut data = vec![0u8; 4 * SPARSE_BLOCK];
        data[SPARSE_BLOCK + 1] = 7;
        write_sparse(&mut file, &data).unwrap();
        file.set_len(data.len() as u64).unwrap();
        drop(file);
        assert_eq!(fs::read(&path).unwrap(), data);
    }
}
