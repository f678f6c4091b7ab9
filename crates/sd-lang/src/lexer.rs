//! Tokens of SmartFrog notation. The lexer never fails: bad input becomes an error
//! token-free gap plus a diagnostic, so the parser can go on and report more.

use crate::error::{Diagnostic, Error};
use crate::source::{FileId, Span};

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A word: attribute name or keyword (keywords are recognised by the parser).
    Word(String),
    /// A string literal, escapes already decoded.
    Str(String),
    /// An integer literal without suffix (range checked by the parser).
    Int(u64),
    /// An integer literal with an `L` suffix.
    Long(u64),
    /// A floating literal with an `f` suffix.
    Float(f32),
    /// A floating literal without suffix or with a `d` suffix.
    Double(f64),
    /// `#include "x"` (false) or `#include? "x"` (true).
    Include(bool),
    /// `#codebase "url"`: a Java class path in SmartFrog; accepted and ignored by sd.
    Codebase,
    /// Punctuation and operators.
    Sym(Sym),
    /// End of input.
    Eof,
}

/// Punctuation and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Sym {
    LBrace,
    RBrace,
    LParen,
    RParen,
    VecOpen,
    VecClose,
    LBracket,
    RBracket,
    Semi,
    Comma,
    Colon,
    Plus,
    PlusPlus,
    Minus,
    DashDash,
    Star,
    Slash,
    Percent,
    Diamond,
    EqEq,
    NotEq,
    Lt,
    Gt,
    Le,
    Ge,
    AndAnd,
    OrOr,
    Bang,
    Arrow,
}

impl Sym {
    /// The symbol as written.
    pub fn text(self) -> &'static str {
        match self {
            Sym::LBrace => "{",
            Sym::RBrace => "}",
            Sym::LParen => "(",
            Sym::RParen => ")",
            Sym::VecOpen => "[|",
            Sym::VecClose => "|]",
            Sym::LBracket => "[",
            Sym::RBracket => "]",
            Sym::Semi => ";",
            Sym::Comma => ",",
            Sym::Colon => ":",
            Sym::Plus => "+",
            Sym::PlusPlus => "++",
            Sym::Minus => "-",
            Sym::DashDash => "--",
            Sym::Star => "*",
            Sym::Slash => "/",
            Sym::Percent => "%",
            Sym::Diamond => "<>",
            Sym::EqEq => "==",
            Sym::NotEq => "!=",
            Sym::Lt => "<",
            Sym::Gt => ">",
            Sym::Le => "<=",
            Sym::Ge => ">=",
            Sym::AndAnd => "&&",
            Sym::OrOr => "||",
            Sym::Bang => "!",
            Sym::Arrow => "->",
        }
    }
}

impl Tok {
    /// How the token is named in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(_) => "a string".into(),
            Tok::Int(_) | Tok::Long(_) | Tok::Float(_) | Tok::Double(_) => "a number".into(),
            Tok::Include(false) => "`#include`".into(),
            Tok::Include(true) => "`#include?`".into(),
            Tok::Codebase => "`#codebase`".into(),
            Tok::Sym(s) => format!("`{}`", s.text()),
            Tok::Eof => "end of file".into(),
        }
    }
}

/// A token and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Its place.
    pub span: Span,
}

/// Splits `text` into tokens, ending with [`Tok::Eof`]; problems are pushed to `errors`.
pub fn lex(file: FileId, text: &str, errors: &mut Vec<Diagnostic>) -> Vec<Token> {
    let mut lexer = Lexer {
        file,
        bytes: text.as_bytes(),
        text,
        pos: 0,
        errors,
        tokens: Vec::new(),
    };
    lexer.run();
    let end = Span::new(file, text.len(), text.len());
    lexer.tokens.push(Token {
        tok: Tok::Eof,
        span: end,
    });
    lexer.tokens
}

struct Lexer<'a, 'e> {
    file: FileId,
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    errors: &'e mut Vec<Diagnostic>,
    tokens: Vec<Token>,
}

