//! Just enough of Rust's lexical grammar to match braces and read paths: comments (nested
//! block comments included), string, byte and C string literals with escapes, raw strings
//! with any number of `#`, raw identifiers, char and byte literals told apart from
//! lifetimes. Everything else is an identifier, a number, `::` or one punctuation char.

/// What a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An identifier or keyword (a raw identifier without its `r#`).
    Ident,
    /// A lifetime or loop label, with its `'`.
    Lifetime,
    /// A string literal (its text is the content, escapes left as written), a char, byte
    /// or number literal.
    Literal,
    /// `::`.
    PathSep,
    /// Any other single character.
    Punct(char),
}

/// One token and the line (from 1) it starts on.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    pub(crate) text: String,
    pub(crate) line: usize,
}

impl Token {
    /// Whether this is the identifier or keyword `word`.
    pub(crate) fn is_ident(&self, word: &str) -> bool {
        self.kind == Kind::Ident && self.text == word
    }

    /// Whether this is the punctuation character `c`.
    pub(crate) fn is_punct(&self, c: char) -> bool {
        self.kind == Kind::Punct(c)
    }
}

/// The tokens of `source`, comments dropped. An unterminated literal or comment runs to
/// the end of the file.
pub(crate) fn lex(source: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: source.chars().collect(),
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    while let Some(c) = lexer.peek(0) {
        lexer.next_token(c);
    }
    lexer.out
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    out: Vec<Token>,
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn push(&mut self, kind: Kind, text: String, line: usize) {
        self.out.push(Token { kind, text, line });
    }

    fn next_token(&mut self, c: char) {
        let line = self.line;
        match c {
            c if c.is_whitespace() => {
                self.bump();
            }
            '/' if self.peek(1) == Some('/') => {
                while self.peek(0).is_some_and(|c| c != '\n') {
                    self.bump();
                }
            }
            '/' if self.peek(1) == Some('*') => self.block_comment(),
            '"' => {
                self.bump();
                let text = self.quoted();
                self.push(Kind::Literal, text, line);
            }
            '\'' => self.quote_or_lifetime(line),
            ':' if self.peek(1) == Some(':') => {
                self.pos += 2;
                self.push(Kind::PathSep, "::".into(), line);
            }
            c if c.is_ascii_digit() => {
                let text = self.take_while(is_ident_char);
                self.push(Kind::Literal, text, line);
            }
            c if is_ident_char(c) => self.word(line),
            c => {
                self.bump();
                self.push(Kind::Punct(c), c.into(), line);
            }
        }
    }

    fn take_while(&mut self, keep: fn(char) -> bool) -> String {
        let mut text = String::new();
        while let Some(c) = self.peek(0).filter(|&c| keep(c)) {
            text.push(c);
            self.bump();
        }
        text
    }

    fn block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1;
        while depth > 0 {
            match (self.bump(), self.peek(0)) {
                (None, _) => return,
                (Some('/'), Some('*')) => {
                    self.bump();
                    depth += 1;
                }
                (Some('*'), Some('/')) => {
                    self.bump();
                    depth -= 1;
                }
                _ => {}
            }
        }
    }

    /// The rest of a `"`-quoted literal, after its opening quote.
    fn quoted(&mut self) -> String {
        let mut text = String::new();
        while let Some(c) = self.bump() {
            match c {
                '"' => break,
                '\\' => {
                    text.push(c);
                    text.extend(self.bump());
                }
                c => text.push(c),
            }
        }
        text
    }

    /// After `'`: a char literal (`'a'`, `'\n'`, `'{'`) or a lifetime (`'a`, `'static`).
    fn quote_or_lifetime(&mut self, line: usize) {
        if self.peek(1) == Some('\\') || self.peek(2) == Some('\'') {
            self.char_literal(line);
        } else {
            self.bump();
            let text = format!("'{}", self.take_while(is_ident_char));
            self.push(Kind::Lifetime, text, line);
        }
    }

    fn char_literal(&mut self, line: usize) {
        self.bump();
        let mut text = String::new();
        while let Some(c) = self.bump() {
            match c {
                '\'' => break,
                '\\' => text.extend(self.bump()),
                c => text.push(c),
            }
        }
        self.push(Kind::Literal, text, line);
    }

    /// An identifier, or the prefix of a byte, C or raw string, a byte char or a raw
    /// identifier.
    fn word(&mut self, line: usize) {
        let word = self.take_while(is_ident_char);
        let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
        match self.peek(0) {
            Some('"') if raw_prefix => self.raw_string(0, line),
            Some('#') if raw_prefix => {
                let hashes = (0..).take_while(|&k| self.peek(k) == Some('#')).count();
                if self.peek(hashes) == Some('"') {
                    self.raw_string(hashes, line);
                } else if word == "r" && hashes == 1 {
                    self.bump();
                    let text = self.take_while(is_ident_char);
                    self.push(Kind::Ident, text, line);
                } else {
                    self.push(Kind::Ident, word, line);
                }
            }
            Some('"') if word == "b" || word == "c" => {
                self.bump();
                let text = self.quoted();
                self.push(Kind::Literal, text, line);
            }
            Some('\'') if word == "b" => self.char_literal(line),
            _ => self.push(Kind::Ident, word, line),
        }
    }

    /// A raw string after its prefix: `hashes` times `#`, `"`, the content, `"`, and the
    /// same number of `#`.
    fn raw_string(&mut self, hashes: usize, line: usize) {
        self.pos += hashes + 1;
        let mut text = String::new();
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|k| self.peek(k) == Some('#')) {
                self.pos += hashes;
                break;
            }
            text.push(c);
        }
        self.push(Kind::Literal, text, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<(Kind, String)> {
        lex(source).into_iter().map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn braces_in_comments_strings_and_chars_are_not_tokens() {
        let source = r###"
            // { line comment
            /* { block /* nested { */ still comment } */
            let a = "{ \" }";
            let b = r#"{ "quoted" }"#;
            let c = br##"}"#"##;
            let d = '{';
            let e = b'}';
            let f = '\'';
            let g = c"}";
        "###;
        let braces = lex(source)
            .iter()
            .filter(|t| t.is_punct('{') || t.is_punct('}'))
            .count();
        assert_eq!(braces, 0);
    }

    #[test]
    fn lifetimes_raw_identifiers_and_lines() {
        let tokens = lex("fn f<'a>(x: &'a str) {\n    r#type::g('x')\n}");
        assert!(
            tokens
                .iter()
                .any(|t| t.kind == Kind::Lifetime && t.text == "'a")
        );
        let ty = tokens
            .iter()
            .find(|t| t.is_ident("type"))
            .expect("raw ident");
        assert_eq!(ty.line, 2);
        assert_eq!(tokens.last().map(|t| t.line), Some(3));
        assert_eq!(
            kinds("a::b")[1],
            (Kind::PathSep, "::".to_string()),
            "`::` is one token"
        );
    }

    #[test]
    fn escapes_do_not_end_a_string() {
        let tokens = lex(r#"x("a\"b\\", '\\', y)"#);
        let idents: Vec<_> = tokens
            .iter()
            .filter(|t| t.kind == Kind::Ident)
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(idents, ["x", "y"]);
    }
}
