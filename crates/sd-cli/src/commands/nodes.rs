//! `sd nodes`: the cluster's members as the agent sees them.

use std::process::ExitCode;

use clap::Args;
use sd_proto::MemberInfo;

use crate::client::{Client, ConnectArgs};
use crate::output::{ListFormat, print_json, print_out, table};

/// Arguments of `sd nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd nodes`.
pub fn nodes(args: &NodesArgs) -> ExitCode {
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    let members: Vec<MemberInfo> = match client.get("/nodes") {
        Ok(members) => members,
        Err(error) => return error.report(),
    };
    match args.format {
        ListFormat::Json => print_json(&members),
        ListFormat::Table => print_out(&nodes_table(&members)),
    }
}

fn nodes_table(members: &[MemberInfo]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                if m.is_self {
                    format!("{} *", m.name)
                } else {
                    m.name.clone()
                },
                m.state.clone(),
                format!("{}/{}", m.free_vcpus, m.vcpus),
                format!("{}/{}", m.free_memory_mib, m.memory_mib),
                m.accelerator.clone(),
                m.peer_addr.clone(),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "STATE",
            "FREE VCPUS",
            "FREE MIB",
            "ACCEL",
            "PEER ADDR",
            "LABELS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_member_with_this_node_marked() {
        let member = MemberInfo {
            name: "a".into(),
            state: "alive".into(),
            generation: 1,
            peer_addr: "127.0.0.1:4682".into(),
            api_url: None,
            vcpus: 2,
            free_vcpus: 1,
            memory_mib: 1024,
            free_memory_mib: 512,
            labels: [("zone".to_string(), "eu".to_string())].into(),
            version: "0.1.0".into(),
            accelerator: "tcg".into(),
            is_self: true,
        };
        let text = nodes_table(&[member]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"));
        assert!(lines[1].starts_with("a *"), "{text}");
        assert!(
            lines[1].contains("1/2") && lines[1].contains("zone=eu"),
            "{text}"
        );
    }
}
