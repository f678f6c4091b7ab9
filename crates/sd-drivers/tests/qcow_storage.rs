//! The qcow storage backend with the real `qemu-img` and `qemu-io`: overlays over raw, qcow2 and
//! compressed bases, writes that never reach the base, sizes, refusals that leave nothing
//! behind, saved images that stand alone (plain and compressed), and repeated cleanups.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sd_drivers::Error;
use sd_drivers::storage::image::ImageFormat;
use sd_drivers::storage::qcow::{self, QcowSpec};
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

fn expected_base_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; 16 * MIB as usize];
    bytes[..MIB as usize].fill(0xab);
    bytes[8 * MIB as usize..8 * MIB as usize + 65536].fill(0x5a);
    bytes
}

/// What the base holds once the guest wrote 0xcd over its first 64 KiB.
fn expected_written_bytes() -> Vec<u8> {
    let mut bytes = expected_base_bytes();
    bytes[..65536].fill(0xcd);
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

/// Writes 0xcd over the first 64 KiB of the overlay, as a guest would.
fn guest_write(disk: &Path) {
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xcd 0 64k", text(disk)],
    );
}

/// The bytes, size and modification time of a file: what must not change in a base.
fn fingerprint(path: &Path) -> (Vec<u8>, u64, i64, i64) {
    let metadata = fs::metadata(path).expect("the base");
    (
        fs::read(path).expect("read the base"),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    )
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| {
                entry
                    .expect("list the directory")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

struct Fixture {
    scratch: TempDir,
    raw: PathBuf,
    qcow2: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let scratch = TempDir::new().expect("scratch directory");
        let bases = scratch.path().join("bases");
        fs::create_dir(&bases).expect("make the bases directory");
        let raw = bases.join("base.raw");
        let qcow2 = bases.join("base.qcow2");
        make_raw_base(&raw);
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "qcow2",
                text(&raw),
                text(&qcow2),
            ],
        );
        Self {
            scratch,
            raw,
            qcow2,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// A spec for `vm1`, its overlay in `<scratch>/disks/vm1.qcow2`.
    fn spec(&self, base: &Path) -> QcowSpec {
        QcowSpec {
            base: base.to_path_buf(),
            disk: self.path("disks/vm1.qcow2"),
            disk_size_mib: 0,
            save_image: false,
            compress_image: false,
            save_dir: self.path("saved"),
            name: "vm1".to_string(),
            image_cache: self.path("images"),
        }
    }
}

#[test]
fn an_overlay_over_a_raw_base_never_writes_the_base() {
    let fixture = Fixture::new();
    let before = fingerprint(&fixture.raw);
    let spec = fixture.spec(&fixture.raw);

    let prepared = qcow::prepare(&spec).expect("prepare the overlay");
    assert_eq!(prepared.disk, spec.disk);
    assert_eq!(prepared.backing_file, fixture.raw);
    assert_eq!(prepared.backing_format, ImageFormat::Raw);
    assert_eq!(prepared.virtual_size, 16 * MIB);

    let info = info_json(&spec.disk);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 16 * MIB);
    assert_eq!(info["backing-filename"], text(&fixture.raw));
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(
        names_in(&fixture.path("disks")),
        vec!["vm1.qcow2".to_string()],
        "no temporary file left"
    );

    guest_write(&spec.disk);
    assert_eq!(raw_contents(&spec.disk, "qcow2"), expected_written_bytes());
    assert_eq!(fingerprint(&fixture.raw), before, "the base is unchanged");

    assert_eq!(qcow::cleanup(&spec).expect("clean up"), None);
    assert!(!spec.disk.exists());
    assert_eq!(qcow::cleanup(&spec).expect("clean up again"), None);
    assert_eq!(fingerprint(&fixture.raw), before);
    assert!(
        !fixture.path("saved").exists(),
        "nothing saved unless asked"
    );
}

