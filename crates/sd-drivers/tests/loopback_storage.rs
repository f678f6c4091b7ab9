//! The loopback storage backend with the real `qemu-img` and `losetup` (as root): raw copies of
//! raw, qcow2 and compressed bases attached to loop devices, writes through the device that
//! never reach the base, detaching after a crash (device path forgotten, image deleted while
//! attached), a device held open, saved images, and repeated cleanups. Not as root, the test
//! checks that `losetup`'s refusal is reported with the command and its stderr.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sd_drivers::Error;
use sd_drivers::storage::loopback::{self, LoopbackSpec};
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;

/// Runs a program, panicking with its stderr if it fails; returns its stdout.
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

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
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

/// Writes 0xcd over the first 64 KiB of the block device, as a guest would, and flushes it.
fn guest_write(device: &Path) {
    let mut file = OpenOptions::new()
        .write(true)
        .open(device)
        .expect("open the loop device");
    file.write_all(&[0xcd; 65536])
        .expect("write the loop device");
    file.sync_all().expect("flush the loop device");
}

/// The first `length` bytes the block device reads.
fn device_bytes(device: &Path, length: usize) -> Vec<u8> {
    let mut file = fs::File::open(device).expect("open the loop device");
    let mut bytes = vec![0; length];
    file.read_exact(&mut bytes).expect("read the loop device");
    bytes
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

/// `losetup -j <image>`: the loop devices the system says use the image.
fn losetup_j(image: &Path) -> String {
    run("losetup", &["-j", text(image)])
}

/// Whether any loop device is backed by `image`, by the kernel's own list (also for a deleted
/// image).
fn any_device_backed_by(image: &Path) -> bool {
    let listing = run(
        "losetup",
        &["--list", "--noheadings", "--output", "BACK-FILE"],
    );
    listing
        .lines()
        .any(|line| line.trim().trim_end_matches(" (deleted)") == text(image))
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
}

impl Fixture {
    fn new() -> Self {
        // Canonical, as the kernel reports backing files (`/tmp` may be a symlink).
        let scratch = TempDir::new().expect("scratch directory");
        let bases = scratch
            .path()
            .canonicalize()
            .expect("the scratch directory")
            .join("bases");
        fs::create_dir(&bases).expect("make the bases directory");
        let raw = bases.join("base.raw");
        make_raw_base(&raw);
        Self { scratch, raw }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch
            .path()
            .canonicalize()
            .expect("the scratch directory")
            .join(name)
    }

    /// A spec for `vm1`, its image in `<scratch>/disks/vm1.raw`.
    fn spec(&self, base: &Path) -> LoopbackSpec {
        LoopbackSpec {
            base: base.to_path_buf(),
            image: self.path("disks/vm1.raw"),
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
fn without_root_losetup_refuses_clearly() {
    if is_root() {
        return; // Covered by the other tests, which need root.
    }
    let fixture = Fixture::new();
    let spec = fixture.spec(&fixture.raw);
    let error = loopback::prepare(&spec).unwrap_err();
    assert!(
        matches!(&error, Error::Command { program, .. } if program == "losetup"),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("`losetup --find --show "),
        "{error}"
    );
    assert!(!spec.image.exists(), "the image is removed again");
    assert!(!fixture.path("disks").exists());
}

#[test]
fn a_raw_copy_on_a_loop_device_never_writes_the_base() {
    if !is_root() {
        return; // Loop devices need root: see without_root_losetup_refuses_clearly.
    }
    let fixture = Fixture::new();
    let before = fingerprint(&fixture.raw);
    let mut spec = fixture.spec(&fixture.raw);
    spec.save_image = true;

    let prepared = loopback::prepare(&spec).expect("prepare the loop device");
    assert_eq!(prepared.image, spec.image);
    assert_eq!(prepared.size, 16 * MIB);
    assert!(
        prepared.device.to_string_lossy().starts_with("/dev/loop"),
        "{}",
        prepared.device.display()
    );
    assert!(
        fs::metadata(&prepared.device)
            .expect("the device")
            .file_type()
            .is_block_device()
    );
    assert!(
        losetup_j(&spec.image).starts_with(&format!("{}:", prepared.device.display())),
        "{}",
        losetup_j(&spec.image)
    );
    assert_eq!(
        loopback::attached_devices(&spec.image).expect("the devices"),
        vec![prepared.device.clone()]
    );
    assert_eq!(
        names_in(&fixture.path("disks")),
        vec!["vm1.raw".to_string()],
        "no temporary file left"
    );
    assert_eq!(
        device_bytes(&prepared.device, 16 * MIB as usize),
        expected_base_bytes()
    );

    guest_write(&prepared.device);
    assert_eq!(fingerprint(&fixture.raw), before, "the base is unchanged");

    let saved = loopback::cleanup(&spec)
        .expect("clean up")
        .expect("an image is saved");
    assert!(losetup_j(&spec.image).is_empty());
    assert!(!any_device_backed_by(&spec.image), "no loop device left");
    assert!(!spec.image.exists());
    let name = saved
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("vm1-") && name.ends_with(".raw"), "{name}");
    assert_eq!(
        fs::read(&saved).expect("read the image"),
        expected_written_bytes()
    );
    assert_eq!(fingerprint(&fixture.raw), before);

    assert_eq!(loopback::cleanup(&spec).expect("clean up again"), None);
    assert_eq!(names_in(&fixture.path("saved")).len(), 1);
}

#[test]
fn a_compressed_qcow2_base_grown_and_saved_compressed() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new();
    let qcow2 = fixture.path("bases/base.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            text(&fixture.raw),
            text(&qcow2),
        ],
    );
    let compressed = fixture.path("bases/base.qcow2.gz");
    {
        let mut input = fs::File::open(&qcow2).expect("open the base");
        let output = fs::File::create(&compressed).expect("create the compressed base");
        let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::fast());
        std::io::copy(&mut input, &mut encoder).expect("compress");
        encoder.finish().expect("compress");
    }
    let before = fingerprint(&compressed);
    let mut spec = fixture.spec(&compressed);
    spec.disk_size_mib = 32;
    spec.save_image = true;
    spec.compress_image = true;

    let prepared = loopback::prepare(&spec).expect("prepare the loop device");
    assert_eq!(prepared.size, 32 * MIB);
    assert_eq!(
        fs::metadata(&spec.image).expect("the image").len(),
        32 * MIB
    );
    let mut expected = expected_base_bytes();
    expected.resize(32 * MIB as usize, 0);
    assert_eq!(device_bytes(&prepared.device, 32 * MIB as usize), expected);
    assert_eq!(
        names_in(&fixture.path("images")).len(),
        1,
        "decompressed once"
    );

    guest_write(&prepared.device);
    let saved = loopback::cleanup(&spec)
        .expect("clean up")
        .expect("an image is saved");
    assert!(
        saved.to_string_lossy().ends_with(".raw.zst"),
        "{}",
        saved.display()
    );
    let bytes = fs::read(&saved).expect("read the image");
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let mut expected = expected_written_bytes();
    expected.resize(32 * MIB as usize, 0);
    assert_eq!(
        zstd::stream::decode_all(bytes.as_slice()).expect("zstd"),
        expected
    );
    assert!(!any_device_backed_by(&spec.image));
    assert_eq!(fingerprint(&compressed), before, "the base is unchanged");
    // The cached decompressed base is untouched by the guest's writes.
    let cache = fixture.path("images");
    let cached = cache.join(&names_in(&cache)[0]);
    let cached_bytes = {
        let scratch = fixture.path("cached.raw");
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-f",
                "qcow2",
                "-O",
                "raw",
                text(&cached),
                text(&scratch),
            ],
        );
        fs::read(&scratch).expect("read the cached base")
    };
    assert_eq!(cached_bytes, expected_base_bytes());
}

