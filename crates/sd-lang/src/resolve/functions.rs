//! The functions of SmartFrog's `functions.sf` and the operators that stand for them.
//!
//! A component with an `sfFunctionClass` attribute is a function: its other attributes
//! (those not starting with `sf`), in order, are the arguments, and its value is the result.
//! Class names are accepted as SmartFrog writes them
//! (`org.smartfrog.sfcore.languages.sf.functions.Sum`) or short (`Sum`, `sum`).
//! Functions whose result depends on time, chance or input (`date`, `random`, `next`,
//! `userinput`) are refused: a description resolves the same everywhere.

use crate::ast::{BinaryOp, UnaryOp};
use crate::error::Error;

use super::eval::Val;

/// The attribute that makes a component a function.
pub const CLASS_ATTRIBUTE: &str = "sfFunctionClass";

/// Prefix of SmartFrog's function classes.
const SMARTFROG_PACKAGE: &str = "org.smartfrog.sfcore.languages.sf.functions.";

/// Longest string a function may build.
pub const MAX_STRING: usize = 16 << 20;
/// Longest vector a function may build.
pub const MAX_VECTOR: usize = 1 << 20;

/// Calls function `class` of the component at `path` with its arguments.
pub fn call<'a>(class: &str, args: Vec<(String, Val<'a>)>, path: &str) -> Result<Val<'a>, Error> {
    let name = class.strip_prefix(SMARTFROG_PACKAGE).unwrap_or(class);
    if let Some((_, lazy)) = args.iter().find(|(_, value)| matches!(value, Val::Lazy(_))) {
        let Val::Lazy(reference) = lazy else {
            unreachable!()
        };
        return Err(Error::Unsupported(format!(
            "function `{path}` has the LAZY argument `LAZY {reference}`; sd evaluates functions when it resolves, so their arguments cannot be LAZY"
        )));
    }
    let named = |wanted: &str| {
        args.iter()
            .find(|(n, _)| n == wanted)
            .map(|(_, v)| v.clone())
    };
    let required = |wanted: &str| {
        named(wanted).ok_or_else(|| {
            Error::Type(format!(
                "function `{path}` ({name}) needs an attribute `{wanted}`"
            ))
        })
    };
    let values = || args.iter().map(|(_, v)| v.clone());
    match name {
        "Vector" | "vector" => match args.iter().find(|(_, v)| matches!(v, Val::Node(_))) {
            Some((name, _)) => Err(Error::Type(format!(
                "vector `{path}`: `{name}` is a component; a vector holds values and LAZY references"
            ))),
            None => Ok(Val::Vector(values().collect())),
        },
        "Append" | "append" => fold(values(), BinaryOp::Append, Val::Vector(Vec::new())),
        "Concatenate" | "concat" => fold(values(), BinaryOp::Concat, Val::Str(String::new())),
        "Sum" | "sum" | "plus" => fold(values(), BinaryOp::Add, Val::Int(0)),
        "Product" | "product" => fold(values(), BinaryOp::Mul, Val::Int(1)),
        "And" | "and" => fold(values(), BinaryOp::And, Val::Bool(true)),
        "Or" | "or" => fold(values(), BinaryOp::Or, Val::Bool(false)),
        "Xor" | "xor" => {
            let mut result = false;
            for value in values() {
                result ^= boolean(&value, "xor")?;
            }
            Ok(Val::Bool(result))
        }
        "Minus" | "minus" => binary(BinaryOp::Sub, required("left")?, required("right")?),
        "Divide" | "divide" => binary(BinaryOp::Div, required("left")?, required("right")?),
        "Mod" | "mod" => binary(BinaryOp::Mod, required("left")?, required("right")?),
        "Implies" | "implies" => binary(BinaryOp::Implies, required("left")?, required("right")?),
        "GE" => binary(BinaryOp::Ge, required("left")?, required("right")?),
        "LE" => binary(BinaryOp::Le, required("left")?, required("right")?),
        "GT" => binary(BinaryOp::Gt, required("left")?, required("right")?),
        "LT" => binary(BinaryOp::Lt, required("left")?, required("right")?),
        "EQ" => Ok(Val::Bool(scalar_equal(
            &required("left")?,
            &required("right")?,
        ))),
        "NE" => Ok(Val::Bool(!scalar_equal(
            &required("left")?,
            &required("right")?,
        ))),
        "Not" | "not" => unary(UnaryOp::Not, required("data")?),
        "IfThenElse" | "ifThenElse" => match required("if")? {
            Val::Bool(true) => required("then"),
            Val::Bool(false) => required("else"),
            other => Err(Error::Type(format!(
                "ifThenElse `{path}`: `if` must be a boolean, not {}",
                other.type_name()
            ))),
        },
        "Format" | "formatString" => format_string(&args, path),
        "Date" | "date" | "Random" | "random" | "Next" | "next" | "UserInput" | "userinput"
        | "SystemComponent" => Err(Error::Unsupported(format!(
            "function `{path}` ({name}) depends on time, chance, input or the machine; sd resolves descriptions the same everywhere, so it does not provide it"
        ))),
        "" => Err(Error::Type(format!(
            "`{path}` has an empty sfFunctionClass: extend a function such as `concat` or `sum`"
        ))),
        other => Err(Error::Type(format!(
            "`{path}` names an unknown function class `{other}`"
        ))),
    }
}

