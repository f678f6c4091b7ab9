//! End-to-end tests of `sd agent` and the commands that talk to it: each test starts the
//! real binary on a temporary data dir (API on a free port) and drives it with `sd deploy`,
//! `status`, `ls`, `logs` and `terminate`, as users do.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sd_proto::{DeploymentState, DeploymentStatus, DeploymentSummary};

const HELLO: &str = r#"#include "prelude.sf"
sfConfig extends Compound {
  a extends ProcessDomain { command [| "/bin/sh", "-c", "echo hello; sleep 30" |]; }
}
"#;

/// A running `sd agent`, killed (SIGKILL) when dropped.
struct Agent {
    child: Child,
    /// The first line it printed.
    banner: String,
    url: String,
    data_dir: PathBuf,
}

impl Agent {
    /// `sd agent` on `data_dir`, as these tests run it.
    fn command(data_dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sd"));
        command
            .args(["agent", "--name", "e2e", "--api-listen", "127.0.0.1:0"])
            // These tests boot no VM: no accelerator probe.
            .args(["--vm-accelerator", "tcg"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped());
        command
    }

    /// Starts an agent on `data_dir` and waits (up to 20 s) until it has written `api.url`.
    fn start(data_dir: &Path) -> Agent {
        let mut command = Agent::command(data_dir);
        // Its log on the test's output: warnings and errors only.
        command.env("SD_LOG", "warn");
        Agent::wait_up(command.spawn().expect("sd agent starts"), data_dir)
    }

    /// Waits (up to 20 s) for a spawned agent's banner on stdout and its `api.url`.
    fn wait_up(mut child: Child, data_dir: &Path) -> Agent {
        let stdout = child.stdout.take().expect("stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let banner = line_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the agent says it is up");
        let url = std::fs::read_to_string(data_dir.join("api.url"))
            .expect("api.url is written before the agent says it is up")
            .trim()
            .to_string();
        Agent {
            child,
            banner: banner.trim_end().to_string(),
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// `sd ARGS` in `work`, as a user of this agent's host (SD_DATA_DIR set).
    fn sd(&self, work: &Path, args: &[&str]) -> Output {
        client(work, &self.data_dir).args(args).run()
    }

    /// Sends SIGTERM and waits (up to 20 s) for the agent to exit.
    fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.expect("kill runs").success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The longest any `sd` command may take (`terminate --wait` included).
const COMMAND_WITHIN: Duration = Duration::from_secs(60);

/// Runs a command to its end, collecting its output; one that takes longer than
/// [`COMMAND_WITHIN`] is killed and fails the test instead of hanging it.
trait Run {
    fn run(&mut self) -> Output;
}

impl Run for Command {
    fn run(&mut self) -> Output {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sd runs");
        let pid = child.id();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait_with_output());
        });
        match done_rx.recv_timeout(COMMAND_WITHIN) {
            Ok(output) => output.expect("sd's output"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("{self:?} did not end within {COMMAND_WITHIN:?}");
            }
        }
    }
}

/// A `sd` command run in `work` against the agent of `data_dir`.
fn client(work: &Path, data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sd"));
    command
        .current_dir(work)
        .env("SD_DATA_DIR", data_dir)
        .env_remove("SD_AGENT")
        .env_remove("SD_TOKEN_FILE");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("sd exited (not killed)")
}

/// A temporary work dir holding `hello.sf`, and a data dir.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().expect("temp dir");
    let work = root.path().join("work");
    let data = root.path().join("data");
    std::fs::create_dir_all(&work).expect("work dir");
    std::fs::write(work.join("hello.sf"), HELLO).expect("hello.sf");
    (root, work, data)
}

/// Whether a process with this pid exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