const SYMBOLS: &[(&str, Sym)] = &[
    ("[|", Sym::VecOpen),
    ("|]", Sym::VecClose),
    ("++", Sym::PlusPlus),
    ("--", Sym::DashDash),
    ("<>", Sym::Diamond),
    ("==", Sym::EqEq),
    ("!=", Sym::NotEq),
    ("<=", Sym::Le),
    (">=", Sym::Ge),
    ("&&", Sym::AndAnd),
    ("||", Sym::OrOr),
    ("->", Sym::Arrow),
    ("[", Sym::LBracket),
    ("]", Sym::RBracket),
    ("{", Sym::LBrace),
    ("}", Sym::RBrace),
    ("(", Sym::LParen),
    (")", Sym::RParen),
    (";", Sym::Semi),
    (",", Sym::Comma),
    (":", Sym::Colon),
    ("+", Sym::Plus),
    ("-", Sym::Minus),
    ("*", Sym::Star),
    ("/", Sym::Slash),
    ("%", Sym::Percent),
    ("<", Sym::Lt),
    (">", Sym::Gt),
    ("!", Sym::Bang),
];

/// Characters that may start a word (SmartFrog's LETTER, widened to Unicode letters).
pub fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

/// Characters that may continue a word: as in SmartFrog, `a-b`, `x.y` and `a+b` are single
/// words, so operators need spaces around them (`(a - b)`).
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
        || matches!(
            c,
            '.' | '_' | '-' | '+' | '@' | '#' | '~' | '$' | '%' | '^' | '&'
        )
}

impl Lexer<'_, '_> {
    fn span(&self, start: usize) -> Span {
        Span::new(self.file, start, self.pos)
    }

    fn push(&mut self, tok: Tok, start: usize) {
        let span = self.span(start);
        self.tokens.push(Token { tok, span });
    }

    fn error(&mut self, message: impl Into<String>, start: usize) {
        let span = Span::new(
            self.file,
            start,
            self.pos.max(start + 1).min(self.bytes.len().max(start)),
        );
        self.errors.push(Error::Lexical(message.into()).at(span));
    }

