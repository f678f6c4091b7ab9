//! What the commands print: plain tables, ages and durations, JSON, and stdout writes that
//! survive a closed pipe.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde::Serialize;

use crate::commands::EXIT_USAGE;

/// How `sd status` and `sd ls` print.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, for programs.
    Json,
}

/// A time as `2026-11-29 16:05:01.123Z` (UTC).
pub fn utc_time(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        unix_ms % 1000
    )
}

/// Columns separated by two spaces, each as wide as its widest cell (the last one is not
/// padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time since `unix_ms`, as `duration` prints it.
pub fn since(unix_ms: u64) -> String {
    duration(now_unix_ms().saturating_sub(unix_ms) / 1000)
}

/// `42s`, `5m07s`, `3h05m`, `2d04h`: the two largest units.
pub fn duration(seconds: u64) -> String {
    let (days, hours) = (seconds / 86_400, seconds / 3600 % 24);
    let (minutes, secs) = (seconds / 60 % 60, seconds % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// One line of a cell: newlines would break the table.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Pretty JSON and a newline on stdout.
pub fn print_json(value: &impl Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => print_out(&(text + "\n")),
        Err(error) => {
            eprintln!("error: cannot print JSON: {error}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Prints one line on stdout; one that cannot be written (a closed pipe, no stdout at all)
/// is dropped, since a reader gone away is no reason to stop the work.
pub fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Writes to stdout; a closed pipe (`sd resolve x | head`) is not an error.
pub fn print_out(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_do_not_pad_the_last() {
        let rows = vec![
            vec!["web".to_string(), "running".to_string(), "x".to_string()],
            vec!["database".to_string(), "failed".to_string(), String::new()],
        ];
        assert_eq!(
            table(&["NAME", "STATE", "SOURCE"], &rows),
            "NAME      STATE    SOURCE\nweb       running  x\ndatabase  failed\n"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn durations_show_the_two_largest_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(3 * 3600 + 5 * 60 + 9), "3h05m");
        assert_eq!(duration(2 * 86_400 + 4 * 3600), "2d04h");
    }

    #[test]
    fn utc_times_are_civil() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00.000Z");
        assert_eq!(utc_time(1_795_968_301_123), "2026-11-29 16:05:01.123Z");
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
