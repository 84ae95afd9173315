//! The module graph of a crate and its cycles.
//!
//! A module *names* another when its code (tests left out) holds a path that reaches it:
//! `crate::a::b::Item`, `super::b`, `self::c`, a child's name (`c::Item`), `$crate::...`
//! in a macro, and every branch of a `use` tree (`use super::{a::X, b}`). The named module
//! is the deepest module the path walks through; names reached through a re-export count
//! as the re-exporting module.
//!
//! Edges join siblings. When module `A` names module `B` and neither contains the other,
//! the edge goes from the child of their nearest common ancestor that holds `A` to the
//! child that holds `B`: `api::vaults` naming `peer::SharedVault` is the edge `api ->
//! peer`. A module naming its own descendants, or its ancestors' items (`super::Item`,
//! `crate::Item`), makes no edge: a parent and its children are one unit to the outside,
//! and a cycle is judged between siblings only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::items::inline_modules;
use crate::lexer::{Kind, Token};
use crate::tree::Crate;

/// Where a module first names another: the file's path and the line.
pub(crate) type Site = (String, usize);

/// The sibling edges of `krate`, each with the first place in the source that makes it.
pub(crate) fn edges(krate: &Crate) -> BTreeMap<(usize, usize), Site> {
    let mut edges = BTreeMap::new();
    for (module, m) in krate.modules.iter().enumerate() {
        for (target, line) in named_modules(krate, module) {
            if let Some(edge) = sibling_edge(krate, module, target) {
                edges
                    .entry(edge)
                    .or_insert_with(|| (m.file.display().to_string(), line));
            }
        }
    }
    edges
}

/// The edge that `from` naming `to` makes: between the children of their nearest common
/// ancestor that hold each; none if one holds the other.
fn sibling_edge(krate: &Crate, from: usize, to: usize) -> Option<(usize, usize)> {
    let up_from = krate.ancestors(from);
    let up_to = krate.ancestors(to);
    if up_from.contains(&to) || up_to.contains(&from) {
        return None;
    }
    let common = up_from.iter().find(|a| up_to.contains(a))?;
    let child_of_common = |chain: &[usize]| {
        let at = chain.iter().position(|a| a == common)?;
        chain.get(at.checked_sub(1)?).copied()
    };
    Some((child_of_common(&up_from)?, child_of_common(&up_to)?))
}

/// Every module that `module`'s code names, with the line of each path.
fn named_modules(krate: &Crate, module: usize) -> Vec<(usize, usize)> {
    let tokens = &krate.modules[module].tokens;
    let inline = inline_modules(tokens);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let starts_path = tokens.get(i + 1).is_some_and(|t| t.kind == Kind::PathSep)
            && i.checked_sub(1)
                .is_none_or(|p| tokens[p].kind != Kind::PathSep);
        let start = if !starts_path {
            None
        } else if tokens[i].is_ident("crate") {
            Some(0)
        } else if tokens[i].is_ident("super") && inline[i] > 0 {
            // `super` inside an inline module is the file's module (one level of inline
            // module; deeper nesting is not used in this tree).
            Some(module)
        } else if tokens[i].is_ident("super") {
            krate.modules[module].parent
        } else if tokens[i].is_ident("self") {
            Some(module)
        } else {
            (tokens[i].kind == Kind::Ident)
                .then(|| krate.modules[module].children.get(&tokens[i].text))
                .flatten()
                .copied()
        };
        match start {
            Some(start) => {
                let mut walker = PathWalker {
                    krate,
                    tokens,
                    found: &mut found,
                };
                i = walker.walk(start, i + 1);
            }
            None => i += 1,
        }
    }
    found
}

struct PathWalker<'a> {
    krate: &'a Crate,
    tokens: &'a [Token],
    found: &'a mut Vec<(usize, usize)>,
}

impl PathWalker<'_> {
    /// Walks a path from `at` (just after its first segment, which reached `module`),
    /// through `::`-separated segments and `{...}` groups; records the modules reached and
    /// returns the index after the path.
    fn walk(&mut self, mut module: usize, mut at: usize) -> usize {
        let line = self.tokens[at.saturating_sub(1)].line;
        while self.tokens.get(at).is_some_and(|t| t.kind == Kind::PathSep) {
            let Some(next) = self.tokens.get(at + 1) else {
                break;
            };
            if next.is_punct('{') {
                return self.group(module, at + 1);
            }
            let child = match next.text.as_str() {
                "super" => self.krate.modules[module].parent,
                "self" => Some(module),
                name => self.krate.modules[module].children.get(name).copied(),
            };
            match child {
                Some(child) if next.kind == Kind::Ident => {
                    module = child;
                    at += 2;
                }
                _ => break,
            }
        }
        self.found.push((module, line));
        at
    }

    /// A `{a::X, b, self}` group after `module::`, from its `{` at `open`; returns the
    /// index after its `}`.
    fn group(&mut self, module: usize, open: usize) -> usize {
        let mut at = open + 1;
        while let Some(t) = self.tokens.get(at) {
            if t.is_punct('}') {
                return at + 1;
            }
            if t.is_punct(',') {
                at += 1;
                continue;
            }
            let first = match t.text.as_str() {
                "self" | "*" => Some(module),
                "super" => self.krate.modules[module].parent,
                name => self.krate.modules[module].children.get(name).copied(),
            };
            match first {
                Some(first) => at = self.walk(first, at + 1),
                None => {
                    // An item of `module` (`X`, `X as Y`, `Trait as _`).
                    self.found.push((module, t.line));
                    while self
                        .tokens
                        .get(at)
                        .is_some_and(|t| !t.is_punct(',') && !t.is_punct('}'))
                    {
                        at += 1;
                    }
                }
            }
        }
        at
    }
}

