//! Recursive-descent parser for SmartFrog notation. It recovers at `;` and `}` so one run
//! reports every syntax error it can, and it bounds nesting so no input overflows the stack.

use crate::ast::{
    AttrName, Attribute, BinaryOp, Body, ComponentExpr, ComponentRole, Expr, ExprKind, Include,
    Item, Literal, PropertyKind, TypeItem, UnaryOp,
};
use crate::error::{Diagnostic, Error};
use crate::lexer::{Sym, Tok, Token, lex};
use crate::reference::{RefPart, Reference};
use crate::source::{FileId, Span};
use crate::value::Value;

/// Deepest nesting of components, vectors and parentheses accepted.
pub const MAX_NESTING: usize = 200;

/// Parses one file's text. Returns the body that could be parsed and the errors found.
pub fn parse(file: FileId, text: &str) -> (Body, Vec<Diagnostic>) {
    let mut errors = Vec::new();
    let tokens = lex(file, text, &mut errors);
    let mut parser = Parser {
        tokens,
        pos: 0,
        errors,
        depth: 0,
    };
    let body = parser.body(true);
    (body, parser.errors)
}

/// A syntax error the parser recovers from by skipping ahead.
struct Recover;

type PResult<T> = Result<T, Recover>;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    errors: Vec<Diagnostic>,
    depth: usize,
}

fn keyword(tok: &Tok) -> Option<&str> {
    match tok {
        Tok::Word(w) => Some(w.as_str()),
        _ => None,
    }
}

