//! Every error response: a status code and a JSON [`ApiError`].

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sd_proto::{ApiError, MAX_REQUEST_BYTES};
use sd_runtime::Error;

/// An error response.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) body: ApiError,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Failure {
        Failure {
            status,
            body: ApiError {
                error: error.into(),
                details: Vec::new(),
                diagnostics: Vec::new(),
            },
        }
    }

    pub(crate) fn bad_request(error: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        if error.is_disk_full() {
            // 507: the request was fine, the node has no room to record it; it may be made
            // again once there is (the agent recovers by itself, no restart needed).
            let message = match &error {
                // Already says so, and names the store's file.
                Error::Durability { .. } => error.to_string(),
                _ => format!("the node's disk is full: {error}"),
            };
            return Failure::new(StatusCode::INSUFFICIENT_STORAGE, message);
        }
        let status = match &error {
            Error::InvalidDescription { .. }
            | Error::InvalidName { .. }
            | Error::InvalidAttribute { .. }
            | Error::Setting { .. } => StatusCode::BAD_REQUEST,
            Error::Exists { .. } | Error::NotRunning { .. } => StatusCode::CONFLICT,
            Error::NotFound { .. } | Error::NoComponent { .. } => StatusCode::NOT_FOUND,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Remote { .. } => StatusCode::BAD_GATEWAY,
            Error::Store(_) | Error::Io { .. } | Error::Durability { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let (details, diagnostics) = match &error {
            Error::InvalidDescription {
                errors,
                diagnostics,
            } => (errors.clone(), diagnostics.clone()),
            _ => (Vec::new(), Vec::new()),
        };
        Failure {
            status,
            body: ApiError {
                error: error.to_string(),
                details,
                diagnostics,
            },
        }
    }
}

impl From<BytesRejection> for Failure {
    fn from(rejection: BytesRejection) -> Failure {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the limit of {MAX_REQUEST_BYTES} bytes ({} MiB)",
                    MAX_REQUEST_BYTES >> 20
                ),
            );
        }
        Failure::new(
            rejection.status(),
            format!("cannot read the request body: {}", rejection.body_text()),
        )
    }
}

impl From<QueryRejection> for Failure {
    fn from(rejection: QueryRejection) -> Failure {
        Failure::bad_request(rejection.body_text())
    }
}

impl From<PathRejection> for Failure {
    fn from(rejection: PathRejection) -> Failure {
        Failure::bad_request(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_map_to_their_status() {
        let cases = [
            (
                Error::InvalidName {
                    name: "-x".into(),
                    rule: "rule",
                },
                StatusCode::BAD_REQUEST,
            ),
            (
                Error::Exists {
                    name: "web".into(),
                    state: "running".into(),
                },
                StatusCode::CONFLICT,
            ),
            (
                Error::NotFound { name: "web".into() },
                StatusCode::NOT_FOUND,
            ),
            (
                Error::NoComponent {
                    deployment: "web".into(),
                    path: "sfConfig:x".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (Error::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (
                Error::Durability {
                    reason: "cannot commit in the store `/d/node.redb`: I/O error: Input/output error (os error 5)".into(),
                    disk_full: false,
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, status) in cases {
            let message = error.to_string();
            let failure = Failure::from(error);
            assert_eq!(failure.status, status, "{message}");
            assert_eq!(failure.body.error, message);
            assert!(failure.body.details.is_empty());
        }
    }

    #[test]
    fn a_full_disk_is_507_and_says_so_naming_the_store() {
        let no_space = || std::io::Error::from_raw_os_error(28);
        let cases = [
            Error::Durability {
                reason: format!(
                    "cannot commit in the store `/var/lib/sd/node.redb`: I/O error: {}",
                    no_space()
                ),
                disk_full: true,
            },
            Error::Io {
                action: "cannot write",
                path: "/var/lib/sd/node.redb".into(),
                source: no_space(),
            },
        ];
        for error in cases {
            let failure = Failure::from(error);
            assert_eq!(failure.status, StatusCode::INSUFFICIENT_STORAGE);
            let message = &failure.body.error;
            assert!(message.contains("the node's disk is full"), "{message}");
            assert!(message.contains("/var/lib/sd/node.redb"), "{message}");
            assert!(message.contains("No space left on device"), "{message}");
        }
    }

    #[test]
    fn an_invalid_description_carries_each_error_as_a_detail() {
        let failure = Failure::from(Error::InvalidDescription {
            errors: vec!["a.sf:1:2: one".into(), "a.sf:3:4: two".into()],
            diagnostics: vec![sd_proto::Diagnostic {
                file: "a.sf".into(),
                line: 1,
                column: 2,
                message: "one".into(),
            }],
        });
        assert_eq!(failure.status, StatusCode::BAD_REQUEST);
        assert_eq!(failure.body.error, "the description is invalid (2 errors)");
        assert_eq!(failure.body.details, ["a.sf:1:2: one", "a.sf:3:4: two"]);
        assert_eq!(failure.body.diagnostics[0].line, 1);
    }
}