/// The cycles of a graph: each strongly connected component of more than one node, as
/// its nodes, smallest first.
pub(crate) fn components(edges: &BTreeMap<(usize, usize), Site>) -> Vec<Vec<usize>> {
    let mut out: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for &(a, b) in edges.keys() {
        out.entry(a).or_default().insert(b);
    }
    let reach = |from: usize| {
        let mut seen = BTreeSet::from([from]);
        let mut queue = VecDeque::from([from]);
        while let Some(n) = queue.pop_front() {
            for &m in out.get(&n).into_iter().flatten() {
                if seen.insert(m) {
                    queue.push_back(m);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<usize, BTreeSet<usize>> = out.keys().map(|&n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut components = Vec::new();
    for (&n, from_n) in &reachable {
        if done.contains(&n) {
            continue;
        }
        let component: Vec<usize> = from_n
            .iter()
            .copied()
            .filter(|m| reachable.get(m).is_some_and(|r| r.contains(&n)))
            .collect();
        done.extend(component.iter().copied());
        if component.len() > 1 {
            components.push(component);
        }
    }
    components
}

/// One shortest cycle through `start` inside `component`: `start -> ... -> start`.
pub(crate) fn cycle_through(
    edges: &BTreeMap<(usize, usize), Site>,
    component: &[usize],
    start: usize,
) -> Vec<usize> {
    let mut back: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &(a, b) in edges.keys() {
            if a != n || !component.contains(&b) {
                continue;
            }
            if b == start {
                let mut path = vec![start, n];
                while let Some(&prev) = back.get(path.last().unwrap_or(&start)) {
                    path.push(prev);
                }
                path.reverse();
                return path;
            }
            if b != start && !back.contains_key(&b) {
                back.insert(b, n);
                queue.push_back(b);
            }
        }
    }
    vec![start]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a small crate into a fresh directory and returns its root file.
    fn write_crate(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tidy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("a directory");
            std::fs::write(path, text).expect("a file");
        }
        dir.join("lib.rs")
    }

    fn cycles_of(root: &std::path::Path) -> Vec<Vec<String>> {
        let krate = Crate::load("t", root).expect("the crate loads");
        components(&edges(&krate))
            .into_iter()
            .map(|c| c.iter().map(|&m| krate.modules[m].path.clone()).collect())
            .collect()
    }

    #[test]
    fn sibling_cycles_are_found_and_parent_child_use_is_not_one() {
        let root = write_crate(
            "cycles",
            &[
                ("lib.rs", "mod a; mod b; mod c; pub mod d; pub struct Root;"),
                (
                    "a.rs",
                    "use crate::b::X; use crate::Root;\n\
                     #[cfg(test)] mod tests { use crate::c::Z; }",
                ),
                ("b.rs", "pub struct X; fn f() { super::a::g() }"),
                // Paths in strings and comments name nothing.
                (
                    "c.rs",
                    "use crate::{a, d::e::Y}; // crate::b::X\nconst S: &str = \"crate::b::X\";",
                ),
                ("d/mod.rs", "pub mod e; pub struct Thing; use e::Y;"),
                (
                    "d/e.rs",
                    "use super::super::c; use super::Thing; pub struct Y;",
                ),
            ],
        );
        let mut found = cycles_of(&root);
        found.sort();
        assert_eq!(found, [vec!["a", "b"], vec!["c", "d"]]);
        let _ = std::fs::remove_dir_all(root.parent().expect("the crate's directory"));
    }

    #[test]
    fn path_attributes_and_nested_groups_are_followed() {
        let root = write_crate(
            "paths",
            &[
                ("lib.rs", "#[path = \"other/x.rs\"] mod x; mod y;"),
                ("other/x.rs", "use crate::{y::{self, Z}};"),
                ("y.rs", "pub struct Z; fn f() { let _ = crate::x::W; }"),
            ],
        );
        assert_eq!(cycles_of(&root), [vec!["x", "y"]]);
        let _ = std::fs::remove_dir_all(root.parent().expect("the crate's directory"));
    }
}
