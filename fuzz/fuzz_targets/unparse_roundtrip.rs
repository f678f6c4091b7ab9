//! For every description that resolves, `unparse_config` of the tree must resolve again to
//! exactly the same tree (attribute order kept, floats bit for bit). This drives the round
//! trip with the trees the resolver really produces (functions, operators, placement,
//! inheritance, LAZY propagation), complementing the generated trees of
//! crates/sd-lang/tests/roundtrip.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(root) = sd_fuzz::root(data) else {
        return;
    };
    let Ok(resolved) = sd_fuzz::resolve(root) else {
        return;
    };
    let text = sd_lang::unparse::unparse_config(&resolved.config);
    let again = sd_lang::resolve_loaded(
        sd_lang::Loaded {
            key: "unparsed.sf".into(),
            display: "unparsed.sf".into(),
            text: text.clone(),
        },
        &sd_lang::MemoryLoader::default(),
        &sd_lang::Properties::default(),
    );
    match again {
        Ok(again) => assert!(
            sd_fuzz::same_component(&resolved.config, &again.config),
            "the round trip changed the tree\nunparsed:\n{text}\nfirst:  {:?}\nsecond: {:?}",
            resolved.config,
            again.config
        ),
        Err(diagnostics) => panic!("the unparsed tree does not resolve:\n{text}\n{diagnostics}"),
    }
});