fn fold<'a>(
    values: impl Iterator<Item = Val<'a>>,
    op: BinaryOp,
    empty: Val<'a>,
) -> Result<Val<'a>, Error> {
    let mut values = values;
    let Some(first) = values.next() else {
        return Ok(empty);
    };
    // A single argument is still checked (`sum` of a string is an error), against the
    // operation's neutral value so the message names only the argument.
    let mut result = match values.next() {
        None => {
            let described = first.type_name();
            return binary(op, empty, first)
                .map_err(|_| Error::Type(format!("`{}` cannot take {described}", op.text())));
        }
        Some(second) => binary(op, first, second)?,
    };
    for value in values {
        result = binary(op, result, value)?;
    }
    Ok(result)
}

/// `formatString`: `format` with `$0` ... `$9` replaced by the attributes `s0` ... `s9`.
fn format_string<'a>(args: &[(String, Val<'_>)], path: &str) -> Result<Val<'a>, Error> {
    let format = match args.iter().find(|(n, _)| n == "format") {
        Some((_, Val::Str(format))) => format.clone(),
        Some((_, other)) => {
            return Err(Error::Type(format!(
                "formatString `{path}`: `format` must be a string, not {}",
                other.type_name()
            )));
        }
        None => String::new(),
    };
    let mut out = String::with_capacity(format.len());
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        let digit = chars.peek().and_then(|d| d.to_digit(10));
        let Some(digit) = digit.filter(|_| c == '$') else {
            out.push(c);
            continue;
        };
        chars.next();
        let key = format!("s{digit}");
        match args.iter().find(|(n, _)| *n == key) {
            Some((_, value)) => out.push_str(&text(value)?),
            None => {
                return Err(Error::Type(format!(
                    "formatString `{path}`: the format uses `${digit}` but there is no attribute `{key}`"
                )));
            }
        }
        if out.len() > MAX_STRING {
            return Err(Error::Limit(format!(
                "a string longer than {} MiB",
                MAX_STRING >> 20
            )));
        }
    }
    Ok(Val::Str(out))
}

/// A value as `concat` prints it (Java's `toString`: `5`, `true`, `1.5`, `[a, b]`).
pub fn text(value: &Val<'_>) -> Result<String, Error> {
    Ok(match value {
        Val::Null => "NULL".into(),
        Val::Bool(b) => b.to_string(),
        Val::Int(n) => n.to_string(),
        Val::Long(n) => n.to_string(),
        Val::Float(x) => java_float(f64::from(*x), format!("{x:?}")),
        Val::Double(x) => java_float(*x, format!("{x:?}")),
        Val::Str(s) => s.clone(),
        Val::Vector(items) => {
            let items: Result<Vec<String>, Error> = items.iter().map(text).collect();
            format!("[{}]", items?.join(", "))
        }
        other => {
            return Err(Error::Type(format!(
                "cannot turn {} into text",
                other.type_name()
            )));
        }
    })
}

/// Java's `Double.toString`: plain between 10^-3 and 10^7, else `1.0E10`.
fn java_float(x: f64, shortest: String) -> String {
    let magnitude = x.abs();
    if x == 0.0 || (1e-3..1e7).contains(&magnitude) {
        return if shortest.contains(['.', 'e']) {
            shortest
        } else {
            format!("{shortest}.0")
        };
    }
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.to_string()
    } else {
        format!("{mantissa}.0")
    };
    format!("{mantissa}E{exponent}")
}

fn boolean(value: &Val<'_>, op: &str) -> Result<bool, Error> {
    match value {
        Val::Bool(b) => Ok(*b),
        other => Err(Error::Type(format!(
            "`{op}` needs booleans, not {}",
            other.type_name()
        ))),
    }
}

/// Numbers with Java's promotion: int < long < float < double.
#[derive(Clone, Copy)]
enum Num {
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
}