#[test]
fn an_overlay_over_a_qcow2_base_with_a_larger_size() {
    let fixture = Fixture::new();
    let before = fingerprint(&fixture.qcow2);
    let mut spec = fixture.spec(&fixture.qcow2);
    spec.disk_size_mib = 64;

    let prepared = qcow::prepare(&spec).expect("prepare the overlay");
    assert_eq!(prepared.backing_format, ImageFormat::Qcow2);
    assert_eq!(prepared.virtual_size, 64 * MIB);
    let info = info_json(&spec.disk);
    assert_eq!(info["virtual-size"], 64 * MIB);
    assert_eq!(info["backing-filename"], text(&fixture.qcow2));
    assert_eq!(info["backing-filename-format"], "qcow2");

    guest_write(&spec.disk);
    let mut expected = expected_written_bytes();
    expected.resize(64 * MIB as usize, 0);
    assert_eq!(raw_contents(&spec.disk, "qcow2"), expected);
    assert_eq!(fingerprint(&fixture.qcow2), before, "the base is unchanged");
    qcow::cleanup(&spec).expect("clean up");
}

#[test]
fn a_compressed_base_is_decompressed_once_for_every_overlay() {
    let fixture = Fixture::new();
    let compressed = fixture.path("bases/base.qcow2.zst");
    zstd::stream::copy_encode(
        fs::File::open(&fixture.qcow2).expect("open the base"),
        fs::File::create(&compressed).expect("create the compressed base"),
        3,
    )
    .expect("compress the base");

    let first = fixture.spec(&compressed);
    let prepared = qcow::prepare(&first).expect("prepare the overlay");
    assert_eq!(prepared.backing_format, ImageFormat::Qcow2);
    assert_eq!(
        prepared.backing_file.parent(),
        Some(fixture.path("images").as_path())
    );
    let cached = fs::metadata(&prepared.backing_file).expect("the cached base");
    assert_eq!(
        info_json(&first.disk)["backing-filename"],
        text(&prepared.backing_file)
    );

    let mut second = fixture.spec(&compressed);
    second.disk = fixture.path("disks/vm2.qcow2");
    second.name = "vm2".to_string();
    let prepared_second = qcow::prepare(&second).expect("prepare the second overlay");
    assert_eq!(prepared_second.backing_file, prepared.backing_file);
    let cached_again = fs::metadata(&prepared.backing_file).expect("the cached base");
    assert_eq!(cached_again.ino(), cached.ino(), "not rewritten");
    assert_eq!(
        cached_again.modified().expect("mtime"),
        cached.modified().expect("mtime")
    );
    assert_eq!(names_in(&fixture.path("images")).len(), 1);

    guest_write(&first.disk);
    assert_eq!(raw_contents(&second.disk, "qcow2"), expected_base_bytes());
    qcow::cleanup(&first).expect("clean up");
    qcow::cleanup(&second).expect("clean up");
    // The cache is shared: cleanup leaves it.
    assert!(prepared.backing_file.exists());
}

#[test]
fn a_saved_image_stands_alone() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(&fixture.raw);
    spec.save_image = true;
    qcow::prepare(&spec).expect("prepare the overlay");
    guest_write(&spec.disk);

    let saved = qcow::cleanup(&spec)
        .expect("clean up")
        .expect("an image is saved");
    assert!(!spec.disk.exists());
    let name = saved
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("vm1-") && name.ends_with(".qcow2") && !name.ends_with(".zst"),
        "{name}"
    );
    assert_eq!(saved.parent(), Some(fixture.path("saved").as_path()));
    let info = info_json(&saved);
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none(), "standalone: {info}");
    // It holds the base and the guest's writes, even with the base gone.
    fs::remove_file(&fixture.raw).expect("remove the base");
    assert_eq!(raw_contents(&saved, "qcow2"), expected_written_bytes());
    assert_eq!(qcow::cleanup(&spec).expect("clean up again"), None);
    assert_eq!(names_in(&fixture.path("saved")).len(), 1);
}

