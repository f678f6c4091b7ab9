//! Browser tests of the web console: a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by scripts/test.sh) against a running cluster of three real
//! `sd agent` processes. The page is only read through its DOM contract (`data-*` attributes
//! and element ids); what the page claims is checked against the agents' API.
//!
//! Each step saves a screenshot in `target/artifacts/console/`; a failed wait saves
//! `failure.png` there and prints what the page showed. The figures (page load time, delay
//! between a state change and its appearance in the page) are printed as `FIGURE` lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sd_proto::{ComponentState, ComponentStatus, DeploymentState, DeploymentStatus, Event};
use sd_testkit::{Browser, LocalCluster};
use serde_json::{Value, json};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Three replicas spread over the nodes, each restarted when it dies, checked every second.
const POOL: &str = r#"#include "prelude.sf"
sfConfig extends Compound {
  sfLivenessDelay 1;
  sched extends Scheduler { sdPlacement "spread"; }
  pool extends Pool {
    replicas 3;
    scheduler LAZY sched;
    sdRestartStrategy "one_for_one";
    sdMaxRestarts 50;
    sdRestartWindow 60;
    template extends LAZY ProcessDomain {
      memory 10;
      command [| "/bin/sleep", "1000" |];
    }
  }
}
"#;

/// The replicas' paths.
const REPLICAS: [&str; 3] = ["sfConfig:pool:r1", "sfConfig:pool:r2", "sfConfig:pool:r3"];

/// Five lines; line 4 refers to an attribute that does not exist.
const BAD: &str = r#"#include "prelude.sf"
sfConfig extends Compound {
  a extends ProcessDomain { command [| "/bin/sleep", "1000" |];
    memory ATTRIB nosuchattr; }
}
"#;
const BAD_LINE: u64 = 4;

/// JavaScript helpers defined in the page before each script: the element of a component
/// (the one with a `data-state`, inside its deployment's element when there is one) and a
/// snapshot of what it shows.
const HELPERS: &str = r#"
const sdComponent = (deployment, path) => {
  const dep = document.querySelector(`[data-deployment="${deployment}"]`);
  const sel = `[data-path="${path}"][data-state]`;
  return (dep && dep.querySelector(sel)) || document.querySelector(sel);
};
const sdShown = (deployment, path) => {
  const e = sdComponent(deployment, path);
  return e ? { state: e.dataset.state || '', pid: e.dataset.pid || '',
               restarts: e.dataset.restarts || '', changed: e.dataset.changedMs || '' }
           : null;
};
"#;

/// Milliseconds since the Unix epoch, on this machine's clock (the page's and the agents').
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Where the screenshots go: `<target dir>/artifacts/console`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("artifacts").join("console")
}

/// The browser on the console, the cluster behind it, and the screenshots taken so far.
struct Console<'a> {
    browser: Browser,
    cluster: &'a LocalCluster,
    artifacts: PathBuf,
    shots: usize,
}

impl Console<'_> {
    /// Saves the next step's screenshot, `NN-step.png`.
    fn shot(&mut self, step: &str) {
        self.shots += 1;
        let path = self.artifacts.join(format!("{:02}-{step}.png", self.shots));
        if let Err(error) = self.browser.screenshot(&path) {
            self.fail(&format!("screenshot {}: {error}", path.display()));
        }
    }

    /// Fails the test: saves `failure.png`, prints what the page shows and the agents' logs'
    /// ends, then panics with `message`.
    fn fail(&self, message: &str) -> ! {
        let path = self.artifacts.join("failure.png");
        match self.browser.screenshot(&path) {
            Ok(()) => eprintln!("screenshot of the failure: {}", path.display()),
            Err(error) => eprintln!("no screenshot of the failure: {error}"),
        }
        let text = self
            .browser
            .execute("return document.body ? document.body.innerText : ''", &[])
            .map(|text| text.as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|error| format!("(unreadable: {error})"));
        let text: String = text.chars().take(6000).collect();
        eprintln!("--- the page's text ---\n{text}\n--- end of the page's text ---");
        for node in self.cluster.nodes() {
            let log =
                std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            eprintln!("--- {} log (end) ---\n{}", node.name, tail.join("\n"));
        }
        panic!("{message}");
    }

    /// Runs `script` in the page, after [`HELPERS`].
    fn exec(&self, script: &str, args: &[Value]) -> Value {
        self.browser
            .execute(&format!("{HELPERS}\n{script}"), args)
            .unwrap_or_else(|error| self.fail(&format!("script failed: {error}\n{script}")))
    }

    /// Waits until `script` (after [`HELPERS`]) answers something truthy; fails saying `what`
    /// was awaited otherwise.
    fn wait(&self, what: &str, script: &str, within: Duration) -> Value {
        self.browser
            .wait_for(&format!("{HELPERS}\n{script}"), within)
            .unwrap_or_else(|error| {
                self.fail(&format!(
                    "waited {} s for {what}, in vain: {error}\nthe script:\n{script}",
                    within.as_secs()
                ))
            })
    }

    fn click(&self, css: &str) {
        if let Err(error) = self.browser.click(css) {
            self.fail(&format!("click {css}: {error}"));
        }
    }

    fn set_value(&self, css: &str, text: &str) {
        if let Err(error) = self.browser.set_value(css, text) {
            self.fail(&format!("fill {css}: {error}"));
        }
    }

    /// The pool's status from the API (n1).
    fn pool(&self) -> DeploymentStatus {
        self.cluster
            .status("n1", "pool")
            .unwrap_or_else(|error| self.fail(&format!("status of pool: {error}")))
    }

    /// Every node's events, each once, oldest first.
    fn events(&self) -> Vec<Event> {
        let mut all: Vec<Event> = Vec::new();
        for node in NODES {
            let events: Vec<Event> = self
                .cluster
                .api_get(node, "/events")
                .unwrap_or_else(|error| self.fail(&format!("GET /v1/events on {node}: {error}")));
            for event in events {
                if !all.contains(&event) {
                    all.push(event);
                }
            }
        }
        all.sort_by_key(|event| event.unix_ms);
        all
    }
}

