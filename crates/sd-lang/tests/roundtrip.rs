//! Property tests of the way back from a resolved tree to text:
//!
//! 1. `unparse_config(tree)` then `resolve_str` gives back exactly the same tree, for
//!    generated trees: nested and `extends LAZY` components, every scalar kind (extreme
//!    integers, subnormal and huge floats, `-0.0`, strings full of escapes), nested vectors,
//!    `LAZY` references of every step kind, `OPTIONAL` with defaults. Floats are compared bit
//!    for bit, so `-0.0` must stay `-0.0` (it does). Names are words in the first property
//!    and any string (written quoted) in the second.
//! 2. Resolving arbitrary text (printable characters, or a soup of language fragments with
//!    `#include`s) never panics, and its errors render.
//!
//! Case counts are chosen so the whole file runs in a few seconds in a debug build; set
//! `PROPTEST_CASES` to run more.

use proptest::prelude::*;
use proptest::test_runner::Config;

use sd_lang::ast::PropertyKind;
use sd_lang::unparse::unparse_config;
use sd_lang::{Component, Loaded, MemoryLoader, Options, Properties, RefPart, Reference, Value};

/// Words the parser reserves: they cannot be written bare as an attribute name.
const RESERVED: &[&str] = sd_lang::parser::RESERVED;

/// Cases for a property: `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Generators of resolved trees.
// ---------------------------------------------------------------------------------------

/// Which attribute names a generated tree uses.
#[derive(Clone, Copy, Debug)]
enum Names {
    /// Words only: what `unparse` writes bare.
    Words,
    /// Also any string (spaces, quotes, `:`, reserved words, the empty name...), which
    /// `unparse` must write quoted.
    Quoted,
}

/// An attribute (or referenced) name: a letter or `_`, then letters, digits and `_`; not a
/// reserved word, and not starting with `sf` (`sfFunctionClass` would make a component a
/// function, `sfConfig` is the root...). Reserved words are also generated on purpose, with
/// a suffix, so names that merely *start* with a keyword (`LAZYx`, `TBD_`) are covered.
/// With [`Names::Quoted`], also any string not starting with `sf`.
fn name(names: Names) -> BoxedStrategy<String> {
    let words = prop_oneof![
        4 => "[a-zA-Z_][a-zA-Z0-9_]{0,7}",
        1 => (prop::sample::select(RESERVED), "[a-zA-Z0-9_]{1,2}")
            .prop_map(|(word, tail)| format!("{word}{tail}")),
    ]
    .prop_filter("reserved word", |n| !RESERVED.contains(&n.as_str()));
    match names {
        Names::Words => words.boxed(),
        Names::Quoted => prop_oneof![
            2 => words,
            2 => string(),
            1 => prop::sample::select(RESERVED).prop_map(String::from),
            1 => "[a-z]{1,3}[:. -][a-z]{1,3}",
        ]
        .boxed(),
    }
    .prop_filter("sf name", |n| !n.starts_with("sf"))
    .boxed()
}

/// Floats, biased towards the awkward ones: extremes of the exponent range, subnormals,
/// signed zeros, integral values (printed without a `.` by Rust's shortest form).
fn float() -> BoxedStrategy<f32> {
    prop_oneof![
        prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MIN,
            f32::MAX,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::EPSILON,
            1e-45,
            -1e-45,
            16_777_216.0,
            1e10,
            0.1,
        ]),
        (-1_000_000i32..1_000_000).prop_map(|n| n as f32),
    ]
    .boxed()
}

fn double() -> BoxedStrategy<f64> {
    prop_oneof![
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::MIN,
            f64::MAX,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::EPSILON,
            5e-324,
            -5e-324,
            1e300,
            1e-300,
            9_007_199_254_740_993.0,
            1e21,
            0.1,
        ]),
        any::<i64>().prop_map(|n| n as f64),
    ]
    .boxed()
}

/// Strings heavy in what needs escaping: quotes, backslashes, newlines, every control
/// character, `#` (the multi-line string delimiter), `//` and `/*` (comment starters), and
/// non-ASCII text up to astral planes.
fn string() -> BoxedStrategy<String> {
    let special = prop::sample::select(vec![
        '"',
        '\\',
        '\n',
        '\r',
        '\t',
        '\0',
        '\u{1}',
        '\u{8}',
        '\u{b}',
        '\u{c}',
        '\u{1b}',
        '\u{1f}',
        '\u{7f}',
        '\u{80}',
        '\u{85}',
        '\u{a0}',
        '\u{2028}',
        '\u{feff}',
        '\u{fffd}',
        '#',
        '/',
        '*',
        '\'',
        'é',
        'ß',
        '中',
        '😀',
        '\u{10ffff}',
        ' ',
        'a',
        'u',
        '0',
    ]);
    prop_oneof![
        prop::collection::vec(special, 0..12).prop_map(|cs| cs.into_iter().collect()),
        any::<String>(),
        "[ -~]{0,16}",
        Just(r"\u0041 \n \\ \x".to_string()),
    ]
    .boxed()
}