#[test]
fn a_compressed_saved_image_is_zstd_and_stands_alone() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(&fixture.qcow2);
    spec.save_image = true;
    spec.compress_image = true;
    qcow::prepare(&spec).expect("prepare the overlay");
    guest_write(&spec.disk);

    let saved = qcow::cleanup(&spec)
        .expect("clean up")
        .expect("an image is saved");
    assert!(
        saved.to_string_lossy().ends_with(".qcow2.zst"),
        "{}",
        saved.display()
    );
    let bytes = fs::read(&saved).expect("read the image");
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let decompressed = fixture.path("decompressed.qcow2");
    fs::write(
        &decompressed,
        zstd::stream::decode_all(bytes.as_slice()).expect("zstd"),
    )
    .expect("write the decompressed image");
    let info = info_json(&decompressed);
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none(), "standalone: {info}");
    assert_eq!(
        raw_contents(&decompressed, "qcow2"),
        expected_written_bytes()
    );
    assert_eq!(
        names_in(&fixture.path("saved")),
        vec![
            saved
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        ],
        "no partial file left"
    );

    // The saved image is a base for a new overlay.
    let mut next = fixture.spec(&saved);
    next.disk = fixture.path("disks/next.qcow2");
    qcow::prepare(&next).expect("prepare over the saved image");
    assert_eq!(raw_contents(&next.disk, "qcow2"), expected_written_bytes());
    qcow::cleanup(&next).expect("clean up");
}

#[test]
fn refusals_leave_nothing_behind() {
    let fixture = Fixture::new();

    // A missing base is named; no directory is made.
    let missing = fixture.path("bases/nothing.qcow2");
    let error = qcow::prepare(&fixture.spec(&missing)).unwrap_err();
    assert!(
        matches!(&error, Error::MissingBase(path) if *path == missing),
        "{error}"
    );
    let missing_zst = fixture.path("bases/nothing.qcow2.zst");
    assert!(matches!(
        qcow::prepare(&fixture.spec(&missing_zst)),
        Err(Error::MissingBase(_))
    ));
    assert!(!fixture.path("disks").exists());
    assert!(!fixture.path("images").exists());

    // A disk smaller than its base.
    let mut small = fixture.spec(&fixture.raw);
    small.disk_size_mib = 8;
    let error = qcow::prepare(&small).unwrap_err();
    assert!(
        matches!(error, Error::DiskSize { size_mib: 8, .. }),
        "{error}"
    );
    assert!(!fixture.path("disks").exists());

    // A base qemu-img cannot use (a qcow2 header with garbage after it).
    let broken = fixture.path("bases/broken.qcow2");
    let mut bytes = fs::read(&fixture.qcow2).expect("read the base");
    bytes.truncate(512);
    bytes[4..8].copy_from_slice(&[0, 0, 0, 99]);
    fs::write(&broken, bytes).expect("write the base");
    let error = qcow::prepare(&fixture.spec(&broken)).unwrap_err();
    assert!(
        matches!(&error, Error::Command { program, .. } if program == "qemu-img"),
        "{error}"
    );
    assert!(!fixture.path("disks").exists());

    // An existing disk is refused and left as it is.
    let spec = fixture.spec(&fixture.raw);
    fs::create_dir_all(fixture.path("disks")).expect("make the disks directory");
    fs::write(&spec.disk, b"someone else's").expect("write the disk");
    let error = qcow::prepare(&spec).unwrap_err();
    assert!(
        matches!(&error, Error::Io { path, .. } if *path == spec.disk),
        "{error}"
    );
    assert_eq!(
        fs::read(&spec.disk).expect("read the disk"),
        b"someone else's"
    );
}

#[test]
fn cleanup_removes_the_leftovers_of_an_interrupted_prepare() {
    let fixture = Fixture::new();
    let spec = fixture.spec(&fixture.raw);
    fs::create_dir_all(fixture.path("disks")).expect("make the disks directory");
    let leftover = fixture.path("disks/vm1.qcow2.preparing-999999");
    fs::write(&leftover, b"half an overlay").expect("write the leftover");
    let unrelated = fixture.path("disks/vm10.qcow2.preparing-1");
    fs::write(&unrelated, b"another domain's").expect("write another file");

    assert_eq!(qcow::cleanup(&spec).expect("clean up"), None);
    assert!(!leftover.exists());
    assert!(unrelated.exists(), "another domain's file is not touched");

    // A crash after the overlay got its name: cleanup removes it like any other.
    qcow::prepare(&spec).expect("prepare the overlay");
    qcow::cleanup(&spec).expect("clean up");
    qcow::cleanup(&spec).expect("clean up again");
    assert_eq!(
        names_in(&fixture.path("disks")),
        vec!["vm10.qcow2.preparing-1".to_string()]
    );
}
