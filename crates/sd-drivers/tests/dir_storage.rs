//! The dir storage backend on real files: each kind of base, refused bases and archive entries
//! (with nothing left behind), saved images compressed and plain, and repeated cleanups.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sd_drivers::Error;
use sd_drivers::storage::dir::{self, DirSpec};
use tempfile::TempDir;

/// A spec for a domain `vm1` working in `<scratch>/work/vm1`, saving into `<scratch>/saved`.
fn spec(scratch: &Path, base: Option<PathBuf>) -> DirSpec {
    DirSpec {
        base,
        work_dir: scratch.join("work/vm1"),
        save_image: false,
        compress_image: true,
        save_dir: scratch.join("saved"),
        name: "vm1".to_string(),
    }
}

/// A base directory: nested directories, an executable, a relative symlink and an absolute
/// symlink that leads out of the tree.
fn make_base_dir(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).expect("make the base directory");
    fs::create_dir_all(root.join("empty")).expect("make the base directory");
    fs::write(root.join("etc/conf.d/app.conf"), b"key = value\n").expect("make the base directory");
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hello\n").expect("make the base directory");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750))
        .expect("make the base directory");
    fs::write(root.join("private"), b"secret").expect("make the base directory");
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600))
        .expect("make the base directory");
    std::os::unix::fs::symlink("etc/conf.d/app.conf", root.join("app.conf"))
        .expect("make the base directory");
    std::os::unix::fs::symlink("/etc", root.join("host-etc")).expect("make the base directory");
}

/// Checks that `dir` holds what [`make_base_dir`] made.
fn assert_base_contents(dir: &Path) {
    assert_eq!(
        fs::read(dir.join("etc/conf.d/app.conf")).expect("read the prepared directory"),
        b"key = value\n"
    );
    assert_eq!(
        fs::read(dir.join("run.sh")).expect("read the prepared directory"),
        b"#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        mode(&dir.join("run.sh")),
        0o750,
        "the executable bits are kept"
    );
    assert_eq!(mode(&dir.join("private")), 0o600);
    assert!(dir.join("empty").is_dir());
    let link = dir.join("app.conf");
    assert!(
        fs::symlink_metadata(&link)
            .expect("read the prepared directory")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&link).expect("read the prepared directory"),
        PathBuf::from("etc/conf.d/app.conf")
    );
    assert_eq!(
        fs::read(&link).expect("read the prepared directory"),
        b"key = value\n"
    );
    let outward = dir.join("host-etc");
    assert!(
        fs::symlink_metadata(&outward)
            .expect("read the prepared directory")
            .file_type()
            .is_symlink(),
        "copied as a symlink, not followed"
    );
    assert_eq!(
        fs::read_link(&outward).expect("read the prepared directory"),
        PathBuf::from("/etc")
    );
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

/// The tar of `root`'s contents (symlinks as symlinks), as bytes.
fn tar_of(root: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).expect("build a tar");
    builder.into_inner().expect("build a tar")
}

fn zstd_of(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("compress")
}

/// A tar holding one regular file whose name is written raw, bypassing the tar crate's checks.
fn tar_with_raw_name(name: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut file_header(4), "fine.txt", &b"fine"[..])
        .expect("build a tar");
    let mut header = file_header(4);
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    builder.append(&header, &b"evil"[..]).expect("build a tar");
    builder.into_inner().expect("build a tar")
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header
}

