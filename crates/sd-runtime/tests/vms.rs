//! QEMU domains with real guests (TCG here): boot to the ready marker with the right hostname
//! and ip, a disk from a qcow2 overlay or a loop device, a crash on demand restarted by the
//! strategy, memory changed through the balloon, graceful terminate, and a clean host.
//!
//! They need QEMU and the test guest: `scripts/test.sh` installs the one and builds the other
//! (`scripts/build-guest.sh`, into `$SD_GUEST_DIR` or /var/lib/sd/guest).

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::{TestNode, alive, component, pid};
use sd_proto::{ComponentState, DeploymentState};

/// How long a boot may take here.
const BOOT_LIMIT: Duration = Duration::from_secs(90);

fn guest_dir() -> PathBuf {
    let dir =
        PathBuf::from(std::env::var("SD_GUEST_DIR").unwrap_or_else(|_| "/var/lib/sd/guest".into()));
    assert!(
        dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file(),
        "the test guest is missing in {}: run scripts/build-guest.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A host running one VM named `vm1` on a disk from `backend`, its port 7000 forwarded to
/// `answer` and its crash port 7001 to `crash`.
fn host(backend: &str, answer: u16, crash: u16) -> String {
    let guest = guest_dir();
    format!(
        r#"sfConfig extends PhysicalHost {{
             sfLivenessDelay 2;
             disk extends {backend} {{ baseImage "{disk}"; }}
             vm1 extends QemuDomain {{
               kernel "{kernel}";
               initrd "{initrd}";
               memory 96;
               maxMemory 128;
               ip "10.0.2.15";
               storageBackend LAZY ATTRIB disk;
               portForwards [| "tcp:{answer}:7000", "tcp:{crash}:7001" |];
               readyMarker "SD-READY hostname=vm1 ip=10.0.2.15";
               readyPort {answer};
               bootTimeout 80;
               sdStopTimeout 5;
             }}
           }}"#,
        disk = guest.join("disk.img").display(),
        kernel = guest.join("vmlinuz").display(),
        initrd = guest.join("initrd.img").display(),
    )
}

