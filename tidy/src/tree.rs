//! A crate's module tree, read from its root file by following `mod name;` declarations
//! (and their `#[path]`), test modules left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::items::{mod_decls, strip_tests};
use crate::lexer::{Token, lex};

/// One module of a file of its own, with its tokens, test code stripped.
#[derive(Debug)]
pub(crate) struct Module {
    /// The path from the crate root (`vault::sync`), empty for the root.
    pub(crate) path: String,
    pub(crate) file: PathBuf,
    pub(crate) parent: Option<usize>,
    pub(crate) children: BTreeMap<String, usize>,
    pub(crate) tokens: Vec<Token>,
}

/// A crate (one compilation unit: a library, a binary, a fuzz target) as its modules;
/// `modules[0]` is the root.
#[derive(Debug)]
pub(crate) struct Crate {
    pub(crate) name: String,
    pub(crate) modules: Vec<Module>,
}

impl Crate {
    /// Reads the crate whose root file is `root`.
    pub(crate) fn load(name: &str, root: &Path) -> Result<Crate, String> {
        let mut krate = Crate {
            name: name.to_string(),
            modules: Vec::new(),
        };
        krate.add(String::new(), root.to_path_buf(), None, true)?;
        Ok(krate)
    }

    fn add(
        &mut self,
        path: String,
        file: PathBuf,
        parent: Option<usize>,
        mod_rs: bool,
    ) -> Result<usize, String> {
        // `#[path = "../pk/cli.rs"]` and the like: one name per file.
        let file = file
            .canonicalize()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let source =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let tokens = strip_tests(lex(&source));
        let decls = mod_decls(&tokens);
        let id = self.modules.len();
        self.modules.push(Module {
            path: path.clone(),
            file: file.clone(),
            parent,
            children: BTreeMap::new(),
            tokens,
        });
        let here = file.parent().unwrap_or(Path::new("."));
        // A root or `mod.rs` file's children sit next to it; `foo.rs`'s in `foo/`.
        let dir = match (mod_rs, file.file_stem()) {
            (false, Some(stem)) => here.join(stem),
            _ => here.to_path_buf(),
        };
        for decl in decls {
            let (child_file, child_mod_rs) = match &decl.path {
                Some(p) => (here.join(p), true),
                None if dir.join(format!("{}.rs", decl.name)).exists() => {
                    (dir.join(format!("{}.rs", decl.name)), false)
                }
                None => (dir.join(&decl.name).join("mod.rs"), true),
            };
            let child_path = match path.as_str() {
                "" => decl.name.clone(),
                p => format!("{p}::{}", decl.name),
            };
            let child = self.add(child_path, child_file, Some(id), child_mod_rs)?;
            self.modules[id].children.insert(decl.name, child);
        }
        Ok(id)
    }

    /// `module` and its ancestors, innermost first.
    pub(crate) fn ancestors(&self, module: usize) -> Vec<usize> {
        let mut chain = vec![module];
        while let Some(parent) = self.modules[*chain.last().unwrap_or(&0)].parent {
            chain.push(parent);
        }
        chain
    }
}
