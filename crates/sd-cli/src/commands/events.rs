//! `sd events`: the cluster's lifecycle events (every member's), oldest first; `--follow`
//! goes on printing them as they happen.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use sd_proto::Event;

use crate::client::{Client, ConnectArgs};
use crate::output::{one_line, print_json, utc_time};

/// How `sd events` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    /// One line per event, for people.
    Human,
    /// One JSON object per line (the API's event), for programs.
    Json,
}

/// Arguments of `sd events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Go on printing events as they happen (until Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only this deployment's events.
    #[arg(long)]
    pub deployment: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: EventFormat,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd events`.
pub fn events(args: &EventsArgs) -> ExitCode {
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    let wanted = |event: &Event| {
        args.deployment
            .as_ref()
            .is_none_or(|name| *name == event.deployment)
    };
    let line = |event: &Event| match args.format {
        EventFormat::Human => human(event),
        EventFormat::Json => serde_json::to_string(event).unwrap_or_default(),
    };
    if !args.follow {
        let events: Vec<Event> = match client.get("/events") {
            Ok(events) => events,
            Err(error) => return error.report(),
        };
        let events: Vec<Event> = events.into_iter().filter(|e| wanted(e)).collect();
        if args.format == EventFormat::Json && events.is_empty() {
            return print_json(&events);
        }
        // One line per event, JSON ones as with --follow.
        let mut out = std::io::stdout().lock();
        for event in &events {
            if writeln!(out, "{}", line(event)).is_err() {
                break;
            }
        }
        return ExitCode::SUCCESS;
    }
    let query = [("follow", "true"), ("history", "true")];
    let mut out = std::io::stdout();
    let outcome = client.follow_events("/events", &query, |data| {
        let Ok(event) = serde_json::from_str::<Event>(data) else {
            return true;
        };
        // A reader gone away (`sd events -f | head`) ends the job.
        !wanted(&event)
            || writeln!(out, "{}", line(&event))
                .and_then(|()| out.flush())
                .is_ok()
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

/// `2026-11-29 16:05:01.123Z  n2  pool  sfConfig:pool:r1  restarting  (why)`.
fn human(event: &Event) -> String {
    let what = if event.path.is_empty() {
        "(deployment)"
    } else {
        &event.path
    };
    let mut line = format!(
        "{}  {}  {}  {}  {}",
        utc_time(event.unix_ms),
        event.node,
        event.deployment,
        what,
        event.state
    );
    if let Some(detail) = &event.detail {
        line.push_str(&format!("  ({})", one_line(detail)));
    }
    line
}