fn status_json(agent: &Agent, work: &Path, name: &str) -> DeploymentStatus {
    let output = agent.sd(work, &["status", name, "--format", "json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("status JSON")
}

fn ls_json(agent: &Agent, work: &Path) -> Vec<DeploymentSummary> {
    let output = agent.sd(work, &["ls", "--format", "json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("ls JSON")
}

fn pid_of(status: &DeploymentStatus, path: &str) -> u32 {
    status
        .components
        .iter()
        .find(|c| c.path == path)
        .and_then(|c| c.pid)
        .unwrap_or_else(|| panic!("no pid for {path}: {status:#?}"))
}

#[test]
fn deploy_status_logs_and_terminate_through_the_agent() {
    let (_root, work, data) = dirs();
    let agent = Agent::start(&data);
    assert_eq!(
        agent.banner,
        format!(
            "sd agent e2e: api on {}, data in {}",
            agent.url,
            data.display()
        )
    );

    let output = agent.sd(
        &work,
        &["deploy", "hello", "hello.sf", "--wait", "--timeout", "30"],
    );
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("sfConfig:a (ProcessDomain) running"),
        "{printed}"
    );
    assert!(
        printed.contains("hello: 2 components running in "),
        "{printed}"
    );

    let status = status_json(&agent, &work, "hello");
    assert_eq!(status.deployment.state, DeploymentState::Running);
    assert_eq!(status.deployment.source, "hello.sf");
    let pid = pid_of(&status, "sfConfig:a");
    assert!(alive(pid));

    let output = agent.sd(&work, &["status", "hello"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let table = stdout(&output);
    assert!(
        table.starts_with("hello: running (2 of 2 components running"),
        "{table}"
    );
    assert!(
        table.contains("PATH") && table.contains("LAST-ERROR"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|line| line.trim_start().starts_with("sfConfig:a"))
        .expect("a row for sfConfig:a");
    assert!(
        row.contains("ProcessDomain") && row.contains(&pid.to_string()),
        "{row}"
    );
    let every = stdout(&agent.sd(&work, &["status"]));
    assert!(every.starts_with("hello: running"), "{every}");

    let output = agent.sd(&work, &["ls"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let listing = stdout(&output);
    assert!(listing.starts_with("NAME"), "{listing}");
    assert!(
        listing
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("hello")
                && l.contains("running")
                && l.ends_with("hello.sf")),
        "{listing}"
    );
    let listed = ls_json(&agent, &work);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].running, 2);

    // The echo may come a moment after the process is recorded running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = agent.sd(&work, &["logs", "hello", "sfConfig:a"]);
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        if stdout(&output) == "hello\n" {
            break;
        }
        assert!(Instant::now() < deadline, "log: {:?}", stdout(&output));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut follower = client(&work, &data)
        .args(["logs", "hello", "a", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sd logs --follow runs");
    let followed = follower.stdout.take().expect("stdout");
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(followed).lines() {
            let _ = line_tx.send(line);
        }
    });
    let first = line_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a line");
    assert_eq!(first.expect("text"), "hello");

    let output = agent.sd(&work, &["deploy", "hello", "hello.sf"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("exists already"),
        "{}",
        stderr(&output)
    );

    let output = agent.sd(&work, &["terminate", "hello", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), "terminated hello\n");
    assert!(!alive(pid), "process {pid} survived terminate --wait");
    assert!(ls_json(&agent, &work).is_empty());
    let output = agent.sd(&work, &["ls"]);
    assert_eq!(stdout(&output).lines().count(), 1, "only the header");

    // The follow ends with the deployment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        if let Some(status) = follower.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = follower.kill();
            panic!("sd logs --follow did not end with its deployment");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ended.success());

    let output = agent.sd(&work, &["terminate", "hello"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("no deployment named \"hello\""),
        "{}",
        stderr(&output)
    );
    let output = agent.sd(&work, &["status", "hello"]);
    assert_eq!(code(&output), 1);
    let output = agent.sd(&work, &["logs", "hello", "a"]);
    assert_eq!(code(&output), 1);
}

#[test]
fn deploy_and_terminate_without_wait_return_at_once() {
    let (_root, work, data) = dirs();
    let agent = Agent::start(&data);
    let output = agent.sd(&work, &["deploy", "quick", "hello.sf"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), "deployed quick\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_json(&agent, &work, "quick").deployment.state != DeploymentState::Running {
        assert!(Instant::now() < deadline, "quick does not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = pid_of(&status_json(&agent, &work, "quick"), "sfConfig:a");

    let output = agent.sd(&work, &["terminate", "quick"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stdout(&output).starts_with("terminating quick"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ls_json(&agent, &work).is_empty() || alive(pid) {
        assert!(Instant::now() < deadline, "quick is not gone");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_wrong_description_is_reported_without_contacting_any_agent() {
    let (_root, work, data) = dirs();
    std::fs::write(
        work.join("bad.sf"),
        "#include \"prelude.sf\"\nsfConfig extends Compound {\n  a extends NoSuchComponent;\n}\n",
    )
    .expect("bad.sf");
    // No agent and no token: a request would fail with exit code 3.
    let output = client(&work, &data)
        .args(["deploy", "bad", "bad.sf", "--agent", "http://127.0.0.1:1"])
        .run();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let errors = stderr(&output);
    assert!(errors.contains("bad.sf:3:"), "{errors}");
    assert!(!errors.contains("agent"), "{errors}");

    let output = client(&work, &data)
        .args(["deploy", "bad", "missing.sf"])
        .run();
    assert_eq!(code(&output), 2, "{}", stderr(&output));
}

#[test]
fn no_token_a_wrong_token_or_no_agent_exit_3_naming_what_failed() {
    let (_root, work, data) = dirs();
    let agent = Agent::start(&data);

    let output = client(&work, &data)
        .args(["ls", "--token-file", "/nonexistent/token"])
        .run();
    assert_eq!(code(&output), 3);
    assert!(
        stderr(&output).contains("/nonexistent/token"),
        "{}",
        stderr(&output)
    );

    let output = client(&work, &data)
        .env("SD_TOKEN_FILE", "/nonexistent/token")
        .args(["deploy", "hello", "hello.sf"])
        .run();
    assert_eq!(code(&output), 3);
    assert!(
        stderr(&output).contains("/nonexistent/token"),
        "{}",
        stderr(&output)
    );

    let wrong = work.join("wrong-token");
    std::fs::write(&wrong, format!("{}\n", "0".repeat(64))).expect("token");
    let output = client(&work, &data)
        .arg("ls")
        .arg("--token-file")
        .arg(&wrong)
        .run();
    assert_eq!(code(&output), 3);
    let message = stderr(&output);
    assert!(
        message.contains("refused") && message.contains("wrong-token"),
        "{message}"
    );

    let output = client(&work, &data)
        .args(["status", "--agent", "http://127.0.0.1:1"])
        .run();
    assert_eq!(code(&output), 3);
    assert!(
        stderr(&output).contains("http://127.0.0.1:1"),
        "{}",
        stderr(&output)
    );

    // The right token, found through SD_DATA_DIR, works.
    assert!(ls_json(&agent, &work).is_empty());
}

#[test]
fn a_second_agent_on_the_same_data_dir_or_port_exits_1() {
    let (root, _work, data) = dirs();
    let agent = Agent::start(&data);
    let port = agent.url.rsplit(':').next().expect("a port");

    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["agent", "--name", "other", "--api-listen", "127.0.0.1:0"])
        .args(["--vm-accelerator", "tcg"])
        .arg("--data-dir")
        .arg(&data)
        .run();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(
        stderr(&output)
            .lines()
            .any(|line| line.starts_with("error: ")),
        "{}",
        stderr(&output)
    );

    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["agent", "--name", "other"])
        .arg("--data-dir")
        .arg(root.path().join("other"))
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{port}"))
        .run();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{}",
        stderr(&output)
    );

    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["agent", "--data-dir", "/tmp"])
        .run();
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(stderr(&output).contains("--name"), "{}", stderr(&output));
}

#[test]
fn sigterm_stops_the_agent_and_the_next_one_adopts_its_workloads() {
    let (_root, work, data) = dirs();
    let agent = Agent::start(&data);
    let token = std::fs::read_to_string(data.join("token")).expect("token");
    let output = agent.sd(
        &work,
        &["deploy", "kept", "hello.sf", "--wait", "--timeout", "30"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let pid = pid_of(&status_json(&agent, &work, "kept"), "sfConfig:a");

    let status = agent.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!data.join("api.url").exists(), "api.url is removed at exit");
    assert!(alive(pid), "workloads outlive the agent");

    let agent = Agent::start(&data);
    assert_eq!(
        std::fs::read_to_string(data.join("token")).expect("token"),
        token,
        "the token is reused"
    );
    let status = status_json(&agent, &work, "kept");
    assert_eq!(status.deployment.state, DeploymentState::Running);
    assert_eq!(
        pid_of(&status, "sfConfig:a"),
        pid,
        "re-adopted, not restarted"
    );
    let output = agent.sd(&work, &["terminate", "kept", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(!alive(pid));
}

/// The processes (group leaders) that carry this data dir's marker: every domain the agents
/// on it started and that still runs.
fn marked(data: &Path) -> Vec<u32> {
    let wanted = format!("SD_DATA_DIR={}", data.display());
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|entry| entry == wanted.as_bytes())
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn wait_status(
    agent: &Agent,
    work: &Path,
    name: &str,
    check: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_json(agent, work, name);
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out: {status:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SURVIVORS: &str = r#"#include "prelude.sf"
sfConfig extends PhysicalHost {
  disk extends DirStorageBackend { setupScript "echo kept > state.txt"; }
  keep extends ProcessDomain { storageBackend LAZY ATTRIB disk; command [| "/bin/sleep", "600" |]; }
  lost extends ProcessDomain { command [| "/bin/sleep", "600" |]; }
}
"#;

#[test]
fn sigkill_of_the_agent_then_restart_readopts_live_domains_and_restarts_dead_ones() {
    let (_root, work, data) = dirs();
    std::fs::write(work.join("survivors.sf"), SURVIVORS).expect("write");
    let mut agent = Agent::start(&data);
    let output = agent.sd(&work, &["deploy", "s", "survivors.sf", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let before = status_json(&agent, &work, "s");
    let keep = pid_of(&before, "sfConfig:keep");
    let lost = pid_of(&before, "sfConfig:lost");

    // SIGKILL: the agent gets no chance to do anything.
    agent.child.kill().expect("SIGKILL");
    agent.child.wait().expect("reaped");
    drop(agent);
    assert!(alive(keep) && alive(lost), "domains outlive their agent");
    // One domain dies while no agent watches it.
    assert!(
        Command::new("kill")
            .args(["-KILL", &lost.to_string()])
            .status()
            .expect("kill")
            .success()
    );

    let agent = Agent::start(&data);
    let after = wait_status(&agent, &work, "s", |s| {
        s.deployment.state == DeploymentState::Running
            && s.components
                .iter()
                .all(|c| c.state == sd_proto::ComponentState::Running)
            && s.components
                .iter()
                .any(|c| c.path == "sfConfig:lost" && c.restarts == 1)
    });
    assert_eq!(
        pid_of(&after, "sfConfig:keep"),
        keep,
        "re-adopted by pid and start time"
    );
    assert_ne!(
        pid_of(&after, "sfConfig:lost"),
        lost,
        "restarted by its strategy"
    );
    let disk = std::fs::read_dir(data.join("deployments/s/storage"))
        .expect("storage kept")
        .next()
        .expect("one backend")
        .expect("entry")
        .path();
    assert_eq!(
        std::fs::read_to_string(disk.join("state.txt")).expect("state kept"),
        "kept\n"
    );

    // Supervision works on the re-adopted domain as on any other.
    assert!(
        Command::new("kill")
            .args(["-KILL", &keep.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    wait_status(&agent, &work, "s", |s| {
        s.components.iter().any(|c| {
            c.path == "sfConfig:keep" && c.restarts == 1 && c.pid.is_some_and(|p| p != keep)
        })
    });

    let output = agent.sd(&work, &["terminate", "s", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(
        marked(&data).is_empty(),
        "nothing left: {:?}",
        marked(&data)
    );
    assert!(!data.join("deployments/s").exists());
}

#[test]
fn an_acknowledged_deploy_survives_a_sigkill_right_after_with_no_duplicate() {
    let (_root, work, data) = dirs();
    std::fs::write(
        work.join("many.sf"),
        r#"#include "prelude.sf"
sfConfig extends Pool { replicas 40; template extends LAZY ProcessDomain { command [| "/bin/sleep", "600" |]; } }
"#,
    )
    .expect("write");
    let mut agent = Agent::start(&data);
    let output = agent.sd(&work, &["deploy", "many", "many.sf"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    // Killed while the replicas are being started: some spawned, some recorded, some not.
    agent.child.kill().expect("SIGKILL");
    agent.child.wait().expect("reaped");
    drop(agent);

    let agent = Agent::start(&data);
    let status = wait_status(&agent, &work, "many", |s| {
        s.deployment.state == DeploymentState::Running
    });
    let mut pids: Vec<u32> = status.components.iter().filter_map(|c| c.pid).collect();
    pids.sort_unstable();
    assert_eq!(pids.len(), 40);
    // Exactly the recorded processes run: those spawned but not recorded were stopped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while marked(&data) != pids {
        assert!(Instant::now() < deadline, "{:?} != {pids:?}", marked(&data));
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = agent.sd(&work, &["terminate", "many", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(marked(&data).is_empty());
}

/// Starts an agent as [`Agent::start`] does, with `flags` added and `SD_LOG` set to `sd_log`
/// (or unset); its stderr, line by line, arrives on the receiver once it has exited.
fn start_logged(
    data_dir: &Path,
    flags: &[&str],
    sd_log: Option<&str>,
) -> (Agent, mpsc::Receiver<Vec<String>>) {
    let mut command = Agent::command(data_dir);
    command
        .args(flags)
        .env_remove("SD_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(filter) = sd_log {
        command.env("SD_LOG", filter);
    }
    let mut child = command.spawn().expect("sd agent starts");
    let stderr = child.stderr.take().expect("stderr");
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let _ = log_tx.send(lines);
    });
    (Agent::wait_up(child, data_dir), log_rx)
}

/// The stderr lines of an agent started with [`start_logged`], once it has exited.
fn log_lines(log: &mpsc::Receiver<Vec<String>>) -> Vec<String> {
    log.recv_timeout(Duration::from_secs(20))
        .expect("the agent's stderr ends when it exits")
}

#[test]
fn a_json_log_is_one_object_per_line_and_the_ready_event_names_the_node_and_its_api() {
    let (_root, work, data) = dirs();
    let (agent, log) = start_logged(&data, &["--log-format", "json"], None);
    // Stdout, which tools wait on, is the same whatever the log's format.
    assert_eq!(
        agent.banner,
        format!(
            "sd agent e2e: api on {}, data in {}",
            agent.url,
            data.display()
        )
    );
    let output = agent.sd(
        &work,
        &["deploy", "hello", "hello.sf", "--wait", "--timeout", "30"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let output = agent.sd(&work, &["terminate", "hello", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let url = agent.url.clone();
    assert_eq!(agent.stop().code(), Some(0));

    let lines = log_lines(&log);
    let all = lines.join("\n");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}\n{all}"));
            assert!(event.is_object(), "{line}");
            let timestamp = event["timestamp"].as_str().unwrap_or_default();
            assert!(
                timestamp.get(10..11) == Some("T") && timestamp.ends_with('Z'),
                "an RFC 3339 timestamp: {line}"
            );
            assert!(
                matches!(
                    event["level"].as_str(),
                    Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")
                ),
                "{line}"
            );
            assert!(event["target"].is_string(), "{line}");
            assert!(event["message"].is_string(), "{line}");
            event
        })
        .collect();

    let ready = events
        .iter()
        .find(|event| event["message"] == "agent ready")
        .unwrap_or_else(|| panic!("no `agent ready` event:\n{all}"));
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert_eq!(ready["node"], "e2e", "{ready}");
    assert_eq!(ready["api"], url.as_str(), "{ready}");
    assert_eq!(ready["data_dir"], data.display().to_string(), "{ready}");
    assert_eq!(ready["span"]["name"], "agent", "{ready}");
    assert_eq!(ready["span"]["node"], "e2e", "{ready}");

    assert!(
        events.iter().any(|event| event["message"] == "lifecycle"
            && event["deployment"] == "hello"
            && event["path"] == ""
            && event["state"] == "running"
            && event.get("detail").is_none()),
        "no event of hello running:\n{all}"
    );
    assert!(
        events.iter().any(|event| event["signal"] == "SIGTERM"
            && event["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("stopping"))),
        "no event of the SIGTERM:\n{all}"
    );
    assert!(
        events
            .iter()
            .any(|event| event["message"] == "agent stopped"),
        "no `agent stopped` event:\n{all}"
    );
}

#[test]
fn the_text_log_is_plain_lines_and_its_filter_comes_from_the_flag_then_sd_log() {
    let (_root, _work, data) = dirs();
    let (agent, log) = start_logged(&data, &[], None);
    let url = agent.url.clone();
    assert_eq!(agent.stop().code(), Some(0));
    let lines = log_lines(&log);
    let all = lines.join("\n");
    let ready = lines
        .iter()
        .find(|line| line.contains("agent ready"))
        .unwrap_or_else(|| panic!("no `agent ready` line:\n{all}"));
    assert!(
        ready.contains(" INFO ")
            && ready.contains("node=e2e")
            && ready.contains(&format!("api={url}")),
        "{ready}"
    );
    assert!(
        lines.iter().any(|line| line.contains("agent stopped")),
        "{all}"
    );
    assert!(!all.contains('\u{1b}'), "no ANSI escapes: {all:?}");

    // The flag wins over SD_LOG: warnings and errors only.
    let (agent, log) = start_logged(&data, &["--log-level", "warn"], Some("info"));
    assert_eq!(agent.stop().code(), Some(0));
    let lines = log_lines(&log);
    assert!(
        lines
            .iter()
            .all(|line| !line.contains(" INFO ") && !line.contains("agent ready")),
        "{lines:#?}"
    );
}

#[test]
fn an_unknown_log_format_or_filter_is_refused_naming_the_flag_and_what_is_accepted() {
    let (_root, _work, data) = dirs();
    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["agent", "--name", "e2e", "--log-format", "yaml"])
        .arg("--data-dir")
        .arg(&data)
        .env_remove("SD_LOG")
        .run();
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "error: --log-format (or `log_format`) is \"yaml\": use text or json\n"
    );
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    assert!(!data.exists(), "nothing is started");

    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["agent", "--name", "e2e"])
        .arg("--data-dir")
        .arg(&data)
        .env("SD_LOG", "sd=loud")
        .run();
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    let error = stderr(&output);
    assert!(
        error.starts_with("error: --log-level (or SD_LOG, or `log_level`): \"sd=loud\""),
        "{error}"
    );
    assert!(!data.exists(), "nothing is started");
}

#[test]
fn sd_set_changes_a_running_domain_and_the_change_outlives_the_agent() {
    let (_root, work, data) = dirs();
    let agent = Agent::start(&data);
    let output = agent.sd(
        &work,
        &["deploy", "set", "hello.sf", "--wait", "--timeout", "30"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let pid = pid_of(&status_json(&agent, &work, "set"), "sfConfig:a");

    let output = agent.sd(&work, &["set", "set", "a", "sfLivenessDelay", "7"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        "sfConfig:a sfLivenessDelay: 5 -> 7 (validated and committed on e2e)"
    );
    // Refused with the reason, exit 1, nothing changed.
    let output = agent.sd(&work, &["set", "set", "a", "sfLivenessDelay", "-7"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("sfLivenessDelay") && stderr(&output).contains("HTTP 400"),
        "{}",
        stderr(&output)
    );
    let output = agent.sd(&work, &["set", "nope", "a", "sfLivenessDelay", "7"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("no deployment named"),
        "{}",
        stderr(&output)
    );

    // The events say so, as lines or as JSON.
    let output = agent.sd(&work, &["events"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(
        stdout(&output)
            .lines()
            .any(|l| l.contains("  e2e  set  sfConfig:a  reconfigured  (sfLivenessDelay: 5 -> 7)")),
        "{}",
        stdout(&output)
    );
    let output = agent.sd(
        &work,
        &["events", "--format", "json", "--deployment", "set"],
    );
    let events: Vec<sd_proto::Event> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect(line))
        .collect();
    assert!(events.iter().all(|e| e.deployment == "set"));
    assert!(events.iter().any(|e| e.state == "reconfigured"));

    // `sd console` names the page, with the token in the fragment.
    let output = agent.sd(&work, &["console"]);
    let token = std::fs::read_to_string(data.join("token")).expect("token");
    assert_eq!(
        stdout(&output).trim(),
        format!("{}/#token={}", agent.url, token.trim())
    );

    // A new agent on the data dir plans the deployment with the change.
    assert_eq!(agent.stop().code(), Some(0));
    let agent = Agent::start(&data);
    let status = status_json(&agent, &work, "set");
    assert_eq!(
        pid_of(&status, "sfConfig:a"),
        pid,
        "re-adopted, not restarted"
    );
    let a = status
        .components
        .iter()
        .find(|c| c.path == "sfConfig:a")
        .unwrap();
    let delay = a
        .settings
        .iter()
        .find(|s| s.attribute == "sfLivenessDelay")
        .unwrap();
    assert_eq!(delay.value, "7");
    let output = agent.sd(&work, &["terminate", "set", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
}

#[test]
fn sd_events_follow_prints_events_as_they_happen() {
    let (_root, work, data) = dirs();
    let agent = Agent::start(&data);
    let mut follow = client(&work, &data)
        .args(["events", "--follow", "--format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sd events runs");
    let out = follow.stdout.take().expect("stdout");
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let output = agent.sd(
        &work,
        &["deploy", "follow", "hello.sf", "--wait", "--timeout", "30"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut states = Vec::new();
    while !states.contains(&("sfConfig:a".to_string(), "running".to_string())) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = line_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no `running` of sfConfig:a followed: {states:?}"));
        let event: sd_proto::Event = serde_json::from_str(&line).expect(&line);
        states.push((event.path, event.state));
    }
    assert!(
        states.contains(&(String::new(), "deploying".to_string())),
        "{states:?}"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    let output = agent.sd(&work, &["terminate", "follow", "--wait"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
}
