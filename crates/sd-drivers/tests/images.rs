//! Base images and saved images on real files, with the real `qemu-img`: compressed bases
//! decompressed once into the cache (also by concurrent prepares, and after an interrupted one),
//! corrupt and missing bases, `qemu-img info`, and saved raw images.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sd_drivers::Error;
use sd_drivers::storage::image::{self, ImageFormat};
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;

/// Runs a qemu tool, panicking with its stderr if it fails; returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A 16 MiB raw base: 0xab in its first MiB, 0x5a in the 64 KiB at 8 MiB, zeros elsewhere.
fn make_raw_base(path: &Path) {
    run(
        "qemu-img",
        &["create", "-q", "-f", "raw", text(path), "16M"],
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xab 0 1M", text(path)],
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 8M 64k", text(path)],
    );
}

fn make_qcow2_copy(raw: &Path, qcow2: &Path) {
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            text(raw),
            text(qcow2),
        ],
    );
}

fn zst_copy(from: &Path, to: &Path) {
    let input = fs::File::open(from).expect("open the image");
    let output = fs::File::create(to).expect("create the compressed copy");
    zstd::stream::copy_encode(input, output, 3).expect("compress");
}

fn gz_copy(from: &Path, to: &Path) {
    let mut input = fs::File::open(from).expect("open the image");
    let output = fs::File::create(to).expect("create the compressed copy");
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::fast());
    std::io::copy(&mut input, &mut encoder).expect("compress");
    encoder.finish().expect("compress");
}

fn expected_base_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; 16 * MIB as usize];
    bytes[..MIB as usize].fill(0xab);
    bytes[8 * MIB as usize..8 * MIB as usize + 65536].fill(0x5a);
    bytes
}

/// The disk `image` (of `format`) holds, as bytes.
fn raw_contents(image: &Path, format: &str) -> Vec<u8> {
    let scratch = TempDir::new().expect("scratch directory");
    let raw = scratch.path().join("contents.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            format,
            "-O",
            "raw",
            text(image),
            text(&raw),
        ],
    );
    fs::read(&raw).expect("read the converted image")
}