/// Everything under `dir`, as sorted relative paths (symlinks not followed).
fn listing(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).expect("list a directory") {
            let path = entry.expect("list a directory").path();
            found.push(
                path.strip_prefix(dir)
                    .expect("list a directory")
                    .display()
                    .to_string(),
            );
            if fs::symlink_metadata(&path)
                .expect("list a directory")
                .is_dir()
            {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The names directly in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(dir)
        .expect("list a directory")
        .map(|entry| {
            entry
                .expect("list a directory")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    found
}

/// Checks that a refused prepare left nothing: no working directory, no staging sibling, and
/// not even the parent directory it had to create.
fn assert_nothing_left(scratch: &Path) {
    assert!(
        !scratch.join("work").exists(),
        "left behind: {:?}",
        listing(scratch)
    );
}

fn bad_base_reason(error: Error) -> String {
    match error {
        Error::BadBase { reason, .. } => reason,
        other => panic!("expected BadBase, got {other:?}"),
    }
}

#[test]
fn a_directory_base_is_copied_with_symlinks_and_permissions() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("base");
    make_base_dir(&base);
    let modified = fs::metadata(base.join("run.sh"))
        .unwrap()
        .modified()
        .unwrap();

    let prepared = dir::prepare(&spec(scratch.path(), Some(base.clone()))).unwrap();

    assert_eq!(prepared.path, scratch.path().join("work/vm1"));
    assert_base_contents(&prepared.path);
    assert_eq!(
        fs::metadata(prepared.path.join("run.sh"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    assert_eq!(listing(&prepared.path), listing(&base));
    assert_eq!(
        names(&scratch.path().join("work")),
        ["vm1"],
        "no staging directory is left"
    );
    // The copy is a copy: changing it leaves the base alone.
    fs::write(prepared.path.join("etc/conf.d/app.conf"), b"changed").unwrap();
    assert_eq!(
        fs::read(base.join("etc/conf.d/app.conf")).unwrap(),
        b"key = value\n"
    );
}

#[test]
fn a_tar_base_is_unpacked() {
    let scratch = TempDir::new().unwrap();
    let source = scratch.path().join("source");
    make_base_dir(&source);
    let archive = scratch.path().join("root.tar");
    fs::write(&archive, tar_of(&source)).unwrap();

    let prepared = dir::prepare(&spec(scratch.path(), Some(archive))).unwrap();

    assert_base_contents(&prepared.path);
    assert_eq!(listing(&prepared.path), listing(&source));
}

#[test]
fn a_tar_zst_base_is_decompressed_and_unpacked() {
    let scratch = TempDir::new().unwrap();
    let source = scratch.path().join("source");
    make_base_dir(&source);
    let archive = scratch.path().join("root.tar.zst");
    fs::write(&archive, zstd_of(&tar_of(&source))).unwrap();

    let prepared = dir::prepare(&spec(scratch.path(), Some(archive))).unwrap();

    assert_base_contents(&prepared.path);
    assert_eq!(listing(&prepared.path), listing(&source));
}

#[test]
fn read_only_directories_in_an_archive_are_filled_before_being_locked() {
    let scratch = TempDir::new().unwrap();
    let source = scratch.path().join("source");
    fs::create_dir_all(source.join("ro/sub")).unwrap();
    fs::write(source.join("ro/sub/file"), b"data").unwrap();
    fs::set_permissions(source.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let archive = scratch.path().join("root.tar");
    fs::write(&archive, tar_of(&source)).unwrap();
    // Unlocked again, so that the scratch directory can be removed without root.
    fs::set_permissions(source.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();

    let prepared = dir::prepare(&spec(scratch.path(), Some(archive))).unwrap();

    assert_eq!(
        fs::read(prepared.path.join("ro/sub/file")).unwrap(),
        b"data"
    );
    assert_eq!(mode(&prepared.path.join("ro")), 0o555);
    dir::cleanup(&spec(scratch.path(), None)).unwrap();
    assert!(!prepared.path.exists());
}

#[test]
fn no_base_or_an_empty_base_gives_an_empty_directory() {
    for base in [None, Some(PathBuf::new())] {
        let scratch = TempDir::new().unwrap();
        let prepared = dir::prepare(&spec(scratch.path(), base)).unwrap();
        assert!(prepared.path.is_dir());
        assert!(listing(&prepared.path).is_empty());
    }
}

#[test]
fn a_missing_base_is_named_in_the_error() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("no-such-base");

    let error = dir::prepare(&spec(scratch.path(), Some(base.clone()))).unwrap_err();

    assert!(
        matches!(&error, Error::MissingBase(path) if *path == base),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("base `{}` does not exist", base.display())
    );
    assert_nothing_left(scratch.path());
}

#[test]
fn an_unknown_kind_of_base_is_refused_with_the_accepted_forms() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("root.zip");
    fs::write(&base, b"PK\x03\x04").unwrap();

    let error = dir::prepare(&spec(scratch.path(), Some(base.clone()))).unwrap_err();

    let message = error.to_string();
    assert!(message.contains(&base.display().to_string()), "{message}");
    for form in ["directory", "`.tar`", "`.tar.zst`"] {
        assert!(message.contains(form), "{message}");
    }
    assert_nothing_left(scratch.path());
}

#[test]
fn a_corrupt_compressed_base_is_refused() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("root.tar.zst");
    fs::write(&base, b"this is not zstd at all").unwrap();

    let reason = bad_base_reason(dir::prepare(&spec(scratch.path(), Some(base))).unwrap_err());

    assert!(reason.contains("cannot read the archive"), "{reason}");
    assert_nothing_left(scratch.path());
}

#[test]
fn a_truncated_archive_is_refused() {
    let scratch = TempDir::new().unwrap();
    let source = scratch.path().join("source");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("big"), vec![7u8; 100_000]).unwrap();
    let whole = tar_of(&source);
    let base = scratch.path().join("root.tar");
    fs::write(&base, &whole[..20_000]).unwrap();

    let reason = bad_base_reason(dir::prepare(&spec(scratch.path(), Some(base))).unwrap_err());

    assert!(reason.contains("big"), "{reason}");
    assert_nothing_left(scratch.path());
}

#[test]
fn an_entry_with_dot_dot_is_refused_and_nothing_is_left() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("evil.tar");
    fs::write(&base, tar_with_raw_name(b"../evil")).unwrap();

    let reason = bad_base_reason(dir::prepare(&spec(scratch.path(), Some(base))).unwrap_err());

    assert!(reason.contains("`../evil`"), "{reason}");
    assert_nothing_left(scratch.path());
    assert!(!scratch.path().join("evil").exists());
}

#[test]
fn an_entry_with_an_absolute_path_is_refused() {
    let scratch = TempDir::new().unwrap();
    let target = scratch.path().join("absolute-target");
    let base = scratch.path().join("evil.tar.zst");
    fs::write(
        &base,
        zstd_of(&tar_with_raw_name(target.as_os_str().as_encoded_bytes())),
    )
    .unwrap();

    let reason = bad_base_reason(dir::prepare(&spec(scratch.path(), Some(base))).unwrap_err());

    assert!(reason.contains("absolute path"), "{reason}");
    assert!(reason.contains(&target.display().to_string()), "{reason}");
    assert_nothing_left(scratch.path());
    assert!(!target.exists());
}

#[test]
fn an_entry_written_through_a_symlink_out_of_the_tree_is_refused() {
    let scratch = TempDir::new().unwrap();
    let outside = scratch.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder.append_link(&mut link, "escape", &outside).unwrap();
    builder
        .append_data(&mut file_header(5), "escape/pwned", &b"pwned"[..])
        .unwrap();
    let base = scratch.path().join("evil.tar");
    fs::write(&base, builder.into_inner().unwrap()).unwrap();

    let reason = bad_base_reason(dir::prepare(&spec(scratch.path(), Some(base))).unwrap_err());

    assert!(
        reason.contains("`escape/pwned`") && reason.contains("symlink `escape`"),
        "{reason}"
    );
    assert!(
        listing(&outside).is_empty(),
        "written outside: {:?}",
        listing(&outside)
    );
    assert_nothing_left(scratch.path());
}

#[test]
fn links_that_stay_inside_the_tree_are_unpacked() {
    let scratch = TempDir::new().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut file_header(4), "data/original", &b"data"[..])
        .unwrap();
    let mut hard = tar::Header::new_gnu();
    hard.set_entry_type(tar::EntryType::Link);
    hard.set_size(0);
    hard.set_mode(0o644);
    builder
        .append_link(&mut hard, "data/twin", "data/original")
        .unwrap();
    let mut soft = tar::Header::new_gnu();
    soft.set_entry_type(tar::EntryType::Symlink);
    soft.set_size(0);
    soft.set_mode(0o777);
    builder.append_link(&mut soft, "alias", "data").unwrap();
    builder
        .append_data(&mut file_header(3), "alias/via", &b"via"[..])
        .unwrap();
    let base = scratch.path().join("links.tar");
    fs::write(&base, builder.into_inner().unwrap()).unwrap();

    let prepared = dir::prepare(&spec(scratch.path(), Some(base))).unwrap();

    let original = fs::metadata(prepared.path.join("data/original")).unwrap();
    let twin = fs::metadata(prepared.path.join("data/twin")).unwrap();
    assert_eq!(original.ino(), twin.ino(), "a hard link, inside the tree");
    assert_eq!(fs::read(prepared.path.join("data/via")).unwrap(), b"via");
    assert_eq!(
        fs::read_link(prepared.path.join("alias")).unwrap(),
        PathBuf::from("data")
    );
}

#[test]
fn a_hard_link_out_of_the_tree_is_refused() {
    let scratch = TempDir::new().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Link);
    link.set_size(0);
    link.set_mode(0o644);
    builder
        .append_link(&mut link, "passwd", "/etc/passwd")
        .unwrap();
    let base = scratch.path().join("evil.tar");
    fs::write(&base, builder.into_inner().unwrap()).unwrap();

    let reason = bad_base_reason(dir::prepare(&spec(scratch.path(), Some(base))).unwrap_err());

    assert!(
        reason.contains("`passwd`") && reason.contains("hard link"),
        "{reason}"
    );
    assert_nothing_left(scratch.path());
}