    fn peek(&self, offset: usize) -> u8 {
        self.bytes.get(self.pos + offset).copied().unwrap_or(0)
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn run(&mut self) {
        while self.pos < self.bytes.len() {
            let start = self.pos;
            let c = self.peek(0);
            match c {
                b' ' | b'\t' | b'\r' | b'\n' | 0x0c => self.pos += 1,
                b'/' if self.peek(1) == b'/' => self.skip_line(),
                b'/' if self.peek(1) == b'*' => self.block_comment(),
                b'"' => self.string(),
                b'#' => self.hash(),
                b'0'..=b'9' => self.number(),
                b'.' if self.peek(1).is_ascii_digit() => self.number(),
                _ => {
                    let Some(ch) = self.rest().chars().next() else {
                        return;
                    };
                    if is_word_start(ch) {
                        self.word();
                    } else if let Some(&(text, sym)) = SYMBOLS
                        .iter()
                        .find(|(text, _)| self.rest().starts_with(text))
                    {
                        self.pos += text.len();
                        self.push(Tok::Sym(sym), start);
                    } else {
                        self.pos += ch.len_utf8();
                        self.error(
                            format!("unexpected character `{}`", ch.escape_default()),
                            start,
                        );
                    }
                }
            }
        }
    }

    fn skip_line(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    fn block_comment(&mut self) {
        let start = self.pos;
        match self.rest()[2..].find("*/") {
            Some(end) => self.pos += 2 + end + 2,
            None => {
                self.pos = start + 2;
                self.error("unterminated comment `/*`", start);
                self.pos = self.bytes.len();
            }
        }
    }

    fn word(&mut self) {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !is_word_char(c))
            .unwrap_or(self.rest().len());
        self.pos += len;
        let word = self.text[start..self.pos].to_string();
        self.push(Tok::Word(word), start);
    }

    /// `#include`, `#include?`, `#codebase` and `##multi-line string#`.
    fn hash(&mut self) {
        let start = self.pos;
        if self.rest().starts_with("##") {
            self.pos += 2;
            let value = self.escaped_until('#', true, start);
            if let Some(value) = value {
                self.push(Tok::Str(value), start);
            }
            return;
        }
        let directives = [
            ("#include?", Tok::Include(true)),
            ("#include", Tok::Include(false)),
            ("#codebase", Tok::Codebase),
        ];
        if let Some((text, tok)) = directives
            .into_iter()
            .find(|(text, _)| self.rest().starts_with(text))
        {
            self.pos += text.len();
            self.push(tok, start);
            return;
        }
        for base in ["#HEX#", "#DEC#", "#OCT#", "#BIN#", "#B64#"] {
            if self.rest().starts_with(base) {
                self.pos += base.len();
                let end = self
                    .rest()
                    .find('#')
                    .map_or(self.bytes.len(), |end| self.pos + end + 1);
                self.pos = end;
                self.error(
                    format!("byte arrays (`{base}...#`) are not supported by sd; use a string"),
                    start,
                );
                return;
            }
        }
        self.pos += 1;
        self.error(
            "`#` starts only `#include`, `#include?`, `#codebase` or a `##multi-line#` string",
            start,
        );
    }

    /// Reads characters up to an unescaped `end`, decoding escapes. `multiline` allows
    /// newlines and the `\#` escape.
    fn escaped_until(&mut self, end: char, multiline: bool, start: usize) -> Option<String> {
        let mut value = String::new();
        loop {
            let Some(c) = self.rest().chars().next() else {
                let what = if multiline {
                    "unterminated multi-line string `##...#`"
                } else {
                    "unterminated string"
                };
                self.error(what, start);
                return None;
            };
            if c == end {
                self.pos += 1;
                return Some(value);
            }
            if c == '\n' && !multiline {
                self.error(
                    "unterminated string (use ##...# for text over several lines)",
                    start,
                );
                return None;
            }
            if c != '\\' {
                value.push(c);
                self.pos += c.len_utf8();
                continue;
            }
            let escape_start = self.pos;
            self.pos += 1;
            let Some(e) = self.rest().chars().next() else {
                continue;
            };
            self.pos += e.len_utf8();
            match e {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                '"' | '\'' | '\\' => value.push(e),
                '#' if multiline => value.push('#'),
                '0'..='7' => {
                    // Java octal escape: up to three digits, at most \377.
                    let mut code = e as u32 - '0' as u32;
                    let max_digits = if e <= '3' { 2 } else { 1 };
                    for _ in 0..max_digits {
                        match self.peek(0) {
                            d @ b'0'..=b'7' => {
                                code = code * 8 + u32::from(d - b'0');
                                self.pos += 1;
                            }
                            _ => break,
                        }
                    }
                    value.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                'u' => match self.unicode_escape() {
                    Some(ch) => value.push(ch),
                    None => self.error("bad unicode escape (expected \\uXXXX)", escape_start),
                },
                other => self.error(
                    format!("unknown escape `\\{}` in string", other.escape_default()),
                    escape_start,
                ),
            }
        }
    }

    fn string(&mut self) {
        let start = self.pos;
        self.pos += 1;
        if let Some(value) = self.escaped_until('"', false, start) {
            self.push(Tok::Str(value), start);
        }
    }

    fn unicode_escape(&mut self) -> Option<char> {
        let hex = self.rest().get(..4)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let code = u32::from_str_radix(hex, 16).ok()?;
        self.pos += 4;
        char::from_u32(code)
    }

    fn number(&mut self) {
        let start = self.pos;
        let digits = |lexer: &mut Self| {
            while lexer.peek(0).is_ascii_digit() {
                lexer.pos += 1;
            }
        };
        let hex = self.peek(0) == b'0' && matches!(self.peek(1), b'x' | b'X');
        if hex {
            self.pos += 2;
            while self.peek(0).is_ascii_hexdigit() {
                self.pos += 1;
            }
        } else {
            digits(self);
        }
        let mut floating = false;
        if !hex && self.peek(0) == b'.' && self.peek(1).is_ascii_digit() {
            floating = true;
            self.pos += 1;
            digits(self);
        }
        if !hex && matches!(self.peek(0), b'e' | b'E') {
            let sign = usize::from(matches!(self.peek(1), b'+' | b'-'));
            if self.peek(1 + sign).is_ascii_digit() {
                floating = true;
                self.pos += 1 + sign;
                digits(self);
            }
        }
        let body = &self.text[start..self.pos];
        let suffix = self.peek(0).to_ascii_lowercase();
        // Letters, digits, `_` or `.` right after a number make it malformed; an operator
        // character (`1+2`) just ends it.
        let glued = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
        let suffix = if matches!(suffix, b'l' | b'f' | b'd') && !glued(self.peek(1)) {
            self.pos += 1;
            suffix
        } else {
            0
        };
        if glued(self.peek(0)) {
            while glued(self.peek(0)) {
                self.pos += 1;
            }
            let text = self.text[start..self.pos].to_string();
            self.error(format!("malformed number `{text}`"), start);
            return;
        }
        let integer = || {
            if hex {
                u64::from_str_radix(&body[2..], 16)
            } else {
                body.parse::<u64>()
            }
        };
        let tok = match (suffix, floating) {
            (b'f', _) => body
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Tok::Float),
            (b'd', _) | (0, true) => body
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Tok::Double),
            (b'l', false) => integer().ok().map(Tok::Long),
            (0, false) => integer().ok().map(Tok::Int),
            _ => None,
        };
        match tok {
            Some(tok) => self.push(tok, start),
            None => {
                let text = self.text[start..self.pos].to_string();
                self.error(
                    format!("number `{text}` is malformed or out of range"),
                    start,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> (Vec<Tok>, Vec<Diagnostic>) {
        let mut errors = Vec::new();
        let tokens = lex(FileId(0), text, &mut errors);
        (tokens.into_iter().map(|t| t.tok).collect(), errors)
    }

    #[test]
    fn words_numbers_strings_and_symbols() {
        let (tokens, errors) =
            toks(r#"a extends B { x 5; y 7L; z 1.5; w 2.5f; s "q\"\n"; v [| 1 |]; } // c"#);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(tokens.contains(&Tok::Long(7)));
        assert!(tokens.contains(&Tok::Double(1.5)));
        assert!(tokens.contains(&Tok::Float(2.5)));
        assert!(tokens.contains(&Tok::Str("q\"\n".into())));
        assert!(tokens.contains(&Tok::Sym(Sym::VecOpen)));
        assert_eq!(tokens.last(), Some(&Tok::Eof));
    }

    #[test]
    fn multiline_strings_and_includes() {
        let (tokens, errors) = toks("#include \"a.sf\"\n#include? \"b\"\nx ##line1\nline\\#2#;");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(tokens[0], Tok::Include(false));
        assert_eq!(tokens[2], Tok::Include(true));
        assert_eq!(tokens[5], Tok::Str("line1\nline#2".into()));
    }

    #[test]
    fn words_take_smartfrog_special_characters() {
        let (tokens, errors) = toks("org.smartfrog.port a-b x+1 -- \"\\101\\7\"");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(tokens[0], Tok::Word("org.smartfrog.port".into()));
        assert_eq!(tokens[1], Tok::Word("a-b".into()));
        assert_eq!(tokens[2], Tok::Word("x+1".into()));
        assert_eq!(tokens[3], Tok::Sym(Sym::DashDash));
        assert_eq!(tokens[4], Tok::Str("A\u{7}".into()));
    }

    #[test]
    fn bad_input_is_reported_not_panicked() {
        for text in [
            "\"abc",
            "/* x",
            "12abc",
            "x @ y",
            "##open",
            "\"\\q\"",
            "\"\\u12\"",
            "99999999999999999999999",
            "#HEX# 0a #",
        ] {
            let (_, errors) = toks(text);
            assert!(!errors.is_empty(), "{text}");
        }
    }
}
