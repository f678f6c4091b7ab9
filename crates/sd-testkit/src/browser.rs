//! A real headless Chromium for browser tests, driven over W3C WebDriver.
//!
//! [`Browser::start`] runs `chromedriver` (Debian's `chromium-driver`) on a free loopback port,
//! opens one session of `/usr/bin/chromium` with a fresh profile, and offers what a test of a
//! page needs: go to a URL, run a script, wait for a script's answer, click, fill a field, read
//! a text, save a screenshot. Dropping it closes the session and stops `chromedriver`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Error, Result};

/// The Chromium binary the session runs.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How Chromium is started: headless, without a sandbox (tests run as root), and without the
/// background traffic a fresh profile makes.
const CHROMIUM_ARGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
];

/// The key under which WebDriver names an element (W3C).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long `chromedriver` may take to answer `/status` as ready.
const DRIVER_READY_WITHIN: Duration = Duration::from_secs(20);

/// One headless Chromium session, with the `chromedriver` that drives it.
pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    agent: ureq::Agent,
    /// The session's profile (`--user-data-dir`), removed when dropped.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and one Chromium session with a fresh profile. Fails, saying how
    /// to install them, when `chromedriver` or Chromium is missing.
    pub fn start() -> Result<Browser> {
        let missing = |what: &str| Error::Browser {
            reason: format!(
                "{what} is not installed: run scripts/test.sh as root, which installs Debian's \
                 chromium and chromium-driver"
            ),
        };
        if !Path::new(CHROMIUM).exists() {
            return Err(missing(CHROMIUM));
        }
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => missing("chromedriver"),
                _ => Error::Command {
                    command: "chromedriver".into(),
                    reason: error.to_string(),
                },
            })?;
        let profile = tempfile::Builder::new()
            .prefix("sd-chromium-")
            .tempdir()
            .map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut browser = Browser {
            driver,
            session: String::new(),
            agent,
            _profile: profile,
        };
        let base = format!("http://127.0.0.1:{port}");
        browser.wait_ready(&base)?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(ToString::to_string).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }
            }
        });
        let created = browser.request("POST", &format!("{base}/session"), Some(&capabilities))?;
        let id = created["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| Error::Browser {
                reason: format!("no session id in the new session's answer: {created}"),
            })?;
        browser.session = format!("{base}/session/{id}");
        Ok(browser)
    }

    /// Loads `url` and waits until the page has loaded.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.command("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` (a function body: it `return`s its answer) in the page, with `args` as
    /// `arguments`, and returns its answer.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` every 50 ms until it answers something other than `false`, `null`, `0`
    /// or `""`, and returns that answer; a [`Error::Timeout`] with the last answer after
    /// `within`. A script that throws counts as a falsy answer (the page may be loading).
    pub fn wait_for(&self, script: &str, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.execute(script, &[]);
            if let Ok(value) = &answer
                && truthy(value)
            {
                return Ok(value.clone());
            }
            if Instant::now() > deadline {
                let last = match answer {
                    Ok(value) => value.to_string(),
                    Err(error) => error.to_string(),
                };
                return Err(Error::Timeout {
                    what: format!("a truthy answer from the page's script (last: {last})"),
                    seconds: within.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks the first element `css` selects, as a user does (scrolled into view first).
    pub fn click(&self, css: &str) -> Result<()> {
        let element = self.find(css)?;
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        )
        .map(drop)
    }

    /// Sets the value of the first input, textarea or select `css` selects and fires its
    /// `input` and `change` events, as typing does.
    pub fn set_value(&self, css: &str, text: &str) -> Result<()> {
        let found = self.execute(
            "const e = document.querySelector(arguments[0]);
             if (!e) return false;
             e.focus();
             e.value = arguments[1];
             e.dispatchEvent(new Event('input', { bubbles: true }));
             e.dispatchEvent(new Event('change', { bubbles: true }));
             return true;",
            &[json!(css), json!(text)],
        )?;
        if found != Value::Bool(true) {
            return Err(Error::Browser {
                reason: format!("no element matches `{css}`"),
            });
        }
        Ok(())
    }

    /// The rendered text of the first element `css` selects.
    pub fn text(&self, css: &str) -> Result<String> {
        let element = self.find(css)?;
        let value = self.command("GET", &format!("/element/{element}/text"), None)?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// Saves a screenshot of the window as a PNG file at `path` (its folder is created).
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let value = self.command("GET", "/screenshot", None)?;
        let encoded = value.as_str().ok_or_else(|| Error::Browser {
            reason: "the screenshot is not a string".into(),
        })?;
        let png = decode_base64(encoded).ok_or_else(|| Error::Browser {
            reason: "the screenshot is not valid base64".into(),
        })?;
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, png).map_err(io)
    }

    /// The WebDriver id of the first element `css` selects.
    fn find(&self, css: &str) -> Result<String> {
        let value = self.command(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        value[ELEMENT_KEY]
            .as_str()
            .map(ToString::to_string)
            .ok_or_else(|| Error::Browser {
                reason: format!("no element id for `{css}` in {value}"),
            })
    }

    /// A command of this session (`path` below `/session/<id>`); its `value`.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut answer = self.request(method, &format!("{}{path}", self.session), body)?;
        Ok(answer["value"].take())
    }

    /// One WebDriver request; the whole answer, or its error as [`Error::Browser`].
    fn request(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        let failed = |reason: String| Error::Browser {
            reason: format!("{method} {url}: {reason}"),
        };
        let response = match (method, body) {
            ("GET", _) => self.agent.get(url).call(),
            ("DELETE", _) => self.agent.delete(url).call(),
            (_, Some(body)) => self.agent.post(url).send_json(body),
            (_, None) => self.agent.post(url).send_empty(),
        };
        let mut response = response.map_err(|error| failed(error.to_string()))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .map_err(|error| failed(error.to_string()))?;
        let answer: Value =
            serde_json::from_str(&text).map_err(|error| failed(format!("{error}: {text}")))?;
        if !status.is_success() {
            // The message starts with the error's name (`no such element: ...`).
            let error = &answer["value"];
            let message = error["message"].as_str().or(error["error"].as_str());
            return Err(failed(format!("{status}: {}", message.unwrap_or(&text))));
        }
        Ok(answer)
    }

    /// Waits until `chromedriver` says it is ready (or has exited).
    fn wait_ready(&mut self, base: &str) -> Result<()> {
        let deadline = Instant::now() + DRIVER_READY_WITHIN;
        loop {
            let status = self.request("GET", &format!("{base}/status"), None);
            if let Ok(status) = status
                && status["value"]["ready"] == Value::Bool(true)
            {
                return Ok(());
            }
            if let Ok(Some(exit)) = self.driver.try_wait() {
                return Err(Error::Command {
                    command: "chromedriver".into(),
                    reason: format!("exited with {exit}"),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "chromedriver to be ready".into(),
                    seconds: DRIVER_READY_WITHIN.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &self.session, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// JavaScript's truthiness, for the answers of [`Browser::wait_for`].
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A TCP port free on loopback now.
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|source| Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

/// Decodes standard base64 (padding and whitespace ignored); `None` on any other character.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0u32);
    for byte in text.bytes() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(sextet);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(decode_base64("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("a*b"), None);
    }
}