#[test]
fn cleanup_after_a_crash_finds_the_device_by_its_image() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new();
    let spec = fixture.spec(&fixture.raw);

    // The agent died after prepare: the device path is forgotten.
    let device = loopback::prepare(&spec).expect("prepare").device;
    assert_eq!(loopback::cleanup(&spec).expect("clean up"), None);
    assert!(!any_device_backed_by(&spec.image));
    assert!(!spec.image.exists());
    assert!(
        !losetup_j(&fixture.raw).contains(text(&device)),
        "the base was never attached"
    );

    // The image was deleted while attached: the kernel still knows its path.
    loopback::prepare(&spec).expect("prepare again");
    fs::remove_file(&spec.image).expect("delete the attached image");
    assert!(any_device_backed_by(&spec.image));
    assert_eq!(
        loopback::attached_devices(&spec.image)
            .expect("the devices")
            .len(),
        1
    );
    assert_eq!(loopback::cleanup(&spec).expect("clean up"), None);
    assert!(!any_device_backed_by(&spec.image), "no loop device left");

    // A leftover of an interrupted copy.
    let leftover = fixture.path("disks/vm1.raw.preparing-999999");
    fs::write(&leftover, b"half a copy").expect("write the leftover");
    loopback::cleanup(&spec).expect("clean up");
    assert!(!leftover.exists());
    assert!(names_in(&fixture.path("disks")).is_empty());
}

