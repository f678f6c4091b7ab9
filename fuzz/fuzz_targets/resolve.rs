//! Parse + resolve of arbitrary text must never panic, hang or overflow the stack: it ends
//! in a tree or in diagnostics, and both can be printed (JSON, SmartFrog text, errors with
//! carets).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(root) = sd_fuzz::root(data) else {
        return;
    };
    match sd_fuzz::resolve(root) {
        Ok(resolved) => {
            let _ = sd_lang::json::component_to_json(&resolved.config);
            let _ = sd_lang::unparse::unparse_config(&resolved.config);
        }
        Err(diagnostics) => {
            let _ = diagnostics.to_string();
        }
    }
});
