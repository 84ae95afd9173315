//! The merge of a pull, decided without the store: three flattened trees in (the common
//! ancestor's, ours, theirs), the merged tree and the versions kept under conflict names
//! out. [`super::sync`] reads the trees, calls [`merge`], and writes what it returns.
//!
//! The rules, path by path (a path is a secret, or a directory with nothing in it):
//!
//! - changed on one side only: that side's version;
//! - changed the same way on both sides: that version;
//! - changed differently on both sides: ours stays, theirs is kept next to it under a
//!   conflict name ([`Clash::BothChanged`]);
//! - deleted on one side and changed on the other: the change stays;
//! - a secret where the other side has a directory: the secret moves to a conflict name
//!   ([`Clash::FileAndDirectory`]), whichever side it came from.
//!
//! A version's mode (an executable secret, an empty directory) is part of it: a mode
//! changed on one side is a change. Git records no renames: a rename is a delete and an
//! add, so a rename on one side and an edit on the other keep both (the renamed copy, and
//! the edited one at the old path). A conflict name is never one in use: when
//! `name.conflict-<node>` is taken by a secret or a directory, the next is tried
//! (`-2`, `-3` ...).
//!
//! **Invariant:** every version that differs from the base on either side is in the
//! result, at its own path or at the conflict copy named for that path. A merge loses
//! nothing but deletions made on one side of what the other did not change.

use std::collections::{BTreeMap, BTreeSet};

use gix_hash::ObjectId;
use gix_object::bstr::BString;
use gix_object::tree::EntryMode;

use super::VaultError;
use crate::identity::NodeId;

/// A path in a vault: one name per level, never empty.
pub(crate) type Path = Vec<BString>;

/// What a path holds: its mode and its object.
pub(crate) type Entry = (EntryMode, ObjectId);

/// A tree flattened to its leaves: secrets, and directories with nothing in them.
pub(crate) type Flat = BTreeMap<Path, Entry>;

/// Why a version was kept under a conflict name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Clash {
    /// Both sides changed the path, differently: ours stays, theirs is the copy.
    BothChanged,
    /// A secret (or an empty directory) where the other side has a directory: it moves.
    FileAndDirectory,
}

/// A version kept under a conflict name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Conflict {
    /// Where the version was.
    pub(crate) path: Path,
    /// Where it is kept.
    pub(crate) copy: Path,
    /// Why it moved.
    pub(crate) clash: Clash,
}

/// What a merge decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Merged {
    /// The merged tree, flattened; no leaf in it is a prefix of another.
    pub(crate) tree: Flat,
    /// The versions kept under conflict names, in the order they were named.
    pub(crate) conflicts: Vec<Conflict>,
}

/// The name an incoming version takes when both sides changed `name` (`n`: the `n`th
/// name tried, from 1).
pub fn merge_conflict_name(name: &str, node: &NodeId, n: usize) -> String {
    let short: String = node.to_string().chars().skip(1).take(8).collect();
    if n <= 1 {
        format!("{name}.conflict-{short}")
    } else {
        format!("{name}.conflict-{short}-{n}")
    }
}

/// Merges `ours` and `theirs`, both descended from `base` (empty when they share no
/// history), by the rules in the module docs. `conflict_name(name, n)` names the `n`th
/// candidate for a copy of `name` ([`merge_conflict_name`] with the node pulled from).
/// Fails only on an empty path, which no flattened tree holds.
pub(crate) fn merge(
    base: &Flat,
    ours: &Flat,
    theirs: &Flat,
    conflict_name: &dyn Fn(&str, usize) -> String,
) -> Result<Merged, VaultError> {
    let (mut tree, mut moves) = by_path(base, ours, theirs);
    moves.extend(move_files_under_directories(&mut tree));
    let mut conflicts = Vec::with_capacity(moves.len());
    for (path, entry, clash) in moves {
        let copy = free_name(&tree, &path, conflict_name)?;
        tree.insert(copy.clone(), entry);
        conflicts.push(Conflict { path, copy, clash });
    }
    Ok(Merged { tree, conflicts })
}