#[test]
fn a_device_held_open_is_not_pulled_away() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new();
    let spec = fixture.spec(&fixture.raw);
    let prepared = loopback::prepare(&spec).expect("prepare");

    let mut holder = fs::File::open(&prepared.device).expect("open the loop device");
    let error = loopback::cleanup(&spec).unwrap_err();
    assert!(
        matches!(&error, Error::LoopDeviceBusy { device, image } if *device == prepared.device && *image == spec.image)
            || matches!(&error, Error::Command { program, .. } if program == "losetup"),
        "{error}"
    );
    assert!(spec.image.exists(), "the image is kept while in use");
    // Still readable by its user.
    holder.seek(SeekFrom::Start(0)).expect("seek");
    let mut first = [0u8; 4];
    holder.read_exact(&mut first).expect("read the loop device");
    assert_eq!(first, [0xab; 4]);

    drop(holder);
    assert_eq!(
        loopback::cleanup(&spec).expect("clean up once closed"),
        None
    );
    assert!(!any_device_backed_by(&spec.image));
    assert!(!spec.image.exists());
}

#[test]
fn refusals_leave_nothing_behind() {
    let fixture = Fixture::new();

    let missing = fixture.path("bases/nothing.raw.zst");
    let error = loopback::prepare(&fixture.spec(&missing)).unwrap_err();
    assert!(
        matches!(&error, Error::MissingBase(path) if *path == missing),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!("base `{}` does not exist", missing.display())
    );

    let mut small = fixture.spec(&fixture.raw);
    small.disk_size_mib = 15;
    assert!(matches!(
        loopback::prepare(&small),
        Err(Error::DiskSize { size_mib: 15, .. })
    ));
    assert!(!fixture.path("disks").exists());
    assert!(!fixture.path("images").exists());

    let spec = fixture.spec(&fixture.raw);
    fs::create_dir_all(fixture.path("disks")).expect("make the disks directory");
    fs::write(&spec.image, b"someone else's").expect("write the image");
    let error = loopback::prepare(&spec).unwrap_err();
    assert!(
        matches!(&error, Error::Io { path, .. } if *path == spec.image),
        "{error}"
    );
    assert_eq!(
        fs::read(&spec.image).expect("read the image"),
        b"someone else's"
    );
    assert!(losetup_j(&spec.image).is_empty());
}