fn component<'s>(status: &'s DeploymentStatus, path: &str) -> Option<&'s ComponentStatus> {
    status.components.iter().find(|c| c.path == path)
}

fn setting(component: &ComponentStatus, attribute: &str) -> Option<f64> {
    component
        .settings
        .iter()
        .find(|s| s.attribute == attribute)
        .and_then(|s| s.value.trim().parse().ok())
}

fn all_running(status: &DeploymentStatus) -> bool {
    status.deployment.state == DeploymentState::Running
        && REPLICAS.iter().all(|path| {
            component(status, path)
                .is_some_and(|c| c.state == ComponentState::Running && c.pid.is_some())
        })
}

/// What one kill behind the console's back measured.
struct Kill {
    /// From the kill to the page's stamp of the change (`data-changed-ms`).
    kill_to_page_ms: i64,
    /// From the agent's first event about it to that stamp.
    event_to_page_ms: i64,
    /// The same two, to when a mutation observer saw the change in the document.
    observed_kill_to_page_ms: i64,
    observed_event_to_page_ms: i64,
}

#[test]
fn console_shows_the_cluster_heals_reconfigures_and_reports_errors_live() {
    // The browser first: without chromedriver this test fails at once, saying what to do.
    let browser = Browser::start().unwrap_or_else(|error| {
        panic!("the console's browser tests need Chromium and chromedriver: {error}")
    });
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    for entry in std::fs::read_dir(&artifacts)
        .expect("artifacts dir")
        .flatten()
    {
        if entry.path().extension().is_some_and(|ext| ext == "png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = LocalCluster::start(Path::new(env!("CARGO_BIN_EXE_sd")), dir.path(), &NODES)
        .expect("the cluster starts");
    cluster.deploy("n1", "pool", POOL).expect("deploy pool");
    cluster
        .wait_status("n1", "pool", Duration::from_secs(30), all_running)
        .expect("the pool runs");
    let mut console = Console {
        browser,
        cluster: &cluster,
        artifacts,
        shots: 0,
    };
    let n1 = cluster.node("n1").expect("n1");
    let token = std::fs::read_to_string(n1.data_dir.join("token")).expect("n1's token");

    // a. The page shows the nodes and the deployed pool, live.
    let url = format!("{}/#token={}", n1.url(), token.trim());
    let started = std::time::Instant::now();
    if let Err(error) = console.browser.goto(&url) {
        console.fail(&format!("open {url}: {error}"));
    }
    let goto_ms = started.elapsed().as_millis();
    console.exec("window.__noReload = 1; return true;", &[]);
    console.wait(
        "the live indicator to say connected",
        "return document.querySelector('#live[data-state=connected]') !== null;",
        Duration::from_secs(15),
    );
    console.wait(
        "3 node rows, all alive",
        "const rows = [...document.querySelectorAll('#nodes tr[data-node]')];
         return rows.length === 3 && rows.every(r => r.dataset.state === 'alive');",
        Duration::from_secs(15),
    );
    console.wait(
        "the pool and its 3 replicas running",
        "const dep = document.querySelector('[data-deployment=\"pool\"]');
         if (!dep) return false;
         const reps = [...dep.querySelectorAll('[data-path^=\"sfConfig:pool:r\"][data-state]')]
           .filter(e => /^sfConfig:pool:r\\d+$/.test(e.dataset.path));
         return reps.length === 3 && reps.every(e => e.dataset.state === 'running');",
        Duration::from_secs(15),
    );
    let rendered_ms = started.elapsed().as_millis();
    let load = console.exec(
        "const nav = performance.getEntriesByType('navigation')[0];
         return { dom: nav ? nav.domContentLoadedEventEnd : null,
                  load: nav ? nav.loadEventEnd : null,
                  first: window.sdConsole ? window.sdConsole.firstRenderMs : null };",
        &[],
    );
    println!(
        "FIGURE console page load: dom_content_loaded_ms={:.1} load_ms={:.1} first_full_render_ms={:.1} \
         (goto returned after {goto_ms} ms; everything shown after {rendered_ms} ms)",
        load["dom"].as_f64().unwrap_or(f64::NAN),
        load["load"].as_f64().unwrap_or(f64::NAN),
        load["first"].as_f64().unwrap_or(f64::NAN),
    );
    if !load["first"].is_number() {
        console.fail(&format!(
            "window.sdConsole.firstRenderMs is not a number once everything is shown: {load}"
        ));
    }
    // The page shows the pids the API reports.
    let status = console.pool();
    for path in REPLICAS {
        let pid = component(&status, path).and_then(|c| c.pid).expect("pid");
        console.wait(
            &format!("{path} to show pid {pid}"),
            &format!("const s = sdShown('pool', {path:?}); return s && s.pid === '{pid}';"),
            Duration::from_secs(10),
        );
    }
    console.shot("pool-running");

    // b. Domains killed behind the console's back are seen restarting, without a reload.
    let mut kills = Vec::new();
    for path in REPLICAS {
        let status = console.pool();
        let before = component(&status, path).expect("replica").clone();
        let pid = before.pid.expect("a running replica has a pid");
        // The page shows this pid; from now on, every change of the element is logged.
        console.wait(
            &format!("{path} running with pid {pid} in the page"),
            &format!(
                "const s = sdShown('pool', {path:?});
                 return s && s.state === 'running' && s.pid === '{pid}';"
            ),
            Duration::from_secs(20),
        );
        console.exec(
            "const path = arguments[0];
             const log = [Object.assign({ t: Date.now() }, sdShown('pool', path))];
             const record = () => {
               const s = sdShown('pool', path);
               const last = log[log.length - 1];
               if (s && (s.state !== last.state || s.pid !== last.pid
                         || s.restarts !== last.restarts || s.changed !== last.changed)) {
                 log.push(Object.assign({ t: Date.now() }, s));
               }
             };
             if (window.__watch) window.__watch.observer.disconnect();
             const observer = new MutationObserver(record);
             observer.observe(document.body,
               { subtree: true, childList: true, attributes: true, characterData: true });
             window.__watch = { observer, log };
             return true;",
            &[json!(path)],
        );
        let t0 = now_ms();
        sd_testkit::signal(pid, "KILL");
        let restarts = before.restarts;
        console.wait(
            &format!(
                "{path} killed (pid {pid}) to show running again with a new pid or more restarts"
            ),
            &format!(
                "const s = sdShown('pool', {path:?});
                 return s && s.state === 'running' && s.pid !== '' &&
                   (s.pid !== '{pid}' || Number(s.restarts) > {restarts});"
            ),
            Duration::from_secs(60),
        );
        let log = console.exec(
            "window.__watch.observer.disconnect(); return window.__watch.log;",
            &[],
        );
        let log = log.as_array().cloned().unwrap_or_default();
        let first_change = log
            .get(1)
            .cloned()
            .unwrap_or_else(|| console.fail(&format!("no change of {path} was logged: {log:?}")));
        // The first non-running state the page showed, with when it showed it.
        let not_running = log
            .iter()
            .skip(1)
            .find(|entry| entry["state"].as_str().is_some_and(|s| s != "running"))
            .map(|entry| {
                format!(
                    "`{}` at +{} ms",
                    entry["state"].as_str().unwrap_or_default(),
                    entry["t"].as_i64().unwrap_or_default() - t0 as i64
                )
            })
            .unwrap_or_else(|| "none (straight to running again)".into());
        // When the page rendered the change: its own stamp (data-changed-ms), and when the
        // observer saw the element change in the document.
        let page_ms = first_change["changed"]
            .as_str()
            .and_then(|ms| ms.parse::<f64>().ok())
            .unwrap_or_else(|| {
                console.fail(&format!(
                    "{path}'s element carries no data-changed-ms after its change: {first_change}"
                ))
            }) as i64;
        let observed_ms = first_change["t"].as_i64().unwrap_or_default();
        let events = console.events();
        let event = events
            .iter()
            .find(|e| e.deployment == "pool" && e.path == path && e.unix_ms + 5 >= t0)
            .cloned()
            .unwrap_or_else(|| {
                console.fail(&format!(
                    "no event for {path} after the kill at {t0}; events: {events:#?}"
                ))
            });
        let kill = Kill {
            kill_to_page_ms: page_ms - t0 as i64,
            event_to_page_ms: page_ms - event.unix_ms as i64,
            observed_kill_to_page_ms: observed_ms - t0 as i64,
            observed_event_to_page_ms: observed_ms - event.unix_ms as i64,
        };
        println!(
            "FIGURE console state-change-to-page delay: kill_to_page_ms={} event_to_page_ms={} \
             ({path}: first event `{}` on {} at +{} ms; first change shown `{}`, stamped at +{} \
             ms, in the document at +{} ms; first non-running state shown: {not_running})",
            kill.kill_to_page_ms,
            kill.event_to_page_ms,
            event.state,
            event.node,
            event.unix_ms as i64 - t0 as i64,
            first_change["state"].as_str().unwrap_or_default(),
            kill.kill_to_page_ms,
            kill.observed_kill_to_page_ms,
        );
        let shown: Vec<String> = log
            .iter()
            .map(|entry| {
                format!(
                    "+{} ms {} pid {} restarts {}",
                    entry["t"].as_i64().unwrap_or_default() - t0 as i64,
                    entry["state"].as_str().unwrap_or_default(),
                    entry["pid"].as_str().unwrap_or_default(),
                    entry["restarts"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        println!("  {path} as the page showed it: {}", shown.join("; "));
        kills.push(kill);
        console.shot(&format!(
            "restarted-{}",
            path.rsplit(':').next().unwrap_or(path)
        ));
        let healed = cluster
            .wait_status("n1", "pool", Duration::from_secs(30), all_running)
            .unwrap_or_else(|error| console.fail(&format!("the pool to run again: {error}")));
        let new_pid = component(&healed, path).and_then(|c| c.pid).expect("pid");
        console.wait(
            &format!("{path} to show the pid the API reports after its restart ({new_pid})"),
            &format!(
                "const s = sdShown('pool', {path:?}); \
                 return s && s.state === 'running' && s.pid === '{new_pid}';"
            ),
            Duration::from_secs(10),
        );
    }
    let max = |of: fn(&Kill) -> i64| kills.iter().map(of).max().unwrap_or_default();
    println!(
        "FIGURE console state-change-to-page delay (max of {}): kill_to_page_ms={} \
         event_to_page_ms={} (in the document: kill_to_page_ms={} event_to_page_ms={})",
        kills.len(),
        max(|k| k.kill_to_page_ms),
        max(|k| k.event_to_page_ms),
        max(|k| k.observed_kill_to_page_ms),
        max(|k| k.observed_event_to_page_ms),
    );

    // c. A reconfiguration made in the page takes effect on the running component.
    let target = REPLICAS[0];
    let before = component(&console.pool(), target).expect("replica").clone();
    let pid = before.pid.expect("pid");
    // As a user does: the setting's edit button in the tree fills the form.
    console.click(&format!(
        "button.edit-setting[data-setting-path={target:?}][data-attribute=sfLivenessDelay]"
    ));
    for (field, wanted) in [
        ("#reconfigure-deployment", "pool"),
        ("#reconfigure-path", target),
        ("#reconfigure-attribute", "sfLivenessDelay"),
    ] {
        console.wait(
            &format!("the edit button to put {wanted:?} in {field}"),
            &format!("return document.querySelector({field:?}).value === {wanted:?};"),
            Duration::from_secs(5),
        );
    }
    console.set_value("#reconfigure-value", "3");
    console.click("#reconfigure-submit");
    console.wait(
        "#reconfigure-result to report success",
        "return document.querySelector('#reconfigure-result[data-outcome=ok]') !== null;",
        Duration::from_secs(20),
    );
    console.shot("reconfigured");
    let mut after = before.clone();
    if cluster
        .wait_until(
            "sfLivenessDelay 3 in the API",
            Duration::from_secs(10),
            || {
                cluster.status("n1", "pool").is_ok_and(|status| {
                    component(&status, target).is_some_and(|c| {
                        after = c.clone();
                        setting(c, "sfLivenessDelay") == Some(3.0)
                    })
                })
            },
        )
        .is_err()
    {
        console.fail(&format!(
            "after the page reported success, the API shows {target}'s settings {:?}",
            after.settings
        ));
    }
    if after.pid != Some(pid) || after.restarts != before.restarts {
        console.fail(&format!(
            "the reconfiguration restarted {target}: pid {pid} -> {:?}, restarts {} -> {}",
            after.pid, before.restarts, after.restarts
        ));
    }
    // An invalid value is refused, in the page, and changes nothing.
    console.set_value("#reconfigure-value", "-1");
    console.click("#reconfigure-submit");
    console.wait(
        "#reconfigure-result to report an error for sfLivenessDelay -1",
        "return document.querySelector('#reconfigure-result[data-outcome=error]') !== null;",
        Duration::from_secs(20),
    );
    let refusal = console.exec(
        "return document.querySelector('#reconfigure-result').innerText;",
        &[],
    );
    console.shot("reconfigure-refused");
    let unchanged = component(&console.pool(), target).expect("replica").clone();
    if setting(&unchanged, "sfLivenessDelay") != Some(3.0) || unchanged.pid != Some(pid) {
        console.fail(&format!(
            "a refused reconfiguration ({refusal}) changed {target}: settings {:?}, pid {:?}",
            unchanged.settings, unchanged.pid
        ));
    }

    // d. A description with an error shows the error at its line, and is not deployed.
    console.set_value("#deploy-name", "bad");
    console.set_value("#deploy-description", BAD);
    console.click("#deploy-validate");
    let line_error =
        "const li = document.querySelector('#deploy-errors li[data-line]:not([data-stale])');
         return li ? { line: li.dataset.line, text: li.innerText } : null;";
    let shown = console.wait(
        "#deploy-errors to list an error with its line after Validate",
        line_error,
        Duration::from_secs(20),
    );
    let check_line = |console: &Console<'_>, shown: &Value, after: &str| {
        let text = shown["text"].as_str().unwrap_or_default();
        let mentions_line = text
            .split(|c: char| !c.is_ascii_digit())
            .any(|number| number == BAD_LINE.to_string());
        if shown["line"].as_str() != Some(&BAD_LINE.to_string()) || !mentions_line {
            console.fail(&format!(
                "after {after}, the error should be at line {BAD_LINE} and say so: {shown}"
            ));
        }
    };
    check_line(&console, &shown, "Validate");
    console.shot("validate-error-at-line");
    // Deploy anyway: the same error, at the same line, and nothing deployed.
    console.exec(
        "document.querySelectorAll('#deploy-errors li').forEach(li => li.dataset.stale = '1');
         return true;",
        &[],
    );
    console.click("#deploy-submit");
    let shown = console.wait(
        "#deploy-errors to list an error with its line after Deploy",
        line_error,
        Duration::from_secs(20),
    );
    check_line(&console, &shown, "Deploy");
    console.shot("deploy-error-at-line");
    let deployments = cluster
        .deployments("n1")
        .unwrap_or_else(|error| console.fail(&format!("GET /v1/deployments: {error}")));
    if deployments.iter().any(|d| d.name == "bad") {
        console.fail(&format!(
            "a description with an error was deployed: {deployments:#?}"
        ));
    }

    // e. Terminated from the page: a first click arms the button, a second confirms.
    let terminate = "button.terminate[data-terminate=\"pool\"]";
    console.click(terminate);
    console.shot("terminate-armed");
    console.click(terminate);
    console.wait(
        "the pool to disappear from the page or show terminated",
        "const dep = document.querySelector('[data-deployment=\"pool\"]:not(button)');
         return !dep || dep.dataset.state === 'terminated';",
        Duration::from_secs(30),
    );
    console.shot("terminated");
    let gone = cluster.wait_until("pool to end in the API", Duration::from_secs(30), || {
        cluster.deployments("n1").is_ok_and(|list| {
            list.iter()
                .all(|d| d.name != "pool" || d.state == DeploymentState::Terminated)
        })
    });
    if gone.is_err() {
        console.fail(&format!(
            "pool still there after the page terminated it: {:#?}",
            cluster.deployments("n1")
        ));
    }

    let clean = cluster.wait_until("no pool process left", Duration::from_secs(20), || {
        cluster.all_workloads().is_empty()
    });
    if clean.is_err() {
        console.fail(&format!(
            "processes left after the page terminated pool: {:?}",
            cluster.all_workloads()
        ));
    }

    // All of it in one page load.
    let still = console.exec("return window.__noReload === 1;", &[]);
    if still != Value::Bool(true) {
        console.fail("the page was reloaded during the test (window.__noReload is gone)");
    }
}