fn info_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&run("qemu-img", &["info", "--output=json", text(path)]))
        .expect("qemu-img info gives JSON")
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list the directory")
        .map(|entry| {
            entry
                .expect("list the directory")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

struct Bases {
    scratch: TempDir,
    raw: PathBuf,
    qcow2: PathBuf,
}

impl Bases {
    fn new() -> Self {
        let scratch = TempDir::new().expect("scratch directory");
        let raw = scratch.path().join("base.raw");
        let qcow2 = scratch.path().join("base.qcow2");
        make_raw_base(&raw);
        make_qcow2_copy(&raw, &qcow2);
        Self {
            scratch,
            raw,
            qcow2,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

#[test]
fn an_uncompressed_base_is_used_as_it_is() {
    let bases = Bases::new();
    let cache = bases.path("cache");
    let used = image::uncompressed_base(&bases.raw, &cache).expect("the base");
    assert_eq!(used, bases.raw);
    assert!(!cache.exists(), "no cache for an uncompressed base");
}

#[test]
fn a_zst_base_is_decompressed_once_into_the_cache() {
    let bases = Bases::new();
    let compressed = bases.path("base.raw.zst");
    zst_copy(&bases.raw, &compressed);
    let cache = bases.path("data/images");

    let cached = image::uncompressed_base(&compressed, &cache).expect("decompress the base");
    assert_eq!(cached.parent(), Some(cache.as_path()));
    let hash = blake3::hash(&fs::read(&compressed).expect("read the base"))
        .to_hex()
        .to_string();
    assert_eq!(names_in(&cache), vec![format!("{hash}.img")]);
    assert_eq!(
        fs::read(&cached).expect("read the cache"),
        expected_base_bytes()
    );
    let metadata = fs::metadata(&cached).expect("the cached base");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o444, "read-only");
    assert!(
        metadata.blocks() * 512 < 4 * MIB,
        "zeros are holes: {} blocks",
        metadata.blocks()
    );

    // The second prepare reuses the file: same inode, same modification time.
    let again = image::uncompressed_base(&compressed, &cache).expect("reuse the base");
    assert_eq!(again, cached);
    let metadata_again = fs::metadata(&again).expect("the cached base");
    assert_eq!(metadata_again.ino(), metadata.ino());
    assert_eq!(
        metadata_again.modified().expect("mtime"),
        metadata.modified().expect("mtime")
    );
    assert_eq!(names_in(&cache).len(), 1);

    // The same content under another name shares the cached file.
    let renamed = bases.path("other-name.zst");
    fs::copy(&compressed, &renamed).expect("copy the base");
    assert_eq!(
        image::uncompressed_base(&renamed, &cache).expect("the base"),
        cached
    );
    assert_eq!(names_in(&cache).len(), 1);
}

#[test]
fn a_gz_qcow2_base_is_decompressed_too() {
    let bases = Bases::new();
    let compressed = bases.path("base.qcow2.gz");
    gz_copy(&bases.qcow2, &compressed);
    let cache = bases.path("cache");
    let cached = image::uncompressed_base(&compressed, &cache).expect("decompress the base");
    assert_eq!(
        fs::read(&cached).expect("read the cache"),
        fs::read(&bases.qcow2).expect("read the base")
    );
    let info = image::info(&cached).expect("qemu-img info");
    assert_eq!(info.format, ImageFormat::Qcow2);
    assert_eq!(info.virtual_size, 16 * MIB);
    assert_eq!(info.backing_file, None);
}

#[test]
fn concurrent_prepares_decompress_once() {
    let bases = Bases::new();
    let compressed = bases.path("base.raw.zst");
    zst_copy(&bases.raw, &compressed);
    let cache = bases.path("cache");
    let results: Vec<PathBuf> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| image::uncompressed_base(&compressed, &cache)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .expect("the thread ends")
                    .expect("the base is decompressed")
            })
            .collect()
    });
    assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(names_in(&cache).len(), 1, "one file, no partial left");
    assert_eq!(
        fs::read(&results[0]).expect("read the cache"),
        expected_base_bytes()
    );
}

#[test]
fn an_interrupted_decompression_is_cleared_and_never_used() {
    let bases = Bases::new();
    let compressed = bases.path("base.raw.zst");
    zst_copy(&bases.raw, &compressed);
    let cache = bases.path("cache");
    fs::create_dir_all(&cache).expect("make the cache");
    let hash = blake3::hash(&fs::read(&compressed).expect("read the base"))
        .to_hex()
        .to_string();
    // What a process killed while decompressing leaves behind.
    let partial = cache.join(format!(".{hash}.partial-999999"));
    fs::write(&partial, b"half an image").expect("write the partial file");

    let cached = image::uncompressed_base(&compressed, &cache).expect("decompress the base");
    assert_eq!(
        fs::read(&cached).expect("read the cache"),
        expected_base_bytes()
    );
    assert_eq!(names_in(&cache), vec![format!("{hash}.img")]);
}

#[test]
fn a_corrupt_compressed_base_is_refused_and_leaves_nothing() {
    let bases = Bases::new();
    let cache = bases.path("cache");
    for name in ["corrupt.raw.zst", "corrupt.raw.gz"] {
        let corrupt = bases.path(name);
        fs::write(&corrupt, b"this is not compressed at all").expect("write the base");
        let error = image::uncompressed_base(&corrupt, &cache).unwrap_err();
        assert!(
            matches!(&error, Error::BadBase { path, reason } if *path == corrupt && reason.contains("cannot decompress")),
            "{error}"
        );
        assert!(names_in(&cache).is_empty(), "{:?}", names_in(&cache));
    }

    // A truncated archive is refused too, rather than giving a short image.
    let compressed = bases.path("base.raw.zst");
    zst_copy(&bases.raw, &compressed);
    let mut bytes = Vec::new();
    fs::File::open(&compressed)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .expect("read the base");
    let truncated = bases.path("truncated.raw.zst");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write the base");
    assert!(matches!(
        image::uncompressed_base(&truncated, &cache),
        Err(Error::BadBase { .. })
    ));
    assert!(names_in(&cache).is_empty());
}