impl Num {
    fn of(value: &Val<'_>) -> Option<Num> {
        Some(match value {
            Val::Int(n) => Num::Int(*n),
            Val::Long(n) => Num::Long(*n),
            Val::Float(x) => Num::Float(*x),
            Val::Double(x) => Num::Double(*x),
            _ => return None,
        })
    }

    fn rank(self) -> u8 {
        match self {
            Num::Int(_) => 0,
            Num::Long(_) => 1,
            Num::Float(_) => 2,
            Num::Double(_) => 3,
        }
    }

    fn as_i64(self) -> i64 {
        match self {
            Num::Int(n) => i64::from(n),
            Num::Long(n) => n,
            // Only called when both sides are integers.
            Num::Float(_) | Num::Double(_) => 0,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(n) => f64::from(n),
            #[allow(clippy::cast_precision_loss)]
            Num::Long(n) => n as f64,
            Num::Float(x) => f64::from(x),
            Num::Double(x) => x,
        }
    }
}

/// Applies a unary operator.
pub fn unary<'a>(op: UnaryOp, value: Val<'a>) -> Result<Val<'a>, Error> {
    match (op, value) {
        (UnaryOp::Not, Val::Bool(b)) => Ok(Val::Bool(!b)),
        (UnaryOp::Neg, Val::Int(n)) => n.checked_neg().map(Val::Int).ok_or_else(overflow),
        (UnaryOp::Neg, Val::Long(n)) => n.checked_neg().map(Val::Long).ok_or_else(overflow),
        (UnaryOp::Neg, Val::Float(x)) => Ok(Val::Float(-x)),
        (UnaryOp::Neg, Val::Double(x)) => Ok(Val::Double(-x)),
        (UnaryOp::Not, other) => Err(Error::Type(format!(
            "`!` needs a boolean, not {}",
            other.type_name()
        ))),
        (UnaryOp::Neg, other) => Err(Error::Type(format!(
            "`-` needs a number, not {}",
            other.type_name()
        ))),
    }
}

fn overflow() -> Error {
    Error::Type("integer overflow".into())
}

/// Applies a binary operator (`==` and `!=` on components are handled by the caller).
pub fn binary<'a>(op: BinaryOp, left: Val<'a>, right: Val<'a>) -> Result<Val<'a>, Error> {
    let symbol = op.text();
    let mismatch = |what: &str, left: &Val<'_>, right: &Val<'_>| {
        Error::Type(format!(
            "`{symbol}` needs {what}, not {} and {}",
            left.type_name(),
            right.type_name()
        ))
    };
    match op {
        BinaryOp::Eq => Ok(Val::Bool(scalar_equal(&left, &right))),
        BinaryOp::Ne => Ok(Val::Bool(!scalar_equal(&left, &right))),
        BinaryOp::And | BinaryOp::Or | BinaryOp::Implies => match (&left, &right) {
            (Val::Bool(a), Val::Bool(b)) => Ok(Val::Bool(match op {
                BinaryOp::And => *a && *b,
                BinaryOp::Or => *a || *b,
                _ => !*a || *b,
            })),
            _ => Err(mismatch("booleans", &left, &right)),
        },
        BinaryOp::Concat => {
            let joined = text(&left)? + &text(&right)?;
            if joined.len() > MAX_STRING {
                return Err(Error::Limit(format!(
                    "a string longer than {} MiB",
                    MAX_STRING >> 20
                )));
            }
            Ok(Val::Str(joined))
        }
        BinaryOp::Append => match (left, right) {
            (Val::Vector(mut a), Val::Vector(b)) => {
                if a.len() + b.len() > MAX_VECTOR {
                    return Err(Error::Limit(format!(
                        "a vector longer than {MAX_VECTOR} elements"
                    )));
                }
                a.extend(b);
                Ok(Val::Vector(a))
            }
            (left, right) => Err(mismatch("vectors", &left, &right)),
        },
        BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Ge => {
            let ordering = match (Num::of(&left), Num::of(&right), &left, &right) {
                (Some(a), Some(b), _, _) if a.rank().max(b.rank()) <= 1 => {
                    a.as_i64().cmp(&b.as_i64())
                }
                (Some(a), Some(b), _, _) => a
                    .as_f64()
                    .partial_cmp(&b.as_f64())
                    .ok_or_else(|| mismatch("comparable numbers", &left, &right))?,
                (_, _, Val::Str(a), Val::Str(b)) => a.cmp(b),
                _ => return Err(mismatch("two numbers or two strings", &left, &right)),
            };
            Ok(Val::Bool(match op {
                BinaryOp::Lt => ordering.is_lt(),
                BinaryOp::Gt => ordering.is_gt(),
                BinaryOp::Le => ordering.is_le(),
                _ => ordering.is_ge(),
            }))
        }
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => {
            let (Some(a), Some(b)) = (Num::of(&left), Num::of(&right)) else {
                let hint = if op == BinaryOp::Add
                    && (matches!(left, Val::Str(_)) || matches!(right, Val::Str(_)))
                {
                    " (join strings with `++`)"
                } else {
                    ""
                };
                return Err(Error::Type(format!(
                    "`{symbol}` needs numbers, not {} and {}{hint}",
                    left.type_name(),
                    right.type_name()
                )));
            };
            arithmetic(op, a, b)
        }
    }
}

