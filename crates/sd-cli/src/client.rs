//! The blocking HTTP client of an agent's API (docs/api.md), shared by every command that
//! talks to an agent: where the agent is, its token, and what each failure means for the
//! exit code.

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sd_proto::{API_PREFIX, ApiError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::http::Response;

use crate::commands::{EXIT_FAILED, EXIT_UNREACHABLE};

/// The agent's data dir when `SD_DATA_DIR` is not set.
const DEFAULT_DATA_DIR: &str = "/var/lib/sd";

/// The agent's URL when neither a flag nor the data dir's `api.url` says.
const DEFAULT_AGENT: &str = "http://127.0.0.1:4680";

/// How long to wait for a TCP connection to the agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which agent to talk to and how to authenticate.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The agent's API URL [default: the content of `<data dir>/api.url`, else
    /// http://127.0.0.1:4680; the data dir is $SD_DATA_DIR or /var/lib/sd].
    #[arg(long, env = "SD_AGENT", value_name = "URL")]
    pub agent: Option<String>,
    /// The file holding the agent's API token [default: `<data dir>/token`].
    #[arg(long, env = "SD_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// Why a request did not give an answer.
#[derive(Debug)]
pub enum ClientError {
    /// The token file could not be read.
    NoToken { file: PathBuf, reason: String },
    /// No connection to the agent, or no HTTP answer from it.
    Unreachable { url: String, reason: String },
    /// The agent answered 401: it does not know this token.
    TokenRefused { url: String, file: PathBuf },
    /// The agent answered, but not with what the API says.
    Garbled { url: String, reason: String },
    /// The agent refused or failed the request.
    Refused { status: u16, error: ApiError },
}

impl ClientError {
    /// 3 when the agent cannot be reached or refuses the token, 1 when it refused or failed
    /// the request itself.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            ClientError::Refused { .. } => EXIT_FAILED,
            _ => EXIT_UNREACHABLE,
        })
    }

    /// Prints the error (and its details) to stderr; returns the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        if let ClientError::Refused { error, .. } = self {
            for detail in &error.details {
                eprintln!("{detail}");
            }
        }
        self.exit_code()
    }

    /// Whether the agent said 404 (no such deployment or component).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Refused { status: 404, .. })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoToken { file, reason } => write!(
                f,
                "cannot read the API token from `{}`: {reason} (the agent creates it in its data dir; set --token-file, SD_TOKEN_FILE or SD_DATA_DIR)",
                file.display()
            ),
            ClientError::Unreachable { url, reason } => write!(
                f,
                "cannot reach the agent at {url}: {reason} (is `sd agent` running? set --agent, SD_AGENT or SD_DATA_DIR)"
            ),
            ClientError::TokenRefused { url, file } => write!(
                f,
                "the agent at {url} refused the API token from `{}` (is it the token of that agent's data dir?)",
                file.display()
            ),
            ClientError::Garbled { url, reason } => {
                write!(f, "the answer of {url} is not the sd API's: {reason}")
            }
            ClientError::Refused { status, error } => {
                write!(f, "{} (HTTP {status})", error.error)
            }
        }
    }
}

/// A connection to one agent's API.
pub struct Client {
    agent: ureq::Agent,
    /// The agent's URL, without a trailing `/`.
    base: String,
    authorization: String,
    token_file: PathBuf,
}

