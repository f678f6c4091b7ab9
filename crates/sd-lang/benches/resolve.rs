//! Resolving a large generated description: 10,000 components, each at the end of an
//! `extends` chain of depth 5, spread over nested groups.
//!
//! ```text
//! cargo bench -p sd-lang --bench resolve
//! ```
//!
//! Target (issue 2): `resolve_str` end to end (lex + parse + resolve) under 200 ms.
//! The lex-only and parse-only figures show how the time splits.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use sd_lang::source::FileId;
use sd_lang::{Options, Value};

/// Components in `sfConfig`.
const COMPONENTS: usize = 10_000;
/// Groups under `sfConfig`, subgroups in each group; components are spread over subgroups.
const GROUPS: usize = 10;
const SUBGROUPS: usize = 10;

/// The description: templates `T0`..`T4` (`Ti extends T(i-1)`), each adding attributes with
/// references and operators, then `sfConfig` with `COMPONENTS` components `cN extends T4`
/// spread over `GROUPS` x `SUBGROUPS` nested groups, each overriding some attributes.
fn description() -> String {
    let mut text = String::from(
        "\
T0 extends {
  port 8000;
  name \"base\";
  weight 1;
  enabled true;
  tags [| \"a\", \"b\" |];
}
T1 extends T0 {
  nextPort (ATTRIB port + 1);
  label (\"node-\" ++ name);
  enabled (weight > 0);
}
T2 extends T1 {
  doubled (nextPort * 2);
  portRef ATTRIB port;
  peer LAZY PARENT:ATTRIB shared;
  settings extends {
    retries 3;
    timeout (ATTRIB retries * 1000);
  }
}
T3 extends T2 {
  spread (doubled - port);
  weight 2;
  endpoint (label ++ \":\" ++ portRef);
  optional OPTIONAL (\"none\") ATTRIB missing;
}
T4 extends T3 {
  total (spread + weight);
  check (total >= 0 && enabled);
  settings:retries 5;
  kind IF (weight > 1) THEN \"heavy\" ELSE \"light\" FI;
}
sfConfig extends {
  shared \"the shared value\";
",
    );
    let per_subgroup = COMPONENTS / (GROUPS * SUBGROUPS);
    let mut n = 0;
    for g in 0..GROUPS {
        text.push_str(&format!("  g{g} extends {{\n"));
        for s in 0..SUBGROUPS {
            text.push_str(&format!("    s{s} extends {{\n"));
            for _ in 0..per_subgroup {
                text.push_str(&format!(
                    "      c{n} extends T4 {{ port {}; name \"c{n}\"; id {n}; }}\n",
                    9000 + n
                ));
                n += 1;
            }
            text.push_str("    }\n");
        }
        text.push_str("  }\n");
    }
    text.push_str("}\n");
    assert_eq!(n, COMPONENTS);
    text
}

/// Resolves once and checks the result, so the benchmark measures a correct resolution.
fn check(text: &str) {
    let start = Instant::now();
    let resolved = sd_lang::resolve_str("bench.sf", text, &Options::default())
        .unwrap_or_else(|d| panic!("the generated description does not resolve:\n{d}"));
    let elapsed = start.elapsed();
    let last = COMPONENTS - 1;
    let path = format!("g{}:s{}:c{last}", GROUPS - 1, SUBGROUPS - 1);
    let c = resolved
        .config
        .at_path(&path)
        .and_then(Value::as_component)
        .unwrap_or_else(|| panic!("{path} is missing"));
    let port = 9000 + i32::try_from(last).expect("fits");
    assert_eq!(c.get("nextPort"), Some(&Value::Int(port + 1)));
    assert_eq!(c.get("spread"), Some(&Value::Int(port + 2)));
    assert_eq!(c.get("total"), Some(&Value::Int(port + 4)));
    assert_eq!(c.get("check"), Some(&Value::Bool(true)));
    assert_eq!(c.get("kind"), Some(&Value::Str("heavy".into())));
    assert_eq!(
        c.get("endpoint"),
        Some(&Value::Str(format!("node-c{last}:{port}")))
    );
    assert_eq!(
        c.at_path("settings:timeout"),
        Some(&Value::Int(5000)),
        "settings:retries overrides the template's"
    );
    assert!(matches!(c.get("peer"), Some(Value::Lazy(_))));
    println!(
        "description: {} bytes, {} lines, {COMPONENTS} components (extends depth 5); \
         one cold resolve: {:.1} ms",
        text.len(),
        text.lines().count(),
        elapsed.as_secs_f64() * 1000.0
    );
}

fn bench(c: &mut Criterion) {
    let text = description();
    check(&text);
    let mut group = c.benchmark_group("10k_components");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("lex", |b| {
        b.iter(|| {
            let mut errors = Vec::new();
            let tokens = sd_lang::lexer::lex(FileId(0), black_box(&text), &mut errors);
            assert!(errors.is_empty());
            tokens
        });
    });
    group.bench_function("parse", |b| {
        b.iter(|| {
            let (body, errors) = sd_lang::parser::parse(FileId(0), black_box(&text));
            assert!(errors.is_empty());
            body
        });
    });
    group.bench_function("resolve_str", |b| {
        b.iter(|| {
            sd_lang::resolve_str("bench.sf", black_box(&text), &Options::default())
                .expect("resolves")
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
