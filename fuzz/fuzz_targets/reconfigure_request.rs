//! What an agent does with an API reconfigure body before it asks any node: decode the JSON
//! (`ReconfigureRequest`), read the value, and plan a deployment with the change as an
//! override (an HA pool, so that replica paths are reachable). Any bytes must end in a plan or
//! in errors, never in a panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const POOL: &str = r#"#include "prelude.sf"
sfConfig extends Compound {
  sfLivenessDelay 1;
  pool extends Pool {
    replicas 3;
    template extends LAZY Compound {
      disk extends DirStorageBackend;
      worker extends ProcessDomain { command [| "/bin/true" |]; }
    }
  }
}
"#;

fn config() -> &'static sd_lang::Component {
    static CONFIG: OnceLock<sd_lang::Component> = OnceLock::new();
    CONFIG.get_or_init(|| {
        sd_lang::resolve_str("pool.sf", POOL, &sd_lang::Options::default())
            .expect("the pool resolves")
            .config
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() > sd_proto::MAX_REQUEST_BYTES {
        return;
    }
    let Ok(request) = serde_json::from_slice::<sd_proto::ReconfigureRequest>(data) else {
        return;
    };
    let _ = sd_runtime::settings::parse_value(&request.value);
    let change = sd_proto::Override {
        path: request.path,
        attribute: request.attribute,
        value: request.value,
    };
    match sd_runtime::plan::plan_with(config(), &[change]) {
        Ok(plan) => {
            for index in 0..plan.components.len() {
                let _ = plan.component(index);
            }
        }
        Err(errors) => {
            let _ = errors.iter().map(ToString::to_string).count();
        }
    }
});