/// `path` as the user writes it: names joined by `/`.
pub(crate) fn show(path: &[BString]) -> String {
    path.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

/// A version to keep under a conflict name: where it was, what it is, and why.
type Move = (Path, Entry, Clash);

/// The three-way choice at every path; returns the merged leaves and the incoming
/// versions that lost to ours.
fn by_path(base: &Flat, ours: &Flat, theirs: &Flat) -> (Flat, Vec<Move>) {
    let mut merged = Flat::new();
    let mut moves = Vec::new();
    let paths: BTreeSet<&Path> = base
        .keys()
        .chain(ours.keys())
        .chain(theirs.keys())
        .collect();
    for path in paths {
        let (b, l, r) = (base.get(path), ours.get(path), theirs.get(path));
        let take = if l == r || r == b {
            l
        } else if l == b {
            r
        } else {
            match (l, r) {
                (Some(_), Some(incoming)) => {
                    moves.push((path.clone(), *incoming, Clash::BothChanged));
                    l
                }
                // Deleted on one side, changed on the other: the change stays.
                (None, changed) | (changed, None) => changed,
            }
        };
        if let Some(entry) = take {
            merged.insert(path.clone(), *entry);
        }
    }
    (merged, moves)
}

/// Takes out every leaf that is also a directory (a secret on one side, a directory on the
/// other): a tree cannot hold both under one name.
fn move_files_under_directories(merged: &mut Flat) -> Vec<Move> {
    let leaves: Vec<Path> = merged.keys().cloned().collect();
    let mut moves = Vec::new();
    for path in leaves {
        // Paths under `path` sort right after it.
        let is_prefix = merged
            .range(path.clone()..)
            .nth(1)
            .is_some_and(|(next, _)| next.len() > path.len() && next.starts_with(&path));
        if is_prefix && let Some(entry) = merged.remove(&path) {
            moves.push((path, entry, Clash::FileAndDirectory));
        }
    }
    moves
}

/// The first conflict name for `path` that `merged` does not use.
fn free_name(
    merged: &Flat,
    path: &[BString],
    conflict_name: &dyn Fn(&str, usize) -> String,
) -> Result<Path, VaultError> {
    let (last, parent) = path
        .split_last()
        .ok_or_else(|| VaultError::Corrupt("empty path".into()))?;
    let last = last.to_string();
    let mut n = 1;
    loop {
        let mut candidate = parent.to_vec();
        candidate.push(BString::from(conflict_name(&last, n)));
        if !taken(merged, &candidate) {
            return Ok(candidate);
        }
        n += 1;
    }
}

/// Whether `path` is in use in `flat`: a leaf there, or a directory holding leaves.
fn taken(flat: &Flat, path: &[BString]) -> bool {
    // Paths under `path` sort right after it.
    flat.range(path.to_vec()..)
        .next()
        .is_some_and(|(next, _)| next.starts_with(path))
}

#[cfg(test)]
mod tests {
    //! One table: each case gives the three trees and the whole merged result.
    use super::*;
    use gix_object::Kind as ObjectKind;
    use gix_object::tree::EntryKind;

    use Clash::{BothChanged as Both, FileAndDirectory as FileDir};

    /// Leaves as the table writes them: `("d/x", "1")` a secret holding `1` at `d/x`,
    /// `"x:1"` the same content executable, `"/"` an empty directory.
    type Leaves = &'static [(&'static str, &'static str)];

    struct Case {
        name: &'static str,
        base: Leaves,
        ours: Leaves,
        theirs: Leaves,
        merged: Leaves,
        /// `(path, copy, why)`, in the order the merge names them.
        conflicts: &'static [(&'static str, &'static str, Clash)],
    }

    /// The table's conflict names (the real ones also carry the node pulled from).
    fn namer(name: &str, n: usize) -> String {
        if n <= 1 {
            format!("{name}.conflict")
        } else {
            format!("{name}.conflict-{n}")
        }
    }

    fn entry(spec: &str) -> Entry {
        if spec == "/" {
            let empty = ObjectId::empty_tree(gix_hash::Kind::Sha1);
            return (EntryMode::from(EntryKind::Tree), empty);
        }
        let (kind, content) = match spec.strip_prefix("x:") {
            Some(content) => (EntryKind::BlobExecutable, content),
            None => (EntryKind::Blob, spec),
        };
        let oid =
            gix_object::compute_hash(gix_hash::Kind::Sha1, ObjectKind::Blob, content.as_bytes())
                .unwrap();
        (EntryMode::from(kind), oid)
    }

    fn path(text: &str) -> Path {
        text.split('/').map(BString::from).collect()
    }

    fn flat(leaves: Leaves) -> Flat {
        leaves.iter().map(|(p, e)| (path(p), entry(e))).collect()
    }

    const CASES: &[Case] = &[
        Case {
            name: "unchanged",
            base: &[("a", "1")],
            ours: &[("a", "1")],
            theirs: &[("a", "1")],
            merged: &[("a", "1")],
            conflicts: &[],
        },
        Case {
            name: "edit on ours",
            base: &[("a", "1")],
            ours: &[("a", "2")],
            theirs: &[("a", "1")],
            merged: &[("a", "2")],
            conflicts: &[],
        },
        Case {
            name: "edit on theirs",
            base: &[("a", "1")],
            ours: &[("a", "1")],
            theirs: &[("a", "2")],
            merged: &[("a", "2")],
            conflicts: &[],
        },
        Case {
            name: "the same edit on both sides",
            base: &[("a", "1")],
            ours: &[("a", "2")],
            theirs: &[("a", "2")],
            merged: &[("a", "2")],
            conflicts: &[],
        },
        Case {
            name: "different edits on both sides",
            base: &[("a", "1")],
            ours: &[("a", "2")],
            theirs: &[("a", "3")],
            merged: &[("a", "2"), ("a.conflict", "3")],
            conflicts: &[("a", "a.conflict", Both)],
        },
        Case {
            name: "delete on ours",
            base: &[("a", "1"), ("k", "1")],
            ours: &[("k", "1")],
            theirs: &[("a", "1"), ("k", "1")],
            merged: &[("k", "1")],
            conflicts: &[],
        },
        Case {
            name: "delete on theirs",
            base: &[("a", "1"), ("k", "1")],
            ours: &[("a", "1"), ("k", "1")],
            theirs: &[("k", "1")],
            merged: &[("k", "1")],
            conflicts: &[],
        },
        Case {
            name: "delete on ours, edit on theirs: the edit stays",
            base: &[("a", "1")],
            ours: &[],
            theirs: &[("a", "2")],
            merged: &[("a", "2")],
            conflicts: &[],
        },
        Case {
            name: "edit on ours, delete on theirs: the edit stays",
            base: &[("a", "1")],
            ours: &[("a", "2")],
            theirs: &[],
            merged: &[("a", "2")],
            conflicts: &[],
        },
        Case {
            name: "delete on both sides",
            base: &[("a", "1"), ("k", "1")],
            ours: &[("k", "1")],
            theirs: &[("k", "1")],
            merged: &[("k", "1")],
            conflicts: &[],
        },
        Case {
            name: "the same add on both sides",
            base: &[],
            ours: &[("a", "1")],
            theirs: &[("a", "1")],
            merged: &[("a", "1")],
            conflicts: &[],
        },
        Case {
            name: "different adds at one path",
            base: &[],
            ours: &[("a", "1")],
            theirs: &[("a", "2")],
            merged: &[("a", "1"), ("a.conflict", "2")],
            conflicts: &[("a", "a.conflict", Both)],
        },
        Case {
            name: "adds at different paths, no common history",
            base: &[],
            ours: &[("a", "1")],
            theirs: &[("b", "2")],
            merged: &[("a", "1"), ("b", "2")],
            conflicts: &[],
        },
        Case {
            name: "a file becomes a directory on ours",
            base: &[("a", "1")],
            ours: &[("a/x", "2")],
            theirs: &[("a", "1")],
            merged: &[("a/x", "2")],
            conflicts: &[],
        },
        Case {
            name: "a directory becomes a file on theirs",
            base: &[("a/x", "1")],
            ours: &[("a/x", "1")],
            theirs: &[("a", "2")],
            merged: &[("a", "2")],
            conflicts: &[],
        },
        Case {
            name: "a new file on ours, a new directory of that name on theirs",
            base: &[],
            ours: &[("a", "1")],
            theirs: &[("a/x", "2")],
            merged: &[("a.conflict", "1"), ("a/x", "2")],
            conflicts: &[("a", "a.conflict", FileDir)],
        },
        Case {
            name: "a new directory on ours, a new file of that name on theirs",
            base: &[],
            ours: &[("a/x", "1")],
            theirs: &[("a", "2")],
            merged: &[("a.conflict", "2"), ("a/x", "1")],
            conflicts: &[("a", "a.conflict", FileDir)],
        },
        Case {
            name: "a file becomes a directory on ours and is edited on theirs",
            base: &[("a", "1")],
            ours: &[("a/x", "2")],
            theirs: &[("a", "3")],
            merged: &[("a.conflict", "3"), ("a/x", "2")],
            conflicts: &[("a", "a.conflict", FileDir)],
        },
        Case {
            name: "a directory becomes a file on theirs and is edited inside on ours",
            base: &[("d/x", "1")],
            ours: &[("d/x", "2")],
            theirs: &[("d", "3")],
            merged: &[("d.conflict", "3"), ("d/x", "2")],
            conflicts: &[("d", "d.conflict", FileDir)],
        },
        Case {
            name: "rename on ours, edit on theirs: both kept",
            base: &[("a", "1")],
            ours: &[("b", "1")],
            theirs: &[("a", "2")],
            merged: &[("a", "2"), ("b", "1")],
            conflicts: &[],
        },
        Case {
            name: "rename with an edit on ours, edit on theirs",
            base: &[("a", "1")],
            ours: &[("b", "2")],
            theirs: &[("a", "3")],
            merged: &[("a", "3"), ("b", "2")],
            conflicts: &[],
        },
        Case {
            name: "renames to different names on both sides",
            base: &[("a", "1")],
            ours: &[("b", "1")],
            theirs: &[("c", "1")],
            merged: &[("b", "1"), ("c", "1")],
            conflicts: &[],
        },
        Case {
            name: "the same rename on both sides",
            base: &[("a", "1")],
            ours: &[("b", "1")],
            theirs: &[("b", "1")],
            merged: &[("b", "1")],
            conflicts: &[],
        },
        Case {
            name: "a rename on ours onto a name theirs added",
            base: &[("a", "1")],
            ours: &[("b", "1")],
            theirs: &[("a", "1"), ("b", "2")],
            merged: &[("b", "1"), ("b.conflict", "2")],
            conflicts: &[("b", "b.conflict", Both)],
        },
        Case {
            name: "the conflict name taken by a secret on ours",
            base: &[("a", "1")],
            ours: &[("a", "2"), ("a.conflict", "9")],
            theirs: &[("a", "3")],
            merged: &[("a", "2"), ("a.conflict", "9"), ("a.conflict-2", "3")],
            conflicts: &[("a", "a.conflict-2", Both)],
        },
        Case {
            name: "the conflict name taken by a secret on theirs",
            base: &[("a", "1")],
            ours: &[("a", "2")],
            theirs: &[("a", "3"), ("a.conflict", "9")],
            merged: &[("a", "2"), ("a.conflict", "9"), ("a.conflict-2", "3")],
            conflicts: &[("a", "a.conflict-2", Both)],
        },
        Case {
            name: "the conflict name taken by a directory on ours",
            base: &[("a", "1")],
            ours: &[("a", "2"), ("a.conflict/y", "9")],
            theirs: &[("a", "3")],
            merged: &[("a", "2"), ("a.conflict-2", "3"), ("a.conflict/y", "9")],
            conflicts: &[("a", "a.conflict-2", Both)],
        },
        Case {
            name: "the conflict name taken by a directory on theirs",
            base: &[("a", "1")],
            ours: &[("a", "2")],
            theirs: &[("a", "3"), ("a.conflict/y", "9")],
            merged: &[("a", "2"), ("a.conflict-2", "3"), ("a.conflict/y", "9")],
            conflicts: &[("a", "a.conflict-2", Both)],
        },
        Case {
            name: "conflict names taken again and again, by secrets and directories on both sides",
            base: &[("a", "1")],
            ours: &[("a", "2"), ("a.conflict", "7"), ("a.conflict-3/z", "8")],
            theirs: &[("a", "3"), ("a.conflict-2/y", "9")],
            merged: &[
                ("a", "2"),
                ("a.conflict", "7"),
                ("a.conflict-2/y", "9"),
                ("a.conflict-3/z", "8"),
                ("a.conflict-4", "3"),
            ],
            conflicts: &[("a", "a.conflict-4", Both)],
        },
        Case {
            name: "a conflict at a path that is another conflict's name",
            base: &[("a", "1"), ("a.conflict", "1")],
            ours: &[("a", "2"), ("a.conflict", "2")],
            theirs: &[("a", "3"), ("a.conflict", "3")],
            merged: &[
                ("a", "2"),
                ("a.conflict", "2"),
                ("a.conflict-2", "3"),
                ("a.conflict.conflict", "3"),
            ],
            conflicts: &[
                ("a", "a.conflict-2", Both),
                ("a.conflict", "a.conflict.conflict", Both),
            ],
        },
        Case {
            name: "a moved file's conflict name taken by a directory",
            base: &[],
            ours: &[("a", "1"), ("a.conflict/y", "9")],
            theirs: &[("a/x", "2")],
            merged: &[("a.conflict-2", "1"), ("a.conflict/y", "9"), ("a/x", "2")],
            conflicts: &[("a", "a.conflict-2", FileDir)],
        },
        Case {
            name: "deep edits on both sides, in different places",
            base: &[("d/e/f/x", "1"), ("d/e/g", "1")],
            ours: &[("d/e/f/x", "2"), ("d/e/g", "1")],
            theirs: &[("d/e/f/x", "1"), ("d/e/g", "3")],
            merged: &[("d/e/f/x", "2"), ("d/e/g", "3")],
            conflicts: &[],
        },
        Case {
            name: "different deep edits of one secret",
            base: &[("d/e/x", "1")],
            ours: &[("d/e/x", "2")],
            theirs: &[("d/e/x", "3")],
            merged: &[("d/e/x", "2"), ("d/e/x.conflict", "3")],
            conflicts: &[("d/e/x", "d/e/x.conflict", Both)],
        },
        Case {
            name: "a whole directory deleted on ours, a nested edit on theirs",
            base: &[("d/x", "1"), ("d/e/z", "1"), ("k", "1")],
            ours: &[("k", "1")],
            theirs: &[("d/x", "1"), ("d/e/z", "2"), ("k", "1")],
            merged: &[("d/e/z", "2"), ("k", "1")],
            conflicts: &[],
        },
        Case {
            name: "a whole directory deleted on theirs, a nested add on ours",
            base: &[("d/x", "1")],
            ours: &[("d/new", "2"), ("d/x", "1")],
            theirs: &[],
            merged: &[("d/new", "2")],
            conflicts: &[],
        },
        Case {
            name: "a whole directory deleted on ours, a file of its name on theirs",
            base: &[("d/x", "1")],
            ours: &[],
            theirs: &[("d", "2")],
            merged: &[("d", "2")],
            conflicts: &[],
        },
        Case {
            name: "made executable on ours",
            base: &[("a", "1")],
            ours: &[("a", "x:1")],
            theirs: &[("a", "1")],
            merged: &[("a", "x:1")],
            conflicts: &[],
        },
        Case {
            name: "made executable on ours, edited on theirs",
            base: &[("a", "1")],
            ours: &[("a", "x:1")],
            theirs: &[("a", "2")],
            merged: &[("a", "x:1"), ("a.conflict", "2")],
            conflicts: &[("a", "a.conflict", Both)],
        },
        Case {
            name: "made executable on both sides",
            base: &[("a", "1")],
            ours: &[("a", "x:1")],
            theirs: &[("a", "x:1")],
            merged: &[("a", "x:1")],
            conflicts: &[],
        },
        Case {
            name: "an empty directory on ours, a secret of its name on theirs",
            base: &[],
            ours: &[("d", "/")],
            theirs: &[("d", "1")],
            merged: &[("d", "/"), ("d.conflict", "1")],
            conflicts: &[("d", "d.conflict", Both)],
        },
        Case {
            name: "an empty directory on ours, a secret inside it on theirs",
            base: &[],
            ours: &[("d", "/")],
            theirs: &[("d/x", "1")],
            merged: &[("d.conflict", "/"), ("d/x", "1")],
            conflicts: &[("d", "d.conflict", FileDir)],
        },
        Case {
            name: "an empty directory filled on ours",
            base: &[("d", "/")],
            ours: &[("d/x", "1")],
            theirs: &[("d", "/")],
            merged: &[("d/x", "1")],
            conflicts: &[],
        },
        Case {
            name: "unrelated changes beside a conflict",
            base: &[("a", "1"), ("b", "1"), ("c", "1")],
            ours: &[("a", "2"), ("b", "2"), ("c", "1")],
            theirs: &[("a", "3"), ("b", "1"), ("d", "4")],
            merged: &[("a", "2"), ("a.conflict", "3"), ("b", "2"), ("d", "4")],
            conflicts: &[("a", "a.conflict", Both)],
        },
    ];

    /// Every version either side changed is in `merged`: at its path, or at the copy a
    /// conflict at its path names.
    fn assert_nothing_lost(case: &Case, base: &Flat, sides: [&Flat; 2], merged: &Merged) {
        for side in sides {
            for (path, entry) in side {
                if base.get(path) == Some(entry) || merged.tree.get(path) == Some(entry) {
                    continue;
                }
                let copied = merged
                    .conflicts
                    .iter()
                    .any(|c| &c.path == path && merged.tree.get(&c.copy) == Some(entry));
                assert!(copied, "{}: {} lost", case.name, show(path));
            }
        }
    }

    /// No leaf is also a directory: the result can be built as a tree.
    fn assert_buildable(case: &Case, merged: &Flat) {
        let paths: Vec<&Path> = merged.keys().collect();
        for pair in paths.windows(2) {
            assert!(
                !pair[1].starts_with(pair[0]),
                "{}: {} is a secret and a directory",
                case.name,
                show(pair[0])
            );
        }
    }

    #[test]
    fn the_merge_table() {
        assert!(CASES.len() >= 25);
        for case in CASES {
            let (base, ours, theirs) = (flat(case.base), flat(case.ours), flat(case.theirs));
            let merged = merge(&base, &ours, &theirs, &namer).unwrap();
            assert_eq!(merged.tree, flat(case.merged), "{}", case.name);
            let conflicts: Vec<Conflict> = case
                .conflicts
                .iter()
                .map(|(p, copy, clash)| Conflict {
                    path: path(p),
                    copy: path(copy),
                    clash: *clash,
                })
                .collect();
            assert_eq!(merged.conflicts, conflicts, "{}", case.name);
            assert_nothing_lost(case, &base, [&ours, &theirs], &merged);
            assert_buildable(case, &merged.tree);
        }
    }

    /// The other way round, the same case merges to the mirror result: no side's version
    /// is lost whichever side pulls (only which one keeps the path differs).
    #[test]
    fn the_merge_table_pulled_the_other_way_loses_nothing() {
        for case in CASES {
            let (base, ours, theirs) = (flat(case.base), flat(case.ours), flat(case.theirs));
            let merged = merge(&base, &theirs, &ours, &namer).unwrap();
            assert_nothing_lost(case, &base, [&ours, &theirs], &merged);
            assert_buildable(case, &merged.tree);
            assert_eq!(
                merged.conflicts.len(),
                case.conflicts.len(),
                "{}: as many conflicts either way",
                case.name
            );
        }
    }

    #[test]
    fn conflict_names_carry_the_node_and_a_number() {
        let node = crate::identity::Identity::generate().node_id();
        let short: String = node.to_string().chars().skip(1).take(8).collect();
        assert_eq!(
            merge_conflict_name("x", &node, 1),
            format!("x.conflict-{short}")
        );
        assert_eq!(
            merge_conflict_name("x", &node, 3),
            format!("x.conflict-{short}-3")
        );
    }

    #[test]
    fn an_empty_path_is_an_error_not_a_panic() {
        let ours = Flat::from([(Vec::new(), entry("1")), (path("a"), entry("2"))]);
        let err = merge(&Flat::new(), &ours, &Flat::new(), &namer).unwrap_err();
        assert!(matches!(err, VaultError::Corrupt(_)), "{err:?}");
    }
}