/// Values that are constants: all scalar kinds and vectors (nested, empty) of them.
fn constant() -> BoxedStrategy<Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            any::<i32>(),
            Just(i32::MIN),
            Just(i32::MAX),
            Just(0),
            Just(-1)
        ]
        .prop_map(Value::Int),
        prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
            Just(i64::from(i32::MIN)),
            Just(-1)
        ]
        .prop_map(Value::Long),
        float().prop_map(Value::Float),
        double().prop_map(Value::Double),
        string().prop_map(Value::Str),
    ];
    scalar
        .prop_recursive(3, 16, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(Value::Vector)
        })
        .boxed()
}

/// A step after the first: `name` (HERE), `ATTRIB name`, PARENT, ROOT, THIS, HOST, PROCESS.
fn later_part(names: Names) -> BoxedStrategy<RefPart> {
    prop_oneof![
        4 => name(names).prop_map(RefPart::Here),
        1 => name(names).prop_map(|name| RefPart::Attrib { name, keyword: true }),
        1 => Just(RefPart::Parent),
        1 => Just(RefPart::Root),
        1 => Just(RefPart::This),
        1 => string().prop_map(RefPart::Host),
        1 => Just(RefPart::Process),
    ]
    .boxed()
}

/// The first step: `ATTRIB x` or plain `x`, `HERE x`, PARENT, ROOT, THIS, HOST, PROCESS.
/// (A plain name after the first step reads back as `HERE`, so only the first step may be
/// an `Attrib` without the keyword.)
fn first_part(names: Names) -> BoxedStrategy<RefPart> {
    prop_oneof![
        3 => name(names).prop_map(|name| RefPart::Attrib { name, keyword: false }),
        2 => name(names).prop_map(|name| RefPart::Attrib { name, keyword: true }),
        1 => name(names).prop_map(RefPart::Here),
        1 => Just(RefPart::Parent),
        1 => Just(RefPart::Root),
        1 => Just(RefPart::This),
        1 => string().prop_map(RefPart::Host),
        1 => Just(RefPart::Process),
    ]
    .boxed()
}

fn property_kind() -> BoxedStrategy<PropertyKind> {
    prop::sample::select(vec![
        PropertyKind::Property,
        PropertyKind::IProperty,
        PropertyKind::EnvProperty,
        PropertyKind::IEnvProperty,
    ])
    .boxed()
}

/// A `LAZY` reference: steps, maybe a `PROPERTY`-like last step, maybe `OPTIONAL` with or
/// without a constant default.
fn lazy_reference(names: Names) -> BoxedStrategy<Value> {
    let optional = prop_oneof![
        3 => Just((false, None)),
        1 => Just((true, None)),
        2 => constant().prop_map(|d| (true, Some(Box::new(d)))),
    ];
    let property = prop::option::weighted(0.15, (property_kind(), name(names)));
    (
        first_part(names),
        prop::collection::vec(later_part(names), 0..4),
        property,
        optional,
    )
        .prop_map(|(first, rest, property, (optional, default))| {
            let mut parts = vec![first];
            parts.extend(rest);
            if let Some((kind, name)) = property {
                parts.push(RefPart::Property(kind, name));
            }
            Value::Lazy(Reference {
                parts,
                optional,
                default,
            })
        })
        .boxed()
}

/// A non-component attribute value: constants, `LAZY` references, and vectors that hold
/// references too. Components are never inside vectors: the unparser writes components only
/// as `name extends ...` attributes, and the resolver never puts one in a vector it builds
/// from literals.
fn leaf_value(names: Names) -> BoxedStrategy<Value> {
    prop_oneof![
        6 => constant(),
        2 => lazy_reference(names),
        1 => prop::collection::vec(prop_oneof![constant(), lazy_reference(names)], 0..3)
            .prop_map(Value::Vector),
    ]
    .boxed()
}

fn component_from(eager: bool, attrs: Vec<(String, Value)>) -> Component {
    let mut component = Component::new();
    component.eager = eager;
    for (name, value) in attrs {
        component.attrs.insert(name.into(), value);
    }
    component
}

