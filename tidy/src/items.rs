//! Items found in a file's tokens: test code to drop, `mod` declarations, functions and
//! their length.

use crate::lexer::{Kind, Token};

/// The index of the bracket that closes the one at `open` (`(`, `[` or `{`), counting
/// only brackets of the same kind; the last index if it is never closed.
pub(crate) fn closing(tokens: &[Token], open: usize) -> usize {
    let (o, c) = match tokens[open].kind {
        Kind::Punct('(') => ('(', ')'),
        Kind::Punct('[') => ('[', ']'),
        _ => ('{', '}'),
    };
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        if t.is_punct(o) {
            depth += 1;
        } else if t.is_punct(c) {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    tokens.len() - 1
}

/// Whether an attribute's tokens (between `#[` and `]`) mark test code: `test`,
/// `something::test` (`tokio::test`), `cfg(test)` or `cfg(all(test, ...))`.
fn is_test_attribute(attr: &[Token]) -> bool {
    let words: Vec<&str> = attr
        .iter()
        .filter(|t| t.kind != Kind::PathSep)
        .map(|t| t.text.as_str())
        .collect();
    let path_len = words.iter().position(|w| *w == "(").unwrap_or(words.len());
    matches!(
        (&words[..path_len], &words[path_len..]),
        (["test"] | [_, "test"], _)
            | (["cfg"], ["(", "test", ")"])
            | (["cfg"], ["(", "all", "(", "test", ..])
    )
}

/// The index just past the item that starts at `start`: past its `;`, or past the `}`
/// of its first top-level brace block.
fn item_end(tokens: &[Token], start: usize) -> usize {
    let mut i = start;
    while i < tokens.len() {
        let t = &tokens[i];
        if t.is_punct('(') || t.is_punct('[') {
            i = closing(tokens, i);
        } else if t.is_punct(';') {
            return i + 1;
        } else if t.is_punct('{') {
            return closing(tokens, i) + 1;
        }
        i += 1;
    }
    tokens.len()
}

/// `tokens` without test code: every item (a module, function, `use`, impl...) under a
/// test attribute, with its attributes.
pub(crate) fn strip_tests(tokens: Vec<Token>) -> Vec<Token> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let attribute =
            tokens[i].is_punct('#') && tokens.get(i + 1).is_some_and(|t| t.is_punct('['));
        if !attribute {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        let close = closing(&tokens, i + 1);
        if is_test_attribute(&tokens[i + 2..close]) {
            i = item_end(&tokens, close + 1);
        } else {
            out.extend_from_slice(&tokens[i..=close]);
            i = close + 1;
        }
    }
    out
}

/// A `mod name;` declaration (a module in a file of its own).
#[derive(Debug)]
pub(crate) struct ModDecl {
    pub(crate) name: String,
    /// The `#[path = "..."]` attribute's value, if any.
    pub(crate) path: Option<String>,
}

/// The `#[path = "..."]` among the attributes that end just before `end` (skipping a
/// visibility such as `pub(crate)`).
fn path_attribute(tokens: &[Token], end: usize) -> Option<String> {
    let mut i = end;
    loop {
        let t = tokens.get(i.checked_sub(1)?)?;
        if t.is_ident("pub") {
            i -= 1;
        } else if t.is_punct(')') && tokens.get(i.checked_sub(4)?)?.is_ident("pub") {
            i -= 3;
        } else if t.is_punct(']') {
            let open = (0..i - 1).rev().find(|&k| tokens[k].is_punct('['))?;
            let attr = &tokens[open + 1..i - 1];
            if let [name, eq, value] = attr
                && name.is_ident("path")
                && eq.is_punct('=')
            {
                return Some(value.text.clone());
            }
            i = open.checked_sub(1)?;
        } else {
            return None;
        }
    }
}

/// The `mod name;` declarations in `tokens` (inline `mod name { ... }` modules are part of
/// their file, see [`inline_modules`]).
pub(crate) fn mod_decls(tokens: &[Token]) -> Vec<ModDecl> {
    let mut decls = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if let (true, Some(name), Some(semi)) =
            (t.is_ident("mod"), tokens.get(i + 1), tokens.get(i + 2))
            && name.kind == Kind::Ident
            && semi.is_punct(';')
        {
            decls.push(ModDecl {
                name: name.text.clone(),
                path: path_attribute(tokens, i),
            });
        }
    }
    decls
}