fn answer(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

fn loop_devices_of(dir: &std::path::Path) -> String {
    let output = std::process::Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "BACK-FILE"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&*dir.to_string_lossy()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn boot_crash_balloon_terminate(backend: &str) {
    let t = TestNode::new().await;
    let (answer_port, crash_port) = (free_port(), free_port());
    t.deploy("vms", &host(backend, answer_port, crash_port))
        .await
        .unwrap();
    // TCG boots slow down a lot on a loaded host (the CI machine has 2 cores).
    let status = t
        .wait_within("vms", BOOT_LIMIT, |s| {
            !matches!(s.deployment.state, DeploymentState::Deploying)
        })
        .await;
    assert_eq!(
        status.deployment.state,
        DeploymentState::Running,
        "{}",
        t.timeline()
    );
    let vmm = pid(&status, "sfConfig:vm1");
    let log = t.node.log_path("vms", "sfConfig:vm1").unwrap();
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(
        console.contains("SD-READY hostname=vm1 ip=10.0.2.15"),
        "{console}"
    );
    assert!(
        console.contains("SD-DISK"),
        "the disk is mounted: {console}"
    );
    assert!(answer(answer_port).contains("vm1"), "port 7000 answers");
    // Its boot time is measured (`sd_vm_boot_seconds`).
    let boots = t.node.metrics().vm_boot;
    assert_eq!(boots.count, 1, "{boots:?}");
    assert!(boots.sum_us > 0);

    // The balloon takes the guest from its boot memory (128) to `memory` (96), and moves live.
    let socket = std::fs::read_dir(t.data_dir().join("deployments/vms/run"))
        .unwrap()
        .map(|e| e.unwrap().path().join("qmp.sock"))
        .find(|p| p.exists())
        .expect("the QMP socket");
    let mut qmp = sd_drivers::qemu::qmp::Qmp::connect(&socket).await.unwrap();
    assert_eq!(qmp.status().await.unwrap(), "running");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while qmp.balloon().await.unwrap() != 96 {
        assert!(std::time::Instant::now() < deadline, "balloon to 96 MiB");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `sd set`: the running guest's memory, through the runtime, within what it booted with.
    // (QEMU serves one QMP client at a time: the test lets go of its own meanwhile.)
    drop(qmp);
    let set = |value: &str| sd_proto::ReconfigureRequest {
        path: "vm1".into(),
        attribute: "memory".into(),
        value: value.into(),
    };
    let refused = t.node.reconfigure("vms", set("200")).await.unwrap_err();
    assert!(
        refused.to_string().contains("between 16 and 128 MiB"),
        "{refused}"
    );
    let done = t.node.reconfigure("vms", set("80")).await.unwrap();
    assert_eq!((done.previous.as_str(), done.value.as_str()), ("96", "80"));
    let mut qmp = sd_drivers::qemu::qmp::Qmp::connect(&socket).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while qmp.balloon().await.unwrap() != 80 {
        assert!(std::time::Instant::now() < deadline, "balloon to 80 MiB");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(qmp);
    assert_eq!(
        pid(&t.node.status("vms").unwrap(), "sfConfig:vm1"),
        vmm,
        "not restarted"
    );

    // Crash on demand: the guest panics, QEMU exits, the host's strategy restarts it.
    let mut crash = std::net::TcpStream::connect(("127.0.0.1", crash_port)).unwrap();
    let _ = crash.write_all(b"crash\n");
    let status = t
        .wait_within("vms", BOOT_LIMIT, |s| {
            let vm = component(s, "sfConfig:vm1");
            vm.restarts == 1 && vm.state == ComponentState::Running
        })
        .await;
    assert!(!alive(vmm), "the crashed VMM is gone");
    let vmm = pid(&status, "sfConfig:vm1");
    assert!(
        answer(answer_port).contains("vm1"),
        "the restarted guest answers"
    );

    t.node.terminate("vms").await.unwrap();
    assert!(!alive(vmm));
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
    assert_eq!(loop_devices_of(t.data_dir()), "", "no loop device left");
    let sockets: Vec<_> = walk(t.data_dir())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sock"))
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_qcow2_overlay_boots_crashes_is_restarted_and_leaves_nothing() {
    boot_crash_balloon_terminate("QcowStorageBackend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_loop_device_boots_crashes_is_restarted_and_leaves_nothing() {
    boot_crash_balloon_terminate("LoopbackStorageBackend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kernel_or_base_image_fails_the_deploy_naming_the_file() {
    let t = TestNode::new().await;
    let guest = guest_dir();
    t.deploy(
        "nokernel",
        &format!(
            r#"sfConfig extends Compound {{ vm extends QemuDomain {{ kernel "/no/such/vmlinuz"; initrd "{}"; }} }}"#,
            guest.join("initrd.img").display()
        ),
    )
    .await
    .unwrap();
    let status = t
        .wait_state("nokernel", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    let text = format!("{:?}", status.deployment.state);
    assert!(
        text.contains("/no/such/vmlinuz") && text.contains("does not exist"),
        "{text}"
    );

    t.deploy(
        "nobase",
        r#"sfConfig extends PhysicalHost { d extends QcowStorageBackend { baseImage "/no/such/disk.img"; } }"#,
    )
    .await
    .unwrap();
    let status = t
        .wait_state("nobase", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    let text = format!("{:?}", status.deployment.state);
    assert!(text.contains("/no/such/disk.img"), "{text}");
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_gets_ready_fails_after_its_boot_timeout() {
    let t = TestNode::new().await;
    let guest = guest_dir();
    t.deploy(
        "slow",
        &format!(
            r#"sfConfig extends Compound {{
                 sdRestartStrategy "none";
                 vm extends QemuDomain {{
                   kernel "{}"; initrd "{}";
                   readyMarker "A MARKER THE GUEST NEVER PRINTS";
                   bootTimeout 3;
                 }}
               }}"#,
            guest.join("vmlinuz").display(),
            guest.join("initrd.img").display()
        ),
    )
    .await
    .unwrap();
    let status = t
        .wait_state("slow", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    let text = format!("{:?}", status.deployment.state);
    assert!(text.contains("not ready within 3 s"), "{text}");
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figure_1_deploys_three_vms_and_terminates_cleanly() {
    guest_dir();
    let t = TestNode::new().await;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/examples/figure1.sf"),
    )
    .unwrap();
    t.node
        .deploy(sd_proto::DeployRequest {
            name: "figure1".into(),
            description: text,
            source: "figure1.sf".into(),
        })
        .await
        .unwrap();
    let status = t
        .wait_within("figure1", BOOT_LIMIT, |s| {
            !matches!(s.deployment.state, DeploymentState::Deploying)
        })
        .await;
    assert_eq!(
        status.deployment.state,
        DeploymentState::Running,
        "{}",
        t.timeline()
    );
    let vmms: Vec<u32> = [
        "computer1:domain1",
        "computer1:domain2",
        "computer2:domain3",
    ]
    .iter()
    .map(|path| pid(&status, &format!("sfConfig:{path}")))
    .collect();
    let log = t
        .node
        .log_path("figure1", "sfConfig:computer2:domain3")
        .unwrap();
    let console = std::fs::read_to_string(log).unwrap();
    assert!(
        console.contains("SD-READY hostname=PhysHost022-dom1 ip=10.0.2.17"),
        "{console}"
    );
    t.node.terminate("figure1").await.unwrap();
    for vmm in vmms {
        assert!(!alive(vmm));
    }
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
    assert_eq!(loop_devices_of(t.data_dir()), "", "no loop device left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_vm_pool_boots_again_a_vm_whose_vmm_is_killed() {
    guest_dir();
    let t = TestNode::new().await;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/examples/vm-pool.sf"),
    )
    .unwrap();
    t.node
        .deploy(sd_proto::DeployRequest {
            name: "pool".into(),
            description: text,
            source: "vm-pool.sf".into(),
        })
        .await
        .unwrap();
    let status = t
        .wait_within("pool", BOOT_LIMIT, |s| {
            !matches!(s.deployment.state, DeploymentState::Deploying)
        })
        .await;
    assert_eq!(
        status.deployment.state,
        DeploymentState::Running,
        "{}",
        t.timeline()
    );
    let killed = pid(&status, "sfConfig:vms:r2:vm");
    let kept = pid(&status, "sfConfig:vms:r1:vm");
    common::kill(killed);
    let status = t
        .wait_within("pool", BOOT_LIMIT, |s| {
            let vm = component(s, "sfConfig:vms:r2:vm");
            vm.restarts == 1 && vm.state == ComponentState::Running
        })
        .await;
    assert_eq!(pid(&status, "sfConfig:vms:r1:vm"), kept, "one_for_one");
    t.node.terminate("pool").await.unwrap();
    assert!(!alive(kept));
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}