/// A resolved tree: nested components, some of them `extends LAZY`, leaves of every kind.
/// The root (`sfConfig`) is always eager.
fn tree(names: Names) -> BoxedStrategy<Component> {
    let leaf_attrs = prop::collection::vec((name(names), leaf_value(names)), 0..6);
    let component = (any::<bool>(), leaf_attrs)
        .prop_map(|(eager, attrs)| Value::Component(component_from(eager, attrs)));
    let nested = component.prop_recursive(4, 48, 6, move |inner| {
        (
            prop::bool::weighted(0.7),
            prop::collection::vec(
                (name(names), prop_oneof![2 => leaf_value(names), 1 => inner]),
                0..6,
            ),
        )
            .prop_map(|(eager, attrs)| Value::Component(component_from(eager, attrs)))
    });
    prop::collection::vec((name(names), prop_oneof![leaf_value(names), nested]), 0..8)
        .prop_map(|attrs| component_from(true, attrs))
        .boxed()
}

// ---------------------------------------------------------------------------------------
// Strict comparison: floats bit for bit, everything else structurally, in order.
// ---------------------------------------------------------------------------------------

/// The first difference between two trees, as a path and a description.
fn difference(a: &Component, b: &Component, path: &str) -> Option<String> {
    if a.eager != b.eager {
        return Some(format!("{path}: eager {} vs {}", a.eager, b.eager));
    }
    let names_a: Vec<&str> = a.attrs.keys().map(|k| &**k).collect();
    let names_b: Vec<&str> = b.attrs.keys().map(|k| &**k).collect();
    if names_a != names_b {
        return Some(format!("{path}: attributes {names_a:?} vs {names_b:?}"));
    }
    a.attrs
        .iter()
        .zip(b.attrs.values())
        .find_map(|((name, va), vb)| value_difference(va, vb, &format!("{path}:{name}")))
}

fn value_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    let same = match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
        (Value::Vector(xs), Value::Vector(ys)) => {
            if xs.len() != ys.len() {
                false
            } else {
                return xs
                    .iter()
                    .zip(ys)
                    .enumerate()
                    .find_map(|(i, (x, y))| value_difference(x, y, &format!("{path}[{i}]")));
            }
        }
        (Value::Component(x), Value::Component(y)) => return difference(x, y, path),
        (Value::Lazy(x), Value::Lazy(y)) => {
            x.parts == y.parts
                && x.optional == y.optional
                && match (&x.default, &y.default) {
                    (None, None) => true,
                    (Some(dx), Some(dy)) => value_difference(dx, dy, path).is_none(),
                    _ => false,
                }
        }
        _ => a == b,
    };
    (!same).then(|| format!("{path}: {a:?} vs {b:?}"))
}

fn round_trip(tree: &Component) -> Result<(), TestCaseError> {
    let text = unparse_config(tree);
    let resolved = sd_lang::resolve_str("roundtrip.sf", &text, &Options::default())
        .map_err(|d| TestCaseError::fail(format!("does not resolve:\n{text}\n{d}")))?;
    if let Some(diff) = difference(tree, &resolved.config, "sfConfig") {
        return Err(TestCaseError::fail(format!("{diff}\ntext:\n{text}")));
    }
    prop_assert_eq!(tree, &resolved.config);
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: cases(384), ..Config::default() })]

    #[test]
    fn unparse_then_resolve_gives_back_the_tree(tree in tree(Names::Words)) {
        round_trip(&tree)?;
    }

    #[test]
    fn trees_with_quoted_names_round_trip(tree in tree(Names::Quoted)) {
        round_trip(&tree)?;
    }

    #[test]
    fn a_lone_constant_round_trips(value in constant()) {
        round_trip(&component_from(true, vec![("v".into(), value)]))?;
    }

    #[test]
    fn a_lone_lazy_reference_round_trips(value in lazy_reference(Names::Quoted)) {
        round_trip(&component_from(true, vec![("r".into(), value)]))?;
    }
}

/// Hand-picked trees, so the edge cases are always run (not only when proptest draws them).
#[test]
fn edge_cases_round_trip() {
    let values = vec![
        Value::Int(i32::MIN),
        Value::Int(i32::MAX),
        Value::Int(-1),
        Value::Long(i64::MIN),
        Value::Long(i64::MAX),
        Value::Long(0),
        Value::Float(-0.0),
        Value::Float(1e-45),
        Value::Float(f32::MAX),
        Value::Float(f32::MIN),
        Value::Float(3.0),
        Value::Double(-0.0),
        Value::Double(5e-324),
        Value::Double(f64::MAX),
        Value::Double(-1e300),
        Value::Double(1e21),
        Value::Str("q\"b\\n\nt\tc\u{1}\u{7f}é😀 #x# // /* */".into()),
        Value::Str(String::new()),
        Value::Vector(vec![]),
        Value::Vector(vec![
            Value::Vector(vec![]),
            Value::Vector(vec![Value::Null]),
        ]),
        Value::Lazy(Reference {
            parts: vec![
                RefPart::Attrib {
                    name: "a".into(),
                    keyword: true,
                },
                RefPart::Parent,
                RefPart::Here("b".into()),
            ],
            optional: true,
            default: Some(Box::new(Value::Int(i32::MIN))),
        }),
        Value::Lazy(Reference::new(vec![
            RefPart::Host("node \"1\"\n".into()),
            RefPart::Process,
            RefPart::This,
            RefPart::Root,
        ])),
    ];
    let mut root = component_from(
        true,
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("v{i}"), v))
            .collect(),
    );
    root.attrs.insert(
        "lazyChild".into(),
        Value::Component(component_from(
            false,
            vec![(
                "inner".into(),
                Value::Component(component_from(true, vec![])),
            )],
        )),
    );
    round_trip(&root).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------
