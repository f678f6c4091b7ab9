//! Partitions made of nftables rules: every UDP datagram between a port of one side and a
//! port of the other is dropped, both ways or one way only, on loopback. The rules live in a table of their
//! own, removed when the [`Partition`] is dropped.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// A partition in force; dropping it heals it.
#[derive(Debug)]
pub struct Partition {
    table: String,
}

impl Partition {
    /// Drops every datagram between a port of `one` and a port of `other`.
    pub fn cut(one: &[u16], other: &[u16]) -> Result<Partition> {
        Self::install(one, other, true)
    }

    /// Drops every datagram from a port of `from` to a port of `to`; the other way passes.
    pub fn cut_one_way(from: &[u16], to: &[u16]) -> Result<Partition> {
        Self::install(from, to, false)
    }

    fn install(one: &[u16], other: &[u16], both_ways: bool) -> Result<Partition> {
        // One table per partition: tests in one process may cut clusters of their own.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("sd_partition_{}_{serial}", std::process::id());
        let set = |ports: &[u16]| {
            ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (a, b) = (set(one), set(other));
        let back = if both_ways {
            format!("    udp sport {{ {b} }} udp dport {{ {a} }} drop\n")
        } else {
            String::new()
        };
        let rules = format!(
            "table inet {table} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    udp sport {{ {a} }} udp dport {{ {b} }} drop\n{back}  }}\n}}\n"
        );
        nft(&["-f", "-"], Some(&rules))?;
        Ok(Partition { table })
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table], None);
    }
}

fn nft(args: &[&str], input: Option<&str>) -> Result<()> {
    let failed = |reason: String| Error::Command {
        command: format!("nft {}", args.join(" ")),
        reason,
    };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(format!("{error} (is nftables installed?)")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|error| failed(error.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| failed(error.to_string()))?;
    if !output.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}
