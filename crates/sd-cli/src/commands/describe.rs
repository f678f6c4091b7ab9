//! `sd resolve` and `sd validate`: the description language from the command line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use sd_lang::{Diagnostics, Options, Resolved};

use super::{EXIT_FAILED, EXIT_USAGE};
use crate::output::print_out;

/// Which description to read and how.
#[derive(Debug, Args)]
pub struct DescriptionArgs {
    /// The description file (.sf).
    pub file: PathBuf,
    /// A directory to search for `#include`d files (after the including file's own
    /// directory; the embedded library comes last). Repeatable.
    #[arg(short = 'I', long = "include", value_name = "DIR")]
    pub include_dirs: Vec<PathBuf>,
    /// Set a property read by `PROPERTY name` / `IPROPERTY name`. Repeatable.
    #[arg(short = 'D', long = "define", value_name = "NAME=VALUE", value_parser = parse_definition)]
    pub definitions: Vec<(String, String)>,
}

/// Output format of `sd resolve`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// JSON: components as objects, LAZY references as {"$lazy": "..."}.
    Json,
    /// SmartFrog notation: resolves again to the same tree.
    Sf,
}

/// Arguments of `sd resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub description: DescriptionArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

fn parse_definition(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

impl DescriptionArgs {
    fn options(&self) -> Options {
        let mut options = Options {
            include_dirs: self.include_dirs.clone(),
            ..Options::default()
        };
        options.properties.properties =
            self.definitions.iter().cloned().collect::<BTreeMap<_, _>>();
        // `vars()` would panic on a variable that is not UTF-8; such a one is left out.
        options.properties.env = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        options
    }

    /// Resolves the description; `Err` is the exit code of a file that cannot be read.
    pub fn resolve(&self) -> Result<Result<Resolved, Diagnostics>, ExitCode> {
        if !self.file.is_file() {
            eprintln!(
                "error: cannot read description `{}`: no such file",
                self.file.display()
            );
            return Err(ExitCode::from(EXIT_USAGE));
        }
        Ok(sd_lang::resolve_file(&self.file, &self.options()))
    }
}

/// `sd resolve`.
pub fn resolve(args: &ResolveArgs) -> ExitCode {
    let resolved = match args.description.resolve() {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(diagnostics)) => return report(&diagnostics),
        Err(code) => return code,
    };
    let text = match args.format {
        Format::Json => {
            let json = sd_lang::json::component_to_json(&resolved.config);
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
        }
        Format::Sf => sd_lang::unparse::unparse_config(&resolved.config),
    };
    print_out(&text)
}

/// `sd validate`.
pub fn validate(args: &DescriptionArgs) -> ExitCode {
    match args.resolve() {
        Ok(Ok(_)) => print_out("ok\n"),
        Ok(Err(diagnostics)) => report(&diagnostics),
        Err(code) => code,
    }
}

/// Prints every error of a description; returns the exit code for it.
pub fn report(diagnostics: &Diagnostics) -> ExitCode {
    eprintln!("{diagnostics}");
    ExitCode::from(EXIT_FAILED)
}