#[test]
fn a_missing_base_is_named() {
    let scratch = TempDir::new().expect("scratch directory");
    let cache = scratch.path().join("cache");
    for name in ["nothing.raw", "nothing.raw.zst", "nothing.qcow2.gz"] {
        let missing = scratch.path().join(name);
        let error = image::uncompressed_base(&missing, &cache).unwrap_err();
        assert!(
            matches!(&error, Error::MissingBase(path) if *path == missing),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            format!("base `{}` does not exist", missing.display())
        );
        assert!(matches!(image::info(&missing), Err(Error::MissingBase(_))));
    }
    assert!(!cache.exists());
    let error = image::uncompressed_base(scratch.path(), &cache).unwrap_err();
    assert!(matches!(error, Error::BadBase { .. }), "{error}");
}

#[test]
fn info_reads_format_and_size() {
    let bases = Bases::new();
    let raw = image::info(&bases.raw).expect("qemu-img info");
    assert_eq!(
        (raw.format, raw.virtual_size, raw.backing_file),
        (ImageFormat::Raw, 16 * MIB, None)
    );
    let qcow2 = image::info(&bases.qcow2).expect("qemu-img info");
    assert_eq!(
        (qcow2.format, qcow2.virtual_size),
        (ImageFormat::Qcow2, 16 * MIB)
    );

    let vmdk = bases.path("base.vmdk");
    run(
        "qemu-img",
        &["create", "-q", "-f", "vmdk", text(&vmdk), "1M"],
    );
    let error = image::info(&vmdk).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("it is a `vmdk` image: only raw and qcow2 images are supported"),
        "{error}"
    );
}

#[test]
fn saved_raw_images_plain_and_compressed() {
    let bases = Bases::new();
    let saved_dir = bases.path("saved");

    let plain = image::save_image(&bases.raw, ImageFormat::Raw, &saved_dir, "vm 1", false)
        .expect("save the image");
    let plain_name = plain
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    assert!(
        plain_name.starts_with("vm_1-") && plain_name.ends_with(".raw"),
        "{plain_name}"
    );
    assert_eq!(
        fs::read(&plain).expect("read the image"),
        expected_base_bytes()
    );
    assert_eq!(info_json(&plain)["format"], "raw");

    let compressed = image::save_image(&bases.raw, ImageFormat::Raw, &saved_dir, "vm 1", true)
        .expect("save the image");
    assert!(
        compressed.to_string_lossy().ends_with(".raw.zst"),
        "{}",
        compressed.display()
    );
    let decoded = zstd::stream::decode_all(fs::File::open(&compressed).expect("open the image"))
        .expect("a zstd image");
    assert_eq!(decoded, expected_base_bytes());

    // Two saves in the same second get two names; no partial file is left.
    let again = image::save_image(&bases.raw, ImageFormat::Raw, &saved_dir, "vm 1", false)
        .expect("save the image");
    assert_ne!(again, plain);
    assert_eq!(names_in(&saved_dir).len(), 3, "{:?}", names_in(&saved_dir));
    assert!(
        names_in(&saved_dir)
            .iter()
            .all(|name| !name.starts_with('.'))
    );

    // A saved compressed image is a base again.
    let cache = bases.path("cache");
    let reused = image::uncompressed_base(&compressed, &cache).expect("the saved image as base");
    assert_eq!(raw_contents(&reused, "raw"), expected_base_bytes());
}

#[test]
fn a_failed_save_leaves_no_partial_file() {
    let bases = Bases::new();
    let saved_dir = bases.path("saved");
    // Saving a raw file as qcow2 fails in qemu-img (it is not a qcow2 image).
    let error =
        image::save_image(&bases.raw, ImageFormat::Qcow2, &saved_dir, "vm", false).unwrap_err();
    assert!(
        matches!(&error, Error::Command { program, .. } if program == "qemu-img"),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("`qemu-img convert"),
        "{error}"
    );
    assert!(
        names_in(&saved_dir).is_empty(),
        "{:?}",
        names_in(&saved_dir)
    );
}
