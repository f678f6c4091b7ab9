//! What an agent does with an API deploy body, short of starting anything: decode the JSON
//! (`DeployRequest`), resolve the description, plan it. Any bytes must end in a request that
//! plans, or in errors that render, never in a panic, hang or stack overflow.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > sd_proto::MAX_REQUEST_BYTES {
        return;
    }
    let Ok(request) = serde_json::from_slice::<sd_proto::DeployRequest>(data) else {
        return;
    };
    let resolved = sd_lang::resolve_str(
        "fuzz.sf",
        &request.description,
        &sd_lang::Options::default(),
    );
    match resolved {
        Ok(resolved) => match sd_runtime::plan::plan(&resolved.config) {
            Ok(plan) => {
                for index in 0..plan.components.len() {
                    let _ = plan.component(index);
                }
            }
            Err(errors) => {
                let _ = errors.iter().map(ToString::to_string).count();
            }
        },
        Err(diagnostics) => {
            let _ = diagnostics.to_string();
        }
    }
});