#[test]
fn a_fifo_in_a_base_directory_is_refused() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("base");
    fs::create_dir_all(base.join("sub")).unwrap();
    fs::write(base.join("a-file"), b"x").unwrap();
    let fifo = base.join("sub/pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o644),
        0,
    )
    .unwrap();

    let reason = bad_base_reason(dir::prepare(&spec(scratch.path(), Some(base))).unwrap_err());

    assert!(
        reason.contains(&fifo.display().to_string()) && reason.contains("fifo"),
        "{reason}"
    );
    assert_nothing_left(scratch.path());
}

#[test]
fn a_base_that_contains_the_working_directory_is_refused() {
    let scratch = TempDir::new().unwrap();
    let mut inside = spec(scratch.path(), Some(scratch.path().to_path_buf()));
    inside.work_dir = scratch.path().join("vm1");

    let reason = bad_base_reason(dir::prepare(&inside).unwrap_err());

    assert!(reason.contains("would be inside"), "{reason}");
    assert!(
        listing(scratch.path()).is_empty(),
        "left behind: {:?}",
        listing(scratch.path())
    );
}

#[test]
fn an_existing_working_directory_is_left_alone() {
    let scratch = TempDir::new().unwrap();
    let spec = spec(scratch.path(), None);
    fs::create_dir_all(&spec.work_dir).unwrap();
    fs::write(spec.work_dir.join("precious"), b"keep me").unwrap();

    let error = dir::prepare(&spec).unwrap_err();

    assert!(
        matches!(&error, Error::Io { path, .. } if *path == spec.work_dir),
        "{error:?}"
    );
    assert_eq!(
        fs::read(spec.work_dir.join("precious")).unwrap(),
        b"keep me"
    );
}