/// Words that cannot name an attribute or start a plain reference (quote them: `"LAZY" 1;`).
pub const RESERVED: &[&str] = &[
    "extends",
    "LAZY",
    "ATTRIB",
    "HERE",
    "PARENT",
    "ROOT",
    "THIS",
    "HOST",
    "PROCESS",
    "TBD",
    "OPTIONAL",
    "PROPERTY",
    "IPROPERTY",
    "ENVPROPERTY",
    "IENVPROPERTY",
    "NULL",
    "true",
    "false",
    "IF",
    "THEN",
    "ELSE",
    "FI",
    "DATA",
    "APPLY",
    "ASSERT",
];

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    fn peek_at(&self, offset: usize) -> &Tok {
        let last = self.tokens.len() - 1;
        &self.tokens[(self.pos + offset).min(last)].tok
    }

    fn span(&self) -> Span {
        self.tokens[self.pos].span
    }

    fn prev_span(&self) -> Span {
        self.tokens[self.pos.saturating_sub(1)].span
    }

    fn bump(&mut self) -> Token {
        let token = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    fn at_sym(&self, sym: Sym) -> bool {
        *self.peek() == Tok::Sym(sym)
    }

    fn at_word(&self, word: &str) -> bool {
        keyword(self.peek()) == Some(word)
    }

    fn eat_sym(&mut self, sym: Sym) -> bool {
        let found = self.at_sym(sym);
        if found {
            self.bump();
        }
        found
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.at_word(word);
        if found {
            self.bump();
        }
        found
    }

    fn expected<T>(&mut self, what: &str) -> PResult<T> {
        let found = self.peek().describe();
        let span = self.span();
        self.errors.push(
            Error::Syntax {
                expected: what.into(),
                found,
            }
            .at(span),
        );
        Err(Recover)
    }

    fn expect_sym(&mut self, sym: Sym) -> PResult<()> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            self.expected(&format!("`{}`", sym.text()))
        }
    }

    fn nest(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            let span = self.span();
            self.errors
                .push(Error::Limit(format!("nesting deeper than {MAX_NESTING}")).at(span));
            return Err(Recover);
        }
        Ok(())
    }

    /// Skips to just after the next `;` or to the `}` closing the current body.
    fn recover(&mut self) {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::Sym(Sym::LBrace) => depth += 1,
                Tok::Sym(Sym::RBrace) if depth == 0 => return,
                Tok::Sym(Sym::RBrace) => {
                    depth -= 1;
                    if depth == 0 {
                        self.bump();
                        self.eat_sym(Sym::Semi);
                        return;
                    }
                }
                Tok::Sym(Sym::Semi) if depth == 0 => {
                    self.bump();
                    return;
                }
                _ => {}
            }
            self.bump();
        }
    }

    /// Items until `}` (nested) or end of file (top level).
    fn body(&mut self, top: bool) -> Body {
        let mut items = Vec::new();
        loop {
            match self.peek() {
                // A missing `}` is reported by the caller.
                Tok::Eof => return items,
                Tok::Sym(Sym::RBrace) if !top => return items,
                Tok::Sym(Sym::RBrace) => {
                    let _ = self.expected::<()>("an attribute or `#include`");
                    self.bump();
                }
                Tok::Sym(Sym::Semi) => {
                    self.bump();
                }
                _ => match self.item() {
                    Ok(item) => items.push(item),
                    Err(Recover) => self.recover(),
                },
            }
        }
    }

    fn item(&mut self) -> PResult<Item> {
        if *self.peek() == Tok::Codebase {
            // A Java class path in SmartFrog: meaningless to sd, accepted for compatibility.
            self.bump();
            if !matches!(self.peek(), Tok::Str(_)) {
                return self.expected("a quoted class path after `#codebase`");
            }
            self.bump();
            if !matches!(self.peek(), Tok::Include(_)) {
                return self.expected("`#include` after `#codebase`");
            }
        }
        if let Tok::Include(optional) = *self.peek() {
            let start = self.bump().span;
            let Tok::Str(name) = self.peek().clone() else {
                return self.expected("a quoted file name after `#include`");
            };
            self.bump();
            self.eat_sym(Sym::Semi);
            return Ok(Item::Include(Include {
                name,
                optional,
                span: start.to(self.prev_span()),
            }));
        }
        if self.at_sym(Sym::LBracket) {
            let span = self.span();
            self.errors.push(
                Error::Unsupported(
                    "attribute tags (`[sfFinal] name value;`) are not supported by sd".into(),
                )
                .at(span),
            );
            return Err(Recover);
        }
        let name_span = self.span();
        let name = self.attr_name()?;
        let name_span = name_span.to(self.prev_span());
        let value = if self.at_word("extends") {
            let start = self.bump().span;
            self.component(start, ComponentRole::Plain)?
        } else if self.at_word("APPLY")
            || (self.at_word("ASSERT") && *self.peek_at(1) == Tok::Sym(Sym::LBrace))
        {
            let role = if self.at_word("APPLY") {
                ComponentRole::Plain
            } else {
                ComponentRole::Assert
            };
            let start = self.bump().span;
            self.component(start, role)?
        } else if self.at_sym(Sym::Semi) {
            // `name ;` is NULL, as in SmartFrog.
            let span = self.bump().span;
            return Ok(Item::Attribute(Attribute {
                name,
                value: Expr {
                    kind: ExprKind::Literal(Literal::Null),
                    span,
                },
                name_span,
            }));
        } else {
            let value = self.expr()?;
            if !self.eat_sym(Sym::Semi) {
                return self.expected("`;` after the attribute value");
            }
            value
        };
        Ok(Item::Attribute(Attribute {
            name,
            value,
            name_span,
        }))
    }

    fn attr_name(&mut self) -> PResult<AttrName> {
        if self.eat_sym(Sym::DashDash) {
            return Ok(AttrName::Anonymous);
        }
        if let Tok::Str(name) = self.peek().clone() {
            self.bump();
            return Ok(AttrName::Path(vec![name]));
        }
        let mut path = vec![self.name("an attribute name")?];
        while self.eat_sym(Sym::Colon) {
            path.push(self.name("an attribute name after `:`")?);
        }
        Ok(AttrName::Path(path))
    }

    fn name(&mut self, what: &str) -> PResult<String> {
        match self.peek() {
            Tok::Word(w) if !RESERVED.contains(&w.as_str()) => {
                let w = w.clone();
                self.bump();
                Ok(w)
            }
            _ => self.expected(what),
        }
    }

    /// After `extends` (or `APPLY` / `ASSERT`): `[LAZY|DATA] T, T ... ({ body } | ;)` where
    /// each `T` is a prototype reference, `NULL` or a `{ body }`.
    fn component(&mut self, start: Span, role: ComponentRole) -> PResult<Expr> {
        crate::with_stack(|| self.component_inner(start, role))
    }

    fn component_inner(&mut self, start: Span, role: ComponentRole) -> PResult<Expr> {
        self.nest()?;
        let lazy = self.eat_word("LAZY") || self.eat_word("DATA");
        let mut types = Vec::new();
        loop {
            if self.eat_sym(Sym::LBrace) {
                let body = self.body(false);
                self.expect_sym(Sym::RBrace)?;
                types.push(TypeItem::Body(body));
                if self.eat_sym(Sym::Comma) {
                    continue;
                }
                self.eat_sym(Sym::Semi);
                break;
            }
            if self.eat_sym(Sym::Semi) {
                break;
            }
            if !self.eat_word("NULL") {
                let proto_start = self.span();
                let reference = self.reference_path()?;
                types.push(TypeItem::Prototype(
                    reference,
                    proto_start.to(self.prev_span()),
                ));
            }
            if self.eat_sym(Sym::Comma) {
                continue;
            }
            if !self.at_sym(Sym::LBrace) && !self.at_sym(Sym::Semi) {
                return self.expected("`{`, `;` or `,` after a prototype");
            }
        }
        self.depth -= 1;
        let component = ComponentExpr { lazy, types, role };
        Ok(Expr {
            kind: ExprKind::Component(Box::new(component)),
            span: start.to(self.prev_span()),
        })
    }

    /// `[OPTIONAL [(default)]] part (: part)*` (after any `LAZY`).
    fn reference_path(&mut self) -> PResult<Reference> {
        let mut reference = Reference::new(Vec::new());
        if self.eat_word("OPTIONAL") {
            reference.optional = true;
            if self.eat_sym(Sym::LParen) {
                reference.default = Some(Box::new(self.primitive()?));
                self.expect_sym(Sym::RParen)?;
            }
        }
        reference.parts.push(self.ref_part(true)?);
        while self.at_sym(Sym::Colon) {
            if matches!(reference.parts.last(), Some(RefPart::Property(..))) {
                return self.expected("nothing after a PROPERTY part (it ends the reference)");
            }
            self.bump();
            reference.parts.push(self.ref_part(false)?);
        }
        Ok(reference)
    }

    /// A constant: the default of `OPTIONAL (default)`.
    fn primitive(&mut self) -> PResult<Value> {
        let expr = self.expr()?;
        match constant(&expr) {
            Some(value) => Ok(value),
            None => {
                self.errors.push(
                    Error::Syntax {
                        expected: "a constant (literal or vector of literals) as OPTIONAL default"
                            .into(),
                        found: "an expression".into(),
                    }
                    .at(expr.span),
                );
                Err(Recover)
            }
        }
    }

    fn ref_part(&mut self, first: bool) -> PResult<RefPart> {
        // A quoted name is a name, whatever its characters (`ATTRIB "my name"`, `a:"b c"`).
        if let Tok::Str(name) = self.peek().clone() {
            self.bump();
            return Ok(if first {
                RefPart::Attrib {
                    name,
                    keyword: false,
                }
            } else {
                RefPart::Here(name)
            });
        }
        let word = match self.peek() {
            Tok::Word(w) => w.clone(),
            _ => {
                return self.expected("a reference (a name, ATTRIB, HERE, PARENT, ROOT, THIS ...)");
            }
        };
        self.bump();
        Ok(match word.as_str() {
            "ATTRIB" => RefPart::Attrib {
                name: self.ref_name("a name after ATTRIB")?,
                keyword: true,
            },
            "HERE" => RefPart::Here(self.ref_name("a name after HERE")?),
            "PARENT" => RefPart::Parent,
            "ROOT" => RefPart::Root,
            "THIS" => RefPart::This,
            "PROCESS" => RefPart::Process,
            "HOST" => RefPart::Host(self.ref_name("a host name after HOST")?),
            "PROPERTY" => {
                RefPart::Property(PropertyKind::Property, self.ref_name("a property name")?)
            }
            "IPROPERTY" => {
                RefPart::Property(PropertyKind::IProperty, self.ref_name("a property name")?)
            }
            "ENVPROPERTY" => {
                RefPart::Property(PropertyKind::EnvProperty, self.ref_name("a variable name")?)
            }
            "IENVPROPERTY" => RefPart::Property(
                PropertyKind::IEnvProperty,
                self.ref_name("a variable name")?,
            ),
            w if RESERVED.contains(&w) => {
                self.pos -= 1;
                return self.expected("a reference");
            }
            _ if first => RefPart::Attrib {
                name: word,
                keyword: false,
            },
            _ => RefPart::Here(word),
        })
    }

    /// A name inside a reference: a word or a quoted string.
    fn ref_name(&mut self, what: &str) -> PResult<String> {
        if let Tok::Str(name) = self.peek().clone() {
            self.bump();
            return Ok(name);
        }
        self.name(what)
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.nest()?;
        let expr = crate::with_stack(|| self.implies());
        self.depth -= 1;
        expr
    }

    fn binary(op: BinaryOp, lhs: Expr, rhs: Expr) -> Expr {
        let span = lhs.span.to(rhs.span);
        Expr {
            kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
            span,
        }
    }

    fn implies(&mut self) -> PResult<Expr> {
        let lhs = self.or()?;
        if self.eat_sym(Sym::Arrow) {
            let rhs = self.expr()?;
            return Ok(Self::binary(BinaryOp::Implies, lhs, rhs));
        }
        Ok(lhs)
    }

    /// One left-associative precedence level.
    fn level(
        &mut self,
        ops: &[(Sym, BinaryOp)],
        next: fn(&mut Self) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let mut lhs = next(self)?;
        loop {
            let Some(&(_, op)) = ops.iter().find(|(sym, _)| self.at_sym(*sym)) else {
                return Ok(lhs);
            };
            self.bump();
            let rhs = next(self)?;
            lhs = Self::binary(op, lhs, rhs);
        }
    }

    fn or(&mut self) -> PResult<Expr> {
        self.level(&[(Sym::OrOr, BinaryOp::Or)], Self::and)
    }

    fn and(&mut self) -> PResult<Expr> {
        self.level(&[(Sym::AndAnd, BinaryOp::And)], Self::equality)
    }

    fn equality(&mut self) -> PResult<Expr> {
        self.level(
            &[(Sym::EqEq, BinaryOp::Eq), (Sym::NotEq, BinaryOp::Ne)],
            Self::relation,
        )
    }

    fn relation(&mut self) -> PResult<Expr> {
        let ops = [
            (Sym::Le, BinaryOp::Le),
            (Sym::Ge, BinaryOp::Ge),
            (Sym::Lt, BinaryOp::Lt),
            (Sym::Gt, BinaryOp::Gt),
        ];
        self.level(&ops, Self::additive)
    }

    fn additive(&mut self) -> PResult<Expr> {
        let ops = [
            (Sym::Plus, BinaryOp::Add),
            (Sym::Minus, BinaryOp::Sub),
            (Sym::PlusPlus, BinaryOp::Concat),
            (Sym::Diamond, BinaryOp::Append),
        ];
        self.level(&ops, Self::multiplicative)
    }

    fn multiplicative(&mut self) -> PResult<Expr> {
        let ops = [
            (Sym::Star, BinaryOp::Mul),
            (Sym::Slash, BinaryOp::Div),
            (Sym::Percent, BinaryOp::Mod),
        ];
        self.level(&ops, Self::unary)
    }

    fn unary(&mut self) -> PResult<Expr> {
        let start = self.span();
        // `-5` is one literal in SmartFrog: read it as such, so `-2147483648` is an int.
        if self.at_sym(Sym::Minus) {
            let magnitude = match *self.peek_at(1) {
                Tok::Int(n) => Some((n, false)),
                Tok::Long(n) => Some((n, true)),
                _ => None,
            };
            if let Some((n, long)) = magnitude {
                self.bump();
                let span = start.to(self.bump().span);
                let negative = -i128::from(n);
                let literal = match (long, i32::try_from(negative), i64::try_from(negative)) {
                    (false, Ok(n), _) => Literal::Int(n),
                    (_, _, Ok(n)) => Literal::Long(n),
                    _ => return self.number_range(span),
                };
                return Ok(Expr {
                    kind: ExprKind::Literal(literal),
                    span,
                });
            }
        }
        let op = match self.peek() {
            Tok::Sym(Sym::Bang) => UnaryOp::Not,
            Tok::Sym(Sym::Minus) => UnaryOp::Neg,
            // `--x` in a value is two minus signs.
            Tok::Sym(Sym::DashDash) => {
                self.bump();
                self.nest()?;
                let inner = self.unary()?;
                self.depth -= 1;
                let span = start.to(inner.span);
                let once = Expr {
                    kind: negate(inner),
                    span,
                };
                return Ok(Expr {
                    kind: negate(once),
                    span,
                });
            }
            _ => return self.primary(),
        };
        self.bump();
        self.nest()?;
        let operand = self.unary()?;
        self.depth -= 1;
        let span = start.to(operand.span);
        let kind = match op {
            UnaryOp::Neg => negate(operand),
            UnaryOp::Not => ExprKind::Unary(UnaryOp::Not, Box::new(operand)),
        };
        Ok(Expr { kind, span })
    }

    fn primary(&mut self) -> PResult<Expr> {
        let start = self.span();
        let literal = |kind| {
            Ok(Expr {
                kind: ExprKind::Literal(kind),
                span: start,
            })
        };
        match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                literal(Literal::Str(s))
            }
            Tok::Int(n) => {
                self.bump();
                // Too big for an int: a long (so that `-2147483648` and large values read).
                match i32::try_from(n) {
                    Ok(n) => literal(Literal::Int(n)),
                    Err(_) => match i64::try_from(n) {
                        Ok(n) => literal(Literal::Long(n)),
                        Err(_) => self.number_range(start),
                    },
                }
            }
            Tok::Long(n) => {
                self.bump();
                match i64::try_from(n) {
                    Ok(n) => literal(Literal::Long(n)),
                    Err(_) => self.number_range(start),
                }
            }
            Tok::Float(x) => {
                self.bump();
                literal(Literal::Float(x))
            }
            Tok::Double(x) => {
                self.bump();
                literal(Literal::Double(x))
            }
            Tok::Sym(Sym::LParen) => {
                self.bump();
                let inner = self.expr()?;
                self.expect_sym(Sym::RParen)?;
                Ok(Expr {
                    kind: inner.kind,
                    span: start.to(self.prev_span()),
                })
            }
            Tok::Sym(Sym::VecOpen) => self.vector(start, Sym::VecClose),
            Tok::Sym(Sym::LBracket) => self.vector(start, Sym::RBracket),
            Tok::Word(w) => self.word_value(&w, start),
            _ => self.expected("a value"),
        }
    }

    fn number_range<T>(&mut self, span: Span) -> PResult<T> {
        self.errors
            .push(Error::Lexical("integer out of range for a long".into()).at(span));
        Err(Recover)
    }

    /// `[| a, b |]` or `[ a, b ]` (SmartFrog keeps references out of the first form; sd
    /// accepts any value in both).
    fn vector(&mut self, start: Span, close: Sym) -> PResult<Expr> {
        self.bump();
        self.nest()?;
        let mut elements = Vec::new();
        if !self.at_sym(close) {
            loop {
                elements.push(self.expr()?);
                if !self.eat_sym(Sym::Comma) {
                    break;
                }
            }
        }
        if !self.eat_sym(close) {
            return self.expected(&format!("`,` or `{}` in a vector", close.text()));
        }
        self.depth -= 1;
        Ok(Expr {
            kind: ExprKind::Vector(elements),
            span: start.to(self.prev_span()),
        })
    }

    fn word_value(&mut self, word: &str, start: Span) -> PResult<Expr> {
        let kind = match word {
            "true" | "false" | "NULL" | "TBD" => {
                self.bump();
                match word {
                    "true" => ExprKind::Literal(Literal::Bool(true)),
                    "false" => ExprKind::Literal(Literal::Bool(false)),
                    "NULL" => ExprKind::Literal(Literal::Null),
                    _ => ExprKind::Tbd,
                }
            }
            "IF" => {
                self.bump();
                let condition = self.expr()?;
                if !self.eat_word("THEN") {
                    return self.expected("`THEN`");
                }
                let then = self.expr()?;
                if !self.eat_word("ELSE") {
                    return self.expected("`ELSE`");
                }
                let otherwise = self.expr()?;
                if !self.eat_word("FI") {
                    return self.expected("`FI`");
                }
                ExprKind::If(Box::new(condition), Box::new(then), Box::new(otherwise))
            }
            "ASSERT" => {
                self.bump();
                let condition = self.expr()?;
                ExprKind::Assert(Box::new(condition))
            }
            "extends" => {
                return self.expected("a value (a component is written `name extends ...`, without a value before it)");
            }
            _ => {
                let lazy = self.eat_word("LAZY") || self.eat_word("DATA");
                let reference = self.reference_path()?;
                ExprKind::Reference { lazy, reference }
            }
        };
        Ok(Expr {
            kind,
            span: start.to(self.prev_span()),
        })
    }
}