// No input panics.
// ---------------------------------------------------------------------------------------

/// Fragments of the language, so random text reaches the parser's and resolver's deeper
/// paths rather than stopping at the first lexical error.
/// (The reserved words are added from `sd_lang::parser::RESERVED` by [`fragments`].)
const FRAGMENTS: &[&str] = &[
    "sfConfig",
    "Compound",
    "Prim",
    "concat",
    "vector",
    "sum",
    "sfFunctionClass",
    "a",
    "b",
    "x",
    "{",
    "}",
    "(",
    ")",
    "[|",
    "|]",
    "[",
    "]",
    ";",
    ",",
    ":",
    "--",
    "+",
    "-",
    "*",
    "/",
    "%",
    "++",
    "<>",
    "==",
    "!=",
    "<",
    ">",
    "<=",
    "&&",
    "||",
    "!",
    "->",
    "0",
    "1",
    "-2147483648",
    "9223372036854775807L",
    "1.5",
    "2e308",
    "1e-400f",
    "0x7f",
    "\"s\"",
    "\"\\u00",
    "##m\n#",
    "#include \"inc.sf\"",
    "#include? \"none.sf\"",
    "#include \"self.sf\"",
    "#include \"org/smartfrog/functions.sf\"",
    "//",
    "/*",
    "*/",
    "\n",
    " ",
];

/// Every fragment: the reserved words and the rest.
fn fragments() -> Vec<&'static str> {
    RESERVED.iter().chain(FRAGMENTS).copied().collect()
}

/// Text: arbitrary printable characters, or a soup of language fragments.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        "\\PC{0,200}",
        "[ -~\n\t]{0,200}",
        prop::collection::vec(prop::sample::select(fragments()), 0..80).prop_map(|fs| fs.join(" ")),
        prop::collection::vec(prop::sample::select(fragments()), 0..80).prop_map(|fs| fs.concat()),
    ]
    .boxed()
}

fn loader() -> MemoryLoader {
    MemoryLoader {
        files: vec![
            (
                "inc.sf".into(),
                "T extends { a 1; b ATTRIB a; c LAZY PARENT:x; }".into(),
            ),
            (
                "self.sf".into(),
                "#include \"self.sf\"\nS extends T;".into(),
            ),
        ],
    }
}

/// Inputs that once panicked or are easy to get wrong: a number followed by a multi-byte
/// character (the lexer looked at bytes as characters), unterminated forms, include cycles.
#[test]
fn tricky_inputs_do_not_panic() {
    for text in [
        "0\u{bbe}",
        "0\u{1f5f}",
        "1lé",
        "1.5e3ü",
        "0x1fé",
        "x 1é;",
        ".5é",
        "\"\\u00é\"",
        "\"\\",
        "##",
        "/*",
        "#include \"self.sf\"",
        "#include \"inc.sf\" sfConfig extends T { x ATTRIB b; }",
        "sfConfig extends { a -; b --; c - -2147483648; d -9223372036854775808; }",
        "sfConfig extends { a 1e999; b -1e-999f; c 0x; }",
        "sfConfig extends { a LAZY HOST \"\"; b HOST x:PROCESS; }",
    ] {
        let root = Loaded {
            key: "fuzz.sf".into(),
            display: "fuzz.sf".into(),
            text: text.into(),
        };
        if let Err(diagnostics) = sd_lang::resolve_loaded(root, &loader(), &Properties::default()) {
            let _ = diagnostics.to_string();
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: cases(512), ..Config::default() })]

    #[test]
    fn resolving_any_text_does_not_panic(text in text()) {
        let root = Loaded {
            key: "fuzz.sf".into(),
            display: "fuzz.sf".into(),
            text,
        };
        if let Err(diagnostics) = sd_lang::resolve_loaded(root, &loader(), &Properties::default()) {
            // Rendering the errors (lines, carets) must not panic either.
            let _ = diagnostics.to_string();
        }
    }
}
