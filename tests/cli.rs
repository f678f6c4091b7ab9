//! End-to-end tests of the `sd` command line: they run the real binary as users do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .current_dir(repo())
        .env_remove("SD_HOST1")
        .env_remove("SD_HOST2")
        .env_remove("SD_GUEST_DIR")
        .output()
        .expect("sd runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-cli-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn figure1_resolves_to_hosts_domains_and_lazy_storage() {
    let output = sd(&["resolve", "configs/examples/figure1.sf", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let tree: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    let computer1 = &tree["computer1"];
    assert_eq!(computer1["sfClass"], "sd.PhysicalHost");
    assert_eq!(
        computer1["sfProcessHost"],
        serde_json::Value::Null,
        "unset host means the local node"
    );
    assert_eq!(
        computer1["domain1"]["storageBackend"],
        serde_json::json!({"$lazy": "ATTRIB loop"})
    );
    assert_eq!(computer1["domain1"]["hostname"], "PhysHost01-dom1");
    assert_eq!(computer1["domain1"]["sfClass"], "sd.QemuDomain");
    assert_eq!(computer1["loop"]["sfClass"], "sd.LoopbackStorageBackend");
    assert_eq!(
        computer1["loop"]["shell"],
        serde_json::json!({"$lazy": "ATTRIB myShell"})
    );
    assert_eq!(computer1["qcow"]["sfClass"], "sd.QcowStorageBackend");
    assert_eq!(
        tree["computer2"]["domain3"]["storageBackend"],
        serde_json::json!({"$lazy": "ATTRIB overlay"})
    );
}

#[test]
fn figure1_hosts_come_from_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["resolve", "configs/examples/figure1.sf"])
        .current_dir(repo())
        .env("SD_HOST1", "node-a")
        .env("SD_HOST2", "node-b")
        .output()
        .expect("sd runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let tree: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    assert_eq!(tree["computer1"]["sfProcessHost"], "node-a");
    assert_eq!(tree["computer2"]["sfProcessHost"], "node-b");
}

#[test]
fn sf_output_resolves_back_to_the_same_tree() {
    let json = sd(&["resolve", "configs/examples/figure1.sf"]);
    let sf = sd(&["resolve", "configs/examples/figure1.sf", "--format", "sf"]);
    assert!(sf.status.success(), "{}", stderr(&sf));
    let dir = temp_dir("roundtrip");
    let file = dir.join("figure1-resolved.sf");
    std::fs::write(&file, sf.stdout).expect("write");
    let again = sd(&["resolve", file.to_str().expect("utf-8 path")]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&json), stdout(&again));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn validate_says_ok() {
    let output = sd(&["validate", "configs/examples/figure1.sf"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output), "ok\n");
}

#[test]
fn a_wrong_description_exits_1_with_every_error_located() {
    let dir = temp_dir("wrong");
    let file = dir.join("bad.sf");
    std::fs::write(&file, "sfConfig extends {\n  a 1\n  b ATTRIB;\n  c 3;\n}\n").expect("write");
    let output = sd(&["validate", file.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    let name = file.display().to_string();
    assert!(
        errors.contains(&format!(
            "{name}:3:3: error: syntax error: expected `;` after the attribute value"
        )),
        "{errors}"
    );
    assert!(errors.contains("3 |   b ATTRIB;"), "{errors}");
    assert!(errors.contains("  |   ^"), "{errors}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unresolved_references_name_the_reference_and_the_component() {
    let dir = temp_dir("unresolved");
    let file = dir.join("ref.sf");
    std::fs::write(
        &file,
        "sfConfig extends {\n  host extends {\n    ip ATTRIB address;\n  }\n}\n",
    )
    .expect("write");
    let output = sd(&["resolve", file.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    assert!(
        errors.contains(
            ":3:8: error: reference `ATTRIB address` from `sfConfig:host` does not resolve"
        ),
        "{errors}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(sd(&["resolve"]).status.code(), Some(2));
    assert_eq!(
        sd(&["resolve", "configs/examples/figure1.sf", "--format", "yaml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(sd(&["frobnicate"]).status.code(), Some(2));
    let missing = sd(&["resolve", "no/such/file.sf"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("no/such/file.sf"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn include_dirs_and_properties() {
    let dir = temp_dir("include");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).expect("mkdir");
    std::fs::write(
        lib.join("base.sf"),
        "Base extends { size 10; name PROPERTY pool.name; }\n",
    )
    .expect("write");
    let file = dir.join("main.sf");
    std::fs::write(
        &file,
        "#include \"base.sf\"\nsfConfig extends Base { double (size * 2); }\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8 path");
    let without = sd(&["resolve", path]);
    assert_eq!(
        without.status.code(),
        Some(1),
        "base.sf is only on the include path"
    );
    assert!(
        stderr(&without).contains("include \"base.sf\" not found"),
        "{}",
        stderr(&without)
    );
    let with = sd(&[
        "resolve",
        path,
        "-I",
        lib.to_str().expect("utf-8"),
        "-D",
        "pool.name=batch",
    ]);
    assert!(with.status.success(), "{}", stderr(&with));
    let tree: serde_json::Value = serde_json::from_str(&stdout(&with)).expect("json");
    assert_eq!(
        tree,
        serde_json::json!({"size": 10, "name": "batch", "double": 20})
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_environment_variable_that_is_not_utf8_is_no_crash() {
    use std::os::unix::ffi::OsStrExt;
    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["validate", "configs/examples/figure1.sf"])
        .current_dir(repo())
        .env("SD_NOT_UTF8", std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .output()
        .expect("sd runs");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}