/// The data dir clients look into for `api.url` and `token`.
fn data_dir() -> PathBuf {
    std::env::var_os("SD_DATA_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from)
}

impl Client {
    /// Finds the agent and reads the token; contacts nothing yet.
    pub fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
        let data_dir = data_dir();
        let base = match &args.agent {
            Some(url) => url.trim().to_string(),
            None => std::fs::read_to_string(data_dir.join(sd_api::URL_FILE))
                .map(|text| text.trim().to_string())
                .ok()
                .filter(|url| !url.is_empty())
                .unwrap_or_else(|| DEFAULT_AGENT.to_string()),
        };
        let base = base.trim_end_matches('/').to_string();
        let token_file = args
            .token_file
            .clone()
            .unwrap_or_else(|| data_dir.join(sd_api::TOKEN_FILE));
        let token = match std::fs::read_to_string(&token_file) {
            Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
            Ok(_) => {
                return Err(ClientError::NoToken {
                    file: token_file,
                    reason: "the file is empty".into(),
                });
            }
            Err(error) => {
                return Err(ClientError::NoToken {
                    file: token_file,
                    reason: error.to_string(),
                });
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .build()
            .into();
        Ok(Client {
            agent,
            base,
            authorization: format!("Bearer {token}"),
            token_file,
        })
    }

    /// The URL of an API path (`/deployments/web` -> `http://host:port/v1/deployments/web`).
    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    /// `GET` a JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let sent = self
            .agent
            .get(&url)
            .header("Authorization", &self.authorization)
            .call();
        self.json(&url, sent)
    }

    /// `POST` a JSON body, for a JSON answer.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let sent = self
            .agent
            .post(&url)
            .header("Authorization", &self.authorization)
            .send_json(body);
        self.json(&url, sent)
    }

    /// `DELETE`, for a JSON answer.
    pub fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let sent = self
            .agent
            .delete(&url)
            .header("Authorization", &self.authorization)
            .query_pairs(query.iter().copied())
            .call();
        self.json(&url, sent)
    }

    /// `GET` a text answer and copy it to `out` as it arrives (a log that is followed
    /// arrives for as long as the deployment runs). A closed `out` ends the copy quietly.
    pub fn copy_to(
        &self,
        path: &str,
        query: &[(&str, &str)],
        out: &mut impl Write,
    ) -> Result<(), ClientError> {
        let url = self.url(path);
        let sent = self
            .agent
            .get(&url)
            .header("Authorization", &self.authorization)
            .query_pairs(query.iter().copied())
            .call();
        let mut response = self.success(&url, sent)?;
        let mut reader = response.body_mut().as_reader();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|error| ClientError::Unreachable {
                    url: url.clone(),
                    reason: format!("the answer broke off: {error}"),
                })?;
            if read == 0 {
                return Ok(());
            }
            // A reader gone away (`sd logs x a | head`) is the end of the job, not an error.
            if out
                .write_all(&buffer[..read])
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(());
            }
        }
    }

    /// `GET` a stream of Server-Sent Events and hand each event's `data` to `on_data` as it
    /// arrives, until the stream ends or `on_data` answers false.
    pub fn follow_events(
        &self,
        path: &str,
        query: &[(&str, &str)],
        mut on_data: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let url = self.url(path);
        // A followed stream is quiet for as long as nothing happens: no overall timeout.
        let sent = self
            .agent
            .get(&url)
            .header("Authorization", &self.authorization)
            .header("Accept", "text/event-stream")
            .query_pairs(query.iter().copied())
            .call();
        let mut response = self.success(&url, sent)?;
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        let mut data = String::new();
        for line in std::io::BufRead::lines(reader) {
            let line = line.map_err(|error| ClientError::Unreachable {
                url: url.clone(),
                reason: format!("the stream broke off: {error}"),
            })?;
            if let Some(more) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(more.strip_prefix(' ').unwrap_or(more));
            } else if line.is_empty() && !data.is_empty() {
                if !on_data(&data) {
                    return Ok(());
                }
                data.clear();
            }
        }
        Ok(())
    }

    /// The agent's URL (no trailing `/`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token sent (without `Bearer `).
    pub fn token(&self) -> &str {
        self.authorization.trim_start_matches("Bearer ")
    }

    /// A 2xx response, or the error it stands for.
    fn success(
        &self,
        url: &str,
        sent: Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response<ureq::Body>, ClientError> {
        let mut response = sent.map_err(|error| ClientError::Unreachable {
            url: url.to_string(),
            reason: error.to_string(),
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        if status == 401 {
            return Err(ClientError::TokenRefused {
                url: self.base.clone(),
                file: self.token_file.clone(),
            });
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let error = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
            error: format!("the agent answered {status} without an explanation: {text}"),
            details: Vec::new(),
            diagnostics: Vec::new(),
        });
        Err(ClientError::Refused { status, error })
    }

    fn json<T: DeserializeOwned>(
        &self,
        url: &str,
        sent: Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        self.success(url, sent)?
            .body_mut()
            .read_json()
            .map_err(|error| ClientError::Garbled {
                url: url.to_string(),
                reason: error.to_string(),
            })
    }
}

/// A path segment with every byte but the unreserved ones (RFC 3986) percent-encoded, so
/// that any name the user types stays one segment.
pub fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_names_and_encode_the_rest() {
        assert_eq!(segment("web-1.a_b"), "web-1.a_b");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn only_a_refused_request_exits_1() {
        let refused = ClientError::Refused {
            status: 409,
            error: ApiError {
                error: "exists".into(),
                details: Vec::new(),
                diagnostics: Vec::new(),
            },
        };
        assert_eq!(refused.exit_code(), ExitCode::from(EXIT_FAILED));
        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "refused".into(),
        };
        assert_eq!(unreachable.exit_code(), ExitCode::from(EXIT_UNREACHABLE));
        assert!(unreachable.to_string().contains("http://127.0.0.1:1"));
        let no_token = ClientError::NoToken {
            file: "/x/token".into(),
            reason: "missing".into(),
        };
        assert!(no_token.to_string().contains("/x/token"));
    }
}
