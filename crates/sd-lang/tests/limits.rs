//! Deep and large inputs end in a result or a `limit` error, never a crash, even when the
//! caller's thread has a small stack.

use sd_lang::{MemoryLoader, Options, Properties, Value};

fn resolve(text: String) -> Result<sd_lang::Resolved, Vec<&'static str>> {
    let root = sd_lang::Loaded {
        key: "deep.sf".into(),
        display: "deep.sf".into(),
        text,
    };
    sd_lang::resolve_loaded(root, &MemoryLoader::default(), &Properties::default())
        .map_err(|d| d.classes())
}

/// Runs `f` on a thread with a 256 KiB stack.
fn small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// `a{n-1} a{n-2}; ... a0 1;`: resolving the first attribute follows the whole chain.
fn reference_chain(n: usize) -> String {
    let mut text = String::from("sfConfig extends {\n");
    for i in (1..n).rev() {
        text.push_str(&format!("  a{i} a{};\n", i - 1));
    }
    text.push_str("  a0 1;\n}\n");
    text
}

#[test]
fn long_reference_chains_resolve_up_to_the_bound() {
    let resolved = small_stack(|| resolve(reference_chain(200))).expect("within the bound");
    assert_eq!(resolved.config.get("a199"), Some(&Value::Int(1)));
    let too_long = small_stack(|| resolve(reference_chain(sd_lang::MAX_CHAIN + 50)));
    assert_eq!(too_long.err(), Some(vec!["limit"]));
}

#[test]
fn long_prototype_chains_resolve_up_to_the_bound() {
    let chain = |n: usize| {
        let mut text: String = (1..n)
            .rev()
            .map(|i| format!("T{i} extends T{} {{ v{i} {i}; }}\n", i - 1))
            .collect();
        text.push_str(&format!(
            "T0 extends {{ v0 0; }}\nsfConfig extends T{};\n",
            n - 1
        ));
        text
    };
    let resolved = small_stack(move || resolve(chain(200))).expect("within the bound");
    assert_eq!(resolved.config.attrs.len(), 200);
    let too_long = small_stack(move || resolve(chain(sd_lang::MAX_CHAIN + 50)));
    assert!(
        too_long
            .err()
            .is_some_and(|classes| classes.contains(&"limit"))
    );
}

#[test]
fn deep_nesting_and_expressions_are_bounded() {
    let nested = |depth: usize| {
        format!(
            "sfConfig extends {{ {} x 1; {} }}",
            "c extends { ".repeat(depth),
            "} ".repeat(depth)
        )
    };
    assert!(small_stack(move || resolve(nested(100))).is_ok());
    assert!(
        small_stack(move || resolve(nested(1000)))
            .err()
            .is_some_and(|c| c.contains(&"limit"))
    );
    let parens = |depth: usize| {
        format!(
            "sfConfig extends {{ x {}1{}; }}",
            "(".repeat(depth),
            ")".repeat(depth)
        )
    };
    assert!(small_stack(move || resolve(parens(150))).is_ok());
    assert!(
        small_stack(move || resolve(parens(100_000)))
            .err()
            .is_some_and(|c| c.contains(&"limit"))
    );
}

#[test]
fn exponential_copies_hit_the_node_bound() {
    // Each template holds two copies of the previous one: 2^40 components if unbounded.
    let mut text = String::from("T0 extends { x 1; }\n");
    for i in 1..=40 {
        text.push_str(&format!(
            "T{i} extends {{ a extends T{p}; b extends T{p}; }}\n",
            p = i - 1
        ));
    }
    text.push_str("sfConfig extends T40;\n");
    let result = small_stack(move || resolve(text));
    assert!(result.err().is_some_and(|c| c.contains(&"limit")));
}

#[test]
fn exponential_strings_hit_the_size_bound() {
    let mut text = String::from("sfConfig extends {\n  s0 \"0123456789abcdef\";\n");
    for i in 1..=40 {
        text.push_str(&format!("  s{i} (s{p} ++ s{p});\n", p = i - 1));
    }
    text.push_str("}\n");
    let result = small_stack(move || resolve(text));
    assert!(result.err().is_some_and(|c| c.contains(&"limit")));
}

#[test]
fn options_default_reads_no_environment() {
    let options = Options::default();
    let result = sd_lang::resolve_str(
        "env.sf",
        "sfConfig extends { home ENVPROPERTY HOME; }",
        &options,
    );
    assert_eq!(
        result.err().map(|d| d.classes()),
        Some(vec!["missing-property"])
    );
}