fn arithmetic(op: BinaryOp, a: Num, b: Num) -> Result<Val<'static>, Error> {
    let rank = a.rank().max(b.rank());
    if rank <= 1 {
        let (x, y) = (a.as_i64(), b.as_i64());
        if matches!(op, BinaryOp::Div | BinaryOp::Mod) && y == 0 {
            return Err(Error::Type("division by zero".into()));
        }
        let result = match op {
            BinaryOp::Add => x.checked_add(y),
            BinaryOp::Sub => x.checked_sub(y),
            BinaryOp::Mul => x.checked_mul(y),
            BinaryOp::Div => x.checked_div(y),
            _ => x.checked_rem(y),
        }
        .ok_or_else(overflow)?;
        return if rank == 0 {
            i32::try_from(result).map(Val::Int).map_err(|_| overflow())
        } else {
            Ok(Val::Long(result))
        };
    }
    if op == BinaryOp::Mod {
        return Err(Error::Type("`%` needs integers or longs".into()));
    }
    let (x, y) = (a.as_f64(), b.as_f64());
    let result = match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        _ => x / y,
    };
    if !result.is_finite() {
        return Err(Error::Type(format!(
            "`{}` gave a result that is not a finite number",
            op.text()
        )));
    }
    #[allow(clippy::cast_possible_truncation)]
    let value = if rank == 2 {
        Val::Float(result as f32)
    } else {
        Val::Double(result)
    };
    Ok(value)
}

/// Equality as SmartFrog's `EQ`: type-sensitive (`1 == 1L` is false), by value.
pub fn scalar_equal(left: &Val<'_>, right: &Val<'_>) -> bool {
    left == right
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(values: &[(&str, Val<'a>)]) -> Vec<(String, Val<'a>)> {
        values
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn sums_promote_like_java() {
        let result = call(
            "sum",
            args(&[("a", Val::Int(1)), ("b", Val::Long(2)), ("c", Val::Int(3))]),
            "x",
        );
        assert_eq!(result, Ok(Val::Long(6)));
        assert_eq!(
            binary(BinaryOp::Add, Val::Int(1), Val::Double(2.5)),
            Ok(Val::Double(3.5))
        );
        assert_eq!(
            binary(BinaryOp::Div, Val::Int(7), Val::Int(2)),
            Ok(Val::Int(3))
        );
        assert!(binary(BinaryOp::Div, Val::Int(7), Val::Int(0)).is_err());
        assert!(binary(BinaryOp::Add, Val::Int(i32::MAX), Val::Int(1)).is_err());
    }

    #[test]
    fn concat_prints_like_java() {
        let joined = call(
            "org.smartfrog.sfcore.languages.sf.functions.Concatenate",
            args(&[
                ("a", Val::Str("a".into())),
                ("b", Val::Int(1)),
                ("c", Val::Bool(true)),
                ("d", Val::Double(1e10)),
            ]),
            "x",
        );
        assert_eq!(joined, Ok(Val::Str("a1true1.0E10".into())));
        assert_eq!(
            text(&Val::Vector(vec![Val::Str("a".into()), Val::Double(2.0)])),
            Ok("[a, 2.0]".into())
        );
    }

    #[test]
    fn format_string_replaces_parameters() {
        let result = call(
            "formatString",
            args(&[
                ("format", Val::Str("the meaning of $2 is $1".into())),
                ("s1", Val::Int(42)),
                ("s2", Val::Str("life".into())),
            ]),
            "x",
        );
        assert_eq!(result, Ok(Val::Str("the meaning of life is 42".into())));
    }

    #[test]
    fn equality_is_type_sensitive() {
        assert!(!scalar_equal(&Val::Int(1), &Val::Long(1)));
        assert!(scalar_equal(&Val::Str("a".into()), &Val::Str("a".into())));
    }

    #[test]
    fn impure_functions_are_refused() {
        assert!(matches!(
            call("date", Vec::new(), "x"),
            Err(Error::Unsupported(_))
        ));
    }
}