/// For each token, how many inline `mod name { ... }` blocks it is inside of.
pub(crate) fn inline_modules(tokens: &[Token]) -> Vec<usize> {
    let mut depth = vec![0; tokens.len()];
    for (i, t) in tokens.iter().enumerate() {
        let opens = t.is_ident("mod")
            && tokens.get(i + 1).is_some_and(|n| n.kind == Kind::Ident)
            && tokens.get(i + 2).is_some_and(|b| b.is_punct('{'));
        if opens {
            let close = closing(tokens, i + 2);
            for d in &mut depth[i + 2..=close] {
                *d += 1;
            }
        }
    }
    depth
}

/// A function with a body.
#[derive(Debug)]
pub(crate) struct Function {
    pub(crate) name: String,
    /// The line of its `fn`.
    pub(crate) line: usize,
    /// Lines from its `fn` to its closing brace, both included.
    pub(crate) lines: usize,
}

/// Every function with a body in `tokens`, nested ones included (a function's length
/// includes the functions inside it).
pub(crate) fn functions(tokens: &[Token]) -> Vec<Function> {
    let mut found = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let Some(name) = tokens
            .get(i + 1)
            .filter(|n| t.is_ident("fn") && n.kind == Kind::Ident)
        else {
            continue;
        };
        // The body is the first brace block before any `;` outside the signature's
        // parentheses and brackets; a `;` first means a declaration without a body.
        let mut j = i + 2;
        while j < tokens.len() && !tokens[j].is_punct('{') && !tokens[j].is_punct(';') {
            if tokens[j].is_punct('(') || tokens[j].is_punct('[') {
                j = closing(tokens, j);
            }
            j += 1;
        }
        if tokens.get(j).is_some_and(|b| b.is_punct('{')) {
            let close = closing(tokens, j);
            found.push(Function {
                name: name.text.clone(),
                line: t.line,
                lines: tokens[close].line - t.line + 1,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::lex;

    #[test]
    fn test_items_are_dropped_with_their_bodies() {
        let source = "
            fn kept() { let s = \"}\"; }
            #[cfg(test)]
            mod tests { fn gone() { '}'; } }
            #[test]
            fn gone_too() {}
            #[tokio::test(flavor = \"multi_thread\")]
            async fn gone_three() {}
            #[cfg(test)]
            use std::fmt;
            #[cfg(all(test, unix))]
            const X: [u8; 2] = [0; 2];
            fn kept_too() {}
        ";
        let names: Vec<_> = functions(&strip_tests(lex(source)))
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["kept", "kept_too"]);
        assert!(
            !strip_tests(lex(source))
                .iter()
                .any(|t| t.is_ident("fmt") || t.is_ident("X"))
        );
    }

    #[test]
    fn function_length_runs_from_fn_to_its_closing_brace() {
        let source = "trait T { fn decl(&self); }\n\
                      pub fn f<const N: usize>(a: [u8; N]) -> Result<(), ()>\n\
                      where\n    (): Sized,\n{\n    // }\n    Ok(())\n}\n";
        let fns = functions(&lex(source));
        assert_eq!(fns.len(), 1, "{fns:?}");
        assert_eq!(
            (fns[0].name.as_str(), fns[0].line, fns[0].lines),
            ("f", 2, 7)
        );
    }

    #[test]
    fn mod_declarations_and_their_path_attributes() {
        let source = "
            mod a;
            #[path = \"../x/b.rs\"]
            pub(crate) mod b;
            #[cfg(test)]
            mod tests;
            mod inline { fn f() {} }
        ";
        let decls = mod_decls(&strip_tests(lex(source)));
        let got: Vec<_> = decls
            .iter()
            .map(|d| (d.name.as_str(), d.path.as_deref()))
            .collect();
        assert_eq!(got, [("a", None), ("b", Some("../x/b.rs"))]);
    }
}