/// Reads `text` as one constant (`5`, `"a"`, `true`, `[| 1, 2 |]` ...), as IENVPROPERTY does.
pub fn parse_constant(text: &str) -> Option<Value> {
    let (body, errors) = parse(FileId(0), &format!("v {text};"));
    match (errors.is_empty(), body.as_slice()) {
        (true, [Item::Attribute(attribute)]) => constant(&attribute.value),
        _ => None,
    }
}

/// The value of a constant expression (literals and vectors of them).
fn constant(expr: &Expr) -> Option<Value> {
    Some(match &expr.kind {
        ExprKind::Literal(literal) => match literal {
            Literal::Null => Value::Null,
            Literal::Bool(b) => Value::Bool(*b),
            Literal::Int(n) => Value::Int(*n),
            Literal::Long(n) => Value::Long(*n),
            Literal::Float(x) => Value::Float(*x),
            Literal::Double(x) => Value::Double(*x),
            Literal::Str(s) => Value::Str(s.clone()),
        },
        ExprKind::Vector(items) => {
            Value::Vector(items.iter().map(constant).collect::<Option<_>>()?)
        }
        _ => return None,
    })
}

/// `-x`, folding literals so `-5` reads back as the number it prints as.
fn negate(operand: Expr) -> ExprKind {
    match operand.kind {
        ExprKind::Literal(Literal::Int(n)) if n != i32::MIN => ExprKind::Literal(Literal::Int(-n)),
        ExprKind::Literal(Literal::Long(n)) if n != i64::MIN => {
            ExprKind::Literal(Literal::Long(-n))
        }
        ExprKind::Literal(Literal::Float(x)) => ExprKind::Literal(Literal::Float(-x)),
        ExprKind::Literal(Literal::Double(x)) => ExprKind::Literal(Literal::Double(-x)),
        _ => ExprKind::Unary(UnaryOp::Neg, Box::new(operand)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Body {
        let (body, errors) = parse(FileId(0), text);
        assert!(errors.is_empty(), "{errors:?}");
        body
    }

    fn attr(body: &Body, i: usize) -> &Attribute {
        match &body[i] {
            Item::Attribute(a) => a,
            Item::Include(_) => panic!("not an attribute"),
        }
    }

    #[test]
    fn components_references_and_operators() {
        let body = ok(
            "#include \"x.sf\"\nsfConfig extends Compound, B { a 1 + 2 * 3; b LAZY ATTRIB loop; -- \"x\"; c:d 4; e; }",
        );
        assert!(matches!(&body[0], Item::Include(i) if i.name == "x.sf"));
        let ExprKind::Component(c) = &attr(&body, 1).value.kind else {
            panic!()
        };
        assert_eq!(c.types.len(), 3);
        let TypeItem::Body(inner) = &c.types[2] else {
            panic!()
        };
        let ExprKind::Binary(BinaryOp::Add, _, rhs) = &attr(inner, 0).value.kind else {
            panic!()
        };
        assert!(matches!(rhs.kind, ExprKind::Binary(BinaryOp::Mul, _, _)));
        assert!(matches!(
            &attr(inner, 1).value.kind,
            ExprKind::Reference { lazy: true, .. }
        ));
        assert_eq!(attr(inner, 2).name, AttrName::Anonymous);
        assert_eq!(
            attr(inner, 3).name,
            AttrName::Path(vec!["c".into(), "d".into()])
        );
        assert_eq!(attr(inner, 4).value.kind, ExprKind::Literal(Literal::Null));
    }

    #[test]
    fn extends_lists_optional_and_properties() {
        let body = ok(
            "a extends NULL; b extends B, { y 2; }, C; c extends DATA { }; d OPTIONAL (5) PROPERTY x.y; e LAZY ENVPROPERTY HOME; f APPLY { sfFunctionClass \"x\"; } g ASSERT (1 < 2);",
        );
        let ExprKind::Component(a) = &attr(&body, 0).value.kind else {
            panic!()
        };
        assert!(a.types.is_empty());
        let ExprKind::Component(b) = &attr(&body, 1).value.kind else {
            panic!()
        };
        assert_eq!(b.types.len(), 3);
        let ExprKind::Component(c) = &attr(&body, 2).value.kind else {
            panic!()
        };
        assert!(c.lazy);
        let ExprKind::Reference { reference, .. } = &attr(&body, 3).value.kind else {
            panic!()
        };
        assert!(reference.optional);
        assert_eq!(reference.default.as_deref(), Some(&Value::Int(5)));
        assert_eq!(reference.to_string(), "OPTIONAL (5) PROPERTY x.y");
        assert!(matches!(
            &attr(&body, 4).value.kind,
            ExprKind::Reference { lazy: true, .. }
        ));
        assert!(matches!(&attr(&body, 5).value.kind, ExprKind::Component(_)));
        assert!(matches!(&attr(&body, 6).value.kind, ExprKind::Assert(_)));
    }

    #[test]
    fn negative_literals_fold() {
        let body = ok("a -5; b -2147483648; c -9223372036854775808L; d --3;");
        assert_eq!(
            attr(&body, 0).value.kind,
            ExprKind::Literal(Literal::Int(-5))
        );
        assert_eq!(
            attr(&body, 1).value.kind,
            ExprKind::Literal(Literal::Int(i32::MIN))
        );
        assert_eq!(
            attr(&body, 2).value.kind,
            ExprKind::Literal(Literal::Long(i64::MIN))
        );
        assert_eq!(
            attr(&body, 3).value.kind,
            ExprKind::Literal(Literal::Int(3))
        );
    }

    #[test]
    fn reports_several_errors_and_recovers() {
        let (body, errors) = parse(
            FileId(0),
            "a 1;\nb extends { c ] ; }\nd 4 5;\ne 5;\nf extends X {\n",
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(body.iter().any(
            |i| matches!(i, Item::Attribute(a) if a.name == AttrName::Path(vec!["e".into()]))
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("a {}1{};", "[|".repeat(10_000), "|]".repeat(10_000));
        let (_, errors) = parse(FileId(0), &text);
        assert!(errors.iter().any(|e| e.error.class() == "limit"));
    }
}
