//! The agent's log: `tracing` events on stderr, one line each, as compact text for people or
//! as JSON objects for programs (docs/logging.md).
//!
//! Only `sd agent` logs this way; the other commands print their results on stdout and their
//! errors as `error: ...` on stderr. The agent's stdout keeps the one line that tools wait
//! for (`sd agent NAME: api on URL, data in DIR`).

use std::fmt;
use std::str::FromStr;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Which events are logged when neither `--log-level`, `SD_LOG` nor `log_level` says.
pub const DEFAULT_FILTER: &str = "info";

/// How the log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event for people: timestamp, level, span, target, message and fields,
    /// without ANSI colours.
    #[default]
    Text,
    /// One JSON object per line for programs: `timestamp` (RFC 3339, UTC), `level`,
    /// `target`, `message`, the event's fields beside them, and `span` (the current span
    /// and its fields).
    Json,
}

/// A log format that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFormat(pub String);

impl fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\": use text or json", self.0)
    }
}

impl std::error::Error for UnknownFormat {}

impl FromStr for LogFormat {
    type Err = UnknownFormat;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

/// The filter of `directives`, an `EnvFilter` directive list such as `info` or
/// `warn,sd=debug,sd_runtime=debug`; a blank one means [`DEFAULT_FILTER`].
pub fn filter(directives: &str) -> Result<EnvFilter, String> {
    let directives = match directives.trim() {
        "" => DEFAULT_FILTER,
        text => text,
    };
    EnvFilter::builder().parse(directives).map_err(|error| {
        format!("\"{directives}\" is not a log filter such as info or warn,sd=debug: {error}")
    })
}

/// The subscriber that writes events passing `filter` to `writer` in `format`.
fn subscriber<W>(format: LogFormat, filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_ansi(false)
                    .with_target(true)
                    .with_writer(writer),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
}

/// Sends this process's events to stderr, in `format`, those that pass `filter`.
pub fn init(format: LogFormat, filter: EnvFilter) -> Result<(), String> {
    tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stderr))
        .map_err(|error| format!("cannot set up the log: {error}"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn the_format_is_text_or_json() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let error = "yaml".parse::<LogFormat>().unwrap_err();
        assert_eq!(error.to_string(), "\"yaml\": use text or json");
        assert!("JSON".parse::<LogFormat>().is_err());
        assert!("".parse::<LogFormat>().is_err());
    }

    #[test]
    fn the_filter_is_an_env_filter_and_blank_means_info() {
        assert!(filter("debug").is_ok());
        assert!(filter("warn,sd=debug,sd_runtime=trace").is_ok());
        assert_eq!(
            filter("  ").map(|f| f.to_string()),
            Ok(DEFAULT_FILTER.to_string())
        );
        let error = filter("sd=loud").unwrap_err();
        assert!(error.contains("\"sd=loud\""), "{error}");
    }

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'writer> MakeWriter<'writer> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'writer self) -> Self::Writer {
            self.clone()
        }
    }

    /// What `format` writes for two events in a span, the second one filtered out.
    fn logged(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, filter("info").unwrap(), buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("agent", node = "n1");
            let _entered = span.enter();
            tracing::info!(api = %"http://127.0.0.1:1", "agent ready");
            tracing::debug!("not shown");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_have_a_timestamp_a_level_the_message_the_fields_and_the_span() {
        let text = logged(LogFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["message"], "agent ready");
        assert_eq!(event["api"], "http://127.0.0.1:1");
        assert_eq!(event["span"]["name"], "agent");
        assert_eq!(event["span"]["node"], "n1");
        let timestamp = event["timestamp"].as_str().unwrap();
        // RFC 3339 in UTC: 2026-01-02T03:04:05.678901Z.
        assert!(
            timestamp.len() > 20 && timestamp.as_bytes()[10] == b'T' && timestamp.ends_with('Z'),
            "{timestamp}"
        );
        assert!(event["target"].as_str().unwrap().starts_with("sd::"));
    }

    #[test]
    fn text_lines_are_compact_and_plain() {
        let text = logged(LogFormat::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = lines[0];
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("agent ready"), "{line}");
        assert!(line.contains("api=http://127.0.0.1:1"), "{line}");
        assert!(
            line.contains("node=\"n1\"") || line.contains("node=n1"),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'), "no ANSI escapes: {line:?}");
    }
}