#[test]
fn cleanup_without_save_removes_the_directory_and_is_safe_to_repeat() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("base");
    make_base_dir(&base);
    let spec = spec(scratch.path(), Some(base.clone()));
    let prepared = dir::prepare(&spec).unwrap();

    assert_eq!(dir::cleanup(&spec).unwrap(), None);
    assert!(!prepared.path.exists());
    assert_eq!(dir::cleanup(&spec).unwrap(), None);
    assert!(!spec.save_dir.exists(), "nothing saved");
    // The outward symlink was removed, not followed; the base is untouched.
    assert!(Path::new("/etc").is_dir());
    assert_base_contents(&base);
}

#[test]
fn save_image_compressed_writes_a_tar_zst_holding_the_files() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("base");
    make_base_dir(&base);
    let mut spec = spec(scratch.path(), Some(base.clone()));
    spec.save_image = true;
    let prepared = dir::prepare(&spec).unwrap();
    fs::write(prepared.path.join("output.log"), b"made while running\n").unwrap();

    let image = dir::cleanup(&spec).unwrap().expect("an image was saved");

    assert!(!prepared.path.exists());
    let name = image.file_name().unwrap().to_str().unwrap();
    assert!(image.starts_with(&spec.save_dir), "{}", image.display());
    let seconds = name
        .strip_prefix("vm1-")
        .and_then(|rest| rest.strip_suffix(".tar.zst"))
        .unwrap();
    assert!(seconds.parse::<u64>().unwrap() > 1_600_000_000, "{name}");
    assert_eq!(names(&spec.save_dir), [name], "no partial file is left");

    let compressed = fs::read(&image).unwrap();
    assert_eq!(&compressed[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let tar_bytes = zstd::decode_all(&compressed[..]).unwrap();
    let unpacked = scratch.path().join("unpacked");
    tar::Archive::new(&tar_bytes[..]).unpack(&unpacked).unwrap();
    assert_base_contents(&unpacked);
    assert_eq!(
        fs::read(unpacked.join("output.log")).unwrap(),
        b"made while running\n"
    );

    // The entries are named relative to the working directory.
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    let mut expected = listing(&base);
    expected.push("output.log".to_string());
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn save_image_uncompressed_writes_a_plain_tar() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("base");
    make_base_dir(&base);
    let mut spec = spec(scratch.path(), Some(base));
    spec.save_image = true;
    spec.compress_image = false;
    dir::prepare(&spec).unwrap();

    let image = dir::cleanup(&spec).unwrap().expect("an image was saved");

    assert!(
        image.to_str().unwrap().ends_with(".tar"),
        "{}",
        image.display()
    );
    let mut bytes = Vec::new();
    fs::File::open(&image)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(&bytes[257..262], b"ustar", "a plain tar header");
    let unpacked = scratch.path().join("unpacked");
    tar::Archive::new(&bytes[..]).unpack(&unpacked).unwrap();
    assert_base_contents(&unpacked);
    assert!(!spec.work_dir.exists());
}

#[test]
fn a_saved_image_is_a_base_again_and_images_never_replace_each_other() {
    let scratch = TempDir::new().unwrap();
    let base = scratch.path().join("base");
    make_base_dir(&base);
    let mut first = spec(scratch.path(), Some(base));
    first.save_image = true;
    dir::prepare(&first).unwrap();
    let first_image = dir::cleanup(&first).unwrap().unwrap();

    let mut second = spec(scratch.path(), Some(first_image.clone()));
    second.save_image = true;
    let prepared = dir::prepare(&second).unwrap();
    assert_base_contents(&prepared.path);
    let second_image = dir::cleanup(&second).unwrap().unwrap();

    assert_ne!(first_image, second_image);
    assert!(first_image.is_file() && second_image.is_file());
}

#[test]
fn cleanup_twice_after_a_save_saves_once() {
    let scratch = TempDir::new().unwrap();
    let mut spec = spec(scratch.path(), None);
    spec.save_image = true;
    dir::prepare(&spec).unwrap();

    assert!(dir::cleanup(&spec).unwrap().is_some());
    assert_eq!(dir::cleanup(&spec).unwrap(), None);
    assert_eq!(names(&spec.save_dir).len(), 1);
}

#[test]
fn cleanup_removes_a_leftover_preparing_directory() {
    let scratch = TempDir::new().unwrap();
    let spec = spec(scratch.path(), None);
    // As if an agent had crashed while preparing: a half-made staging directory, no final one.
    let leftover = scratch.path().join("work/vm1.preparing-999999");
    fs::create_dir_all(leftover.join("half/made")).unwrap();
    fs::write(leftover.join("half/made/file"), b"partial").unwrap();
    let neighbour = scratch.path().join("work/vm10.preparing-1");
    fs::create_dir_all(&neighbour).unwrap();

    assert_eq!(dir::cleanup(&spec).unwrap(), None);

    assert!(!leftover.exists());
    assert!(
        neighbour.exists(),
        "another domain's staging directory is not ours"
    );
    // And with the working directory present too.
    let leftover = scratch.path().join("work/vm1.preparing-1");
    fs::create_dir_all(&leftover).unwrap();
    dir::prepare(&spec).unwrap();
    dir::cleanup(&spec).unwrap();
    assert_eq!(names(&scratch.path().join("work")), ["vm10.preparing-1"]);
}

#[test]
fn a_partial_image_of_a_dead_process_is_removed_at_the_next_save() {
    let scratch = TempDir::new().unwrap();
    let mut spec = spec(scratch.path(), None);
    spec.save_image = true;
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    fs::create_dir_all(&spec.save_dir).unwrap();
    let dead_partial = spec.save_dir.join(format!(".vm1.partial-{dead_pid}-0"));
    fs::write(&dead_partial, b"half an image").unwrap();
    let live_partial = spec
        .save_dir
        .join(format!(".vm1.partial-{}-999", std::process::id()));
    fs::write(&live_partial, b"being written").unwrap();

    dir::prepare(&spec).unwrap();
    let image = dir::cleanup(&spec).unwrap().unwrap();

    assert!(!dead_partial.exists());
    assert!(
        live_partial.exists(),
        "a save in progress in a live process is not touched"
    );
    assert!(image.is_file());
}
