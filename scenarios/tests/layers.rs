//! The import check: every crate's modules ("rooms") import only rooms in
//! lower layers, and every crate depends only on crates below it, as the
//! `layers` tables of the project's DESIGN.md say. Needs no root and no
//! tools: it reads DESIGN.md, the Cargo.toml files and `src/**/*.rs`.
//!
//! A table is a fenced block whose info string is `layers CRATE_DIR` (or
//! `layers workspace` for the crates), one layer a line from the top down:
//! `name: room room ...`. A file's room is its top-level module; `lib.rs`,
//! `main.rs` and `bin/` are the crate root, above every layer. A reference
//! is a path through the crate root (`crate::x`, `crate::{x, y::z}` over
//! any number of lines, `super::x` from a room's top file) outside comments
//! and string literals.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// One layer of a table: its name and its rooms (or crates).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layer {
    name: String,
    rooms: Vec<String>,
}

/// The `layers` tables of a DESIGN.md, by what follows `layers`.
fn parse_tables(design: &str) -> Result<BTreeMap<String, Vec<Layer>>, String> {
    let mut tables = BTreeMap::new();
    let mut lines = design.lines().enumerate();
    while let Some((at, line)) = lines.next() {
        let Some(which) = line.trim().strip_prefix("```layers ") else { continue };
        let mut layers = Vec::new();
        let mut seen = BTreeSet::new();
        loop {
            let Some((number, line)) = lines.next() else {
                return Err(format!("DESIGN.md:{}: the `layers {which}` block is not closed", at + 1));
            };
            let line = line.trim();
            if line.starts_with("```") {
                break;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, rooms)) = line.split_once(':') else {
                return Err(format!("DESIGN.md:{}: a layer is `name: room room ...`, not {line:?}", number + 1));
            };
            let rooms: Vec<String> = rooms.split_whitespace().map(str::to_owned).collect();
            if let Some(twice) = rooms.iter().find(|room| !seen.insert((*room).clone())) {
                return Err(format!("DESIGN.md:{}: `{twice}` is in two layers of `layers {which}`", number + 1));
            }
            if rooms.is_empty() {
                return Err(format!("DESIGN.md:{}: layer `{name}` has no rooms", number + 1));
            }
            layers.push(Layer { name: name.trim().to_owned(), rooms });
        }
        if tables.insert(which.trim().to_owned(), layers).is_some() {
            return Err(format!("DESIGN.md:{}: a second `layers {which}` table", at + 1));
        }
    }
    Ok(tables)
}

/// A token of Rust source, with comments, literals and whitespace dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Open,
    Close,
    Comma,
    Other,
}

/// The tokens of `src`, each with its line.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    // Skips a quoted literal from its opening quote at `i`, to after its
    // closing quote followed by `hashes` hashes (escapes only when unraw).
    let skip_quoted = |mut i: usize, hashes: usize, raw: bool, line: &mut usize| {
        i += 1;
        while i < chars.len() {
            match chars[i] {
                '\\' if !raw => i += 1,
                '"' if (1..=hashes).all(|h| at(i + h) == '#') => return i + 1 + hashes,
                '\n' => *line += 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                match (chars[i], at(i + 1)) {
                    ('/', '*') => (depth, i) = (depth + 1, i + 2),
                    ('*', '/') => (depth, i) = (depth - 1, i + 2),
                    ('\n', _) => (line, i) = (line + 1, i + 1),
                    _ => i += 1,
                }
                if depth == 0 {
                    break;
                }
            }
        } else if c == '"' {
            i = skip_quoted(i, 0, false, &mut line);
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                out.push((Tok::Other, line));
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let hashes = (i..).take_while(|&h| at(h) == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                i = skip_quoted(i + hashes, hashes, true, &mut line);
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                i = skip_quoted(i, 0, false, &mut line);
            } else if word == "b" && at(i) == '\'' {
                out.push((Tok::Other, line));
            } else if word == "r" && hashes == 1 && (at(i + 1).is_alphabetic() || at(i + 1) == '_') {
                i += 1; // a raw identifier: the next word is the name
            } else if c.is_ascii_digit() {
                out.push((Tok::Other, line));
            } else {
                out.push((Tok::Ident(word), line));
            }
        } else {
            let tok = match (c, at(i + 1)) {
                (':', ':') => Tok::Path,
                ('{', _) => Tok::Open,
                ('}', _) => Tok::Close,
                (',', _) => Tok::Comma,
                _ => Tok::Other,
            };
            i += if tok == Tok::Path { 2 } else { 1 };
            out.push((tok, line));
        }
    }
    out
}

/// The names a file at module path `module` reaches through the crate
/// root, each with its line: `x` for `crate::x::..`, each top-level item of
/// `crate::{..}`, and the same through enough `super::` to reach the root.
fn references(module: &[String], src: &str) -> Vec<(String, usize)> {
    let toks = tokens(src);
    let tok = |i: usize| toks.get(i).map_or(&Tok::Other, |(t, _)| t);
    let is = |i: usize, word: &str| matches!(tok(i), Tok::Ident(w) if w == word);
    let (mut found, mut inline, mut depth, mut pending) = (Vec::new(), Vec::<usize>::new(), 0, false);
    for i in 0..toks.len() {
        match tok(i) {
            Tok::Open => {
                depth += 1;
                if std::mem::take(&mut pending) {
                    inline.push(depth);
                }
            }
            Tok::Close => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Tok::Ident(word) if word == "mod" => {
                pending = matches!(tok(i + 1), Tok::Ident(_)) && tok(i + 2) == &Tok::Open;
            }
            _ => {}
        }
        if i > 0 && tok(i - 1) == &Tok::Path {
            continue; // inside a path: only its first segment starts one
        }
        let rest = if is(i, "crate") && tok(i + 1) == &Tok::Path {
            i + 2
        } else if is(i, "super") && tok(i + 1) == &Tok::Path {
            let supers = (0..).take_while(|k| is(i + 2 * k, "super") && tok(i + 2 * k + 1) == &Tok::Path).count();
            if supers != module.len() + inline.len() {
                continue; // stays inside the room (or is not valid Rust)
            }
            i + 2 * supers
        } else {
            continue;
        };
        match tok(rest) {
            Tok::Ident(name) if name != "self" => found.push((name.clone(), toks[rest].1)),
            Tok::Open => {
                let (mut nested, mut item_start) = (0, true);
                for (t, line) in &toks[rest + 1..] {
                    match t {
                        Tok::Ident(name) if nested == 0 && item_start => {
                            if name != "self" {
                                found.push((name.clone(), *line));
                            }
                            item_start = false;
                        }
                        Tok::Open => nested += 1,
                        Tok::Close if nested == 0 => break,
                        Tok::Close => nested -= 1,
                        Tok::Comma if nested == 0 => item_start = true,
                        _ => {}
                    }
                }
            }
            _ => found.push(("*".to_owned(), toks[rest].1)),
        }
    }
    found
}

/// The module path of a file under `src/` (`x.rs`, `x/mod.rs` → `[x]`,
/// `x/y.rs` → `[x, y]`); empty for the crate root (`lib.rs`, `main.rs`,
/// `bin/`).
fn module_of(relative: &str) -> Vec<String> {
    let mut parts: Vec<String> = relative.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    if matches!(parts[0].as_str(), "lib" | "main" | "bin") {
        return Vec::new();
    }
    if parts.len() > 1 && parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// What is wrong in crate `name` (its files as `(path under src/, text)`)
/// against its `layers`: an import of a room not below the importer, a
/// path through the crate root, a room in no layer, a listed room that is
/// not there.
fn check_crate(name: &str, layers: &[Layer], files: &[(String, String)]) -> Vec<String> {
    let layer_of = |room: &str| layers.iter().position(|l| l.rooms.iter().any(|r| r == room));
    let mut problems = Vec::new();
    let rooms: BTreeSet<String> = files.iter().filter_map(|(path, _)| module_of(path).first().cloned()).collect();
    for room in &rooms {
        if layer_of(room).is_none() {
            problems.push(format!("{name}/src: room `{room}` is in no layer of DESIGN.md's `layers {name}`"));
        }
    }
    for room in layers.iter().flat_map(|l| &l.rooms).filter(|r| !rooms.contains(*r)) {
        problems.push(format!("DESIGN.md's `layers {name}` lists `{room}`, which {name}/src does not have"));
    }
    for (path, src) in files {
        let module = module_of(path);
        let Some(from) = module.first() else { continue };
        let Some(from_layer) = layer_of(from) else { continue };
        for (to, line) in references(&module, src) {
            let at = format!("{name}/src/{path}:{line}: `{from}` ({})", layers[from_layer].name);
            match layer_of(&to) {
                _ if &to == from => {}
                Some(to_layer) if to_layer > from_layer => {}
                Some(to_layer) => {
                    problems.push(format!("{at} imports `{to}` ({}), which is not below it", layers[to_layer].name))
                }
                None if rooms.contains(&to) => {}
                None => problems.push(format!(
                    "{at} imports `crate::{to}`, an item of the crate root, above every layer: import it from its room"
                )),
            }
        }
    }
    problems
}

/// The `.rs` files under `dir`, as `(path relative to root, text)`, sorted.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("a readable source dir").flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under the root").to_string_lossy().into_owned();
            out.push((relative, fs::read_to_string(&path).expect("a readable source file")));
        }
    }
}

/// The `[package]` name and the `mesh-*` `[dependencies]` of a Cargo.toml.
fn package(manifest: &str) -> (String, Vec<String>) {
    let (mut section, mut name, mut deps) = ("", String::new(), Vec::new());
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[package]" && line.starts_with("name") {
            name = line.split('"').nth(1).unwrap_or_default().to_owned();
        } else if section == "[dependencies]" && line.starts_with("mesh-") {
            deps.push(line.split(['.', ' ', '=']).next().unwrap_or_default().to_owned());
        }
    }
    (name, deps)
}

/// What is wrong with the crates' dependencies against `layers`: a crate
/// depending on one not below it, a member in no layer.
fn check_workspace(root: &Path, layers: &[Layer]) -> Vec<String> {
    let layer_of = |dir: &str| layers.iter().position(|l| l.rooms.iter().any(|r| r == dir));
    let read = |path: &Path| fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let workspace = read(&root.join("Cargo.toml"));
    let members = workspace.lines().find(|l| l.trim_start().starts_with("members")).expect("a members line");
    let dirs: Vec<&str> = members.split('"').skip(1).step_by(2).collect();
    let packages: BTreeMap<&str, (String, Vec<String>)> =
        dirs.iter().map(|dir| (*dir, package(&read(&root.join(dir).join("Cargo.toml"))))).collect();
    let dir_of: BTreeMap<&str, &str> = packages.iter().map(|(dir, (name, _))| (name.as_str(), *dir)).collect();
    let mut problems: Vec<String> = layers
        .iter()
        .flat_map(|l| &l.rooms)
        .filter(|dir| !dirs.contains(&dir.as_str()))
        .map(|dir| format!("DESIGN.md's `layers workspace` lists {dir}, which is no workspace member"))
        .collect();
    for (dir, (name, deps)) in &packages {
        let Some(from) = layer_of(dir) else {
            problems.push(format!("crate {dir} is in no layer of DESIGN.md's `layers workspace`"));
            continue;
        };
        for dep in deps {
            let to = dir_of.get(dep.as_str()).and_then(|d| layer_of(d));
            if to.is_some_and(|to| to <= from) {
                problems.push(format!("{dir}/Cargo.toml: {name} depends on {dep}, which is not below it"));
            }
        }
    }
    problems
}

#[test]
fn every_room_imports_only_rooms_below_it_as_design_md_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let design = fs::read_to_string(root.join("DESIGN.md")).expect("DESIGN.md at the workspace root");
    let tables = parse_tables(&design).unwrap_or_else(|e| panic!("{e}"));
    let workspace = tables.get("workspace").expect("a `layers workspace` table in DESIGN.md");
    let mut problems = check_workspace(root, workspace);
    let crates: Vec<_> = tables.iter().filter(|(name, _)| *name != "workspace").collect();
    assert!(!crates.is_empty(), "DESIGN.md has no crate's `layers` table");
    for (name, layers) in crates {
        let src = root.join(name).join("src");
        let mut files = Vec::new();
        rust_files(&src, &src, &mut files);
        assert!(!files.is_empty(), "`layers {name}`: no {}", src.display());
        problems.extend(check_crate(name, layers, &files));
    }
    assert!(problems.is_empty(), "imports against DESIGN.md's layers:\n{}", problems.join("\n"));
}

#[cfg(test)]
mod checker {
    use super::*;

    fn layers(rows: &[(&str, &[&str])]) -> Vec<Layer> {
        let row = |(name, rooms): &(&str, &[&str])| Layer {
            name: (*name).to_owned(),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        };
        rows.iter().map(row).collect()
    }

    fn names(module: &[&str], src: &str) -> Vec<(String, usize)> {
        references(&module.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>(), src)
    }

    #[test]
    fn tables_are_read_from_their_fenced_blocks_top_down() {
        let design = "# Title\n```layers demo\n# top first\ntop: a b\n\nbottom:  c\n```\ntext\n```rust\nx: y\n```\n";
        let tables = parse_tables(design).expect("well formed");
        assert_eq!(tables.keys().collect::<Vec<_>>(), ["demo"]);
        assert_eq!(tables["demo"], layers(&[("top", &["a", "b"]), ("bottom", &["c"])]));
        assert!(parse_tables("```layers x\na: b\nc: b\n```\n").is_err(), "a room in two layers");
        assert!(parse_tables("```layers x\na b\n```\n").is_err(), "no name");
        assert!(parse_tables("```layers x\na: b\n").is_err(), "not closed");
    }

    #[test]
    fn a_multi_line_brace_import_names_each_room_at_its_line() {
        let src = "use crate::{\n    api::{self, Body},\n    datadir::{Attachment,\n        DataDir},\n    ipam,\n};\n";
        assert_eq!(names(&["agent"], src), [("api".into(), 2), ("datadir".into(), 3), ("ipam".into(), 5)]);
        assert_eq!(names(&["a"], "use crate::{self as root, b};"), [("b".into(), 1)]);
    }

    #[test]
    fn inline_paths_and_super_up_to_the_root_count_but_paths_within_a_room_do_not() {
        let src = "fn f() { let t = crate::clock::unix_ms(); g::crate_like::h(); }";
        assert_eq!(names(&["cli", "status"], src), [("clock".into(), 1)]);
        // From `x.rs` (or `x/mod.rs`), `super` is the root; from `x/y.rs` it is `x`.
        assert_eq!(names(&["x"], "use super::y::Z;"), [("y".into(), 1)]);
        assert!(names(&["x", "y"], "use super::Z;").is_empty());
        assert_eq!(names(&["x", "y"], "use super::super::{w, v};"), [("w".into(), 1), ("v".into(), 1)]);
        // In an inline module, one more `super` to reach the root.
        let tests = "mod tests {\n    use super::*;\n    use super::super::y;\n}\nuse super::z;\n";
        assert_eq!(names(&["x"], tests), [("y".into(), 3), ("z".into(), 5)]);
        assert!(names(&["x"], "pub(super) fn f() {}").is_empty());
    }

    #[test]
    fn comments_and_literals_are_skipped() {
        let src = r###"
            // use crate::a;
            /// [`crate::b`]
            /* crate::c /* nested crate::d */ crate::e */
            let s = "crate::f \" crate::g";
            let r = r#"crate::h "# ;
            let q = '"'; let l: &'static str = "";
            let n = b'\''; let t = crate::real::T;
        "###;
        assert_eq!(names(&["x"], src), [("real".into(), 8)]);
    }

    #[test]
    fn an_import_of_a_room_in_the_same_or_a_higher_layer_is_caught() {
        let table = layers(&[("top", &["cli"]), ("middle", &["agent", "control"]), ("bottom", &["clock"])]);
        let file = |path: &str, src: &str| (path.to_owned(), src.to_owned());
        let clean = [
            file("lib.rs", "mod cli; use crate::agent::Agent;"),
            file("cli/mod.rs", "use crate::{agent::Agent, clock};"),
            file("agent/mod.rs", "use crate::clock::unix_ms;\nmod tests { use super::*; }"),
            file("control.rs", "use crate::clock;"),
            file("clock.rs", "pub fn unix_ms() {}"),
        ];
        assert_eq!(check_crate("demo", &table, &clean), Vec::<String>::new());

        let mut bad = clean.to_vec();
        bad.push(file("clock/extra.rs", "// fine\nuse crate::agent::Agent;"));
        bad.push(file("control.rs", "fn f() {\n    crate::agent::g();\n}"));
        bad.push(file("agent/x.rs", "use crate::Agent;"));
        bad.push(file("stray.rs", ""));
        let problems = check_crate("demo", &table, &bad);
        let expected = [
            "demo/src: room `stray` is in no layer of DESIGN.md's `layers demo`",
            "demo/src/clock/extra.rs:2: `clock` (bottom) imports `agent` (middle), which is not below it",
            "demo/src/control.rs:2: `control` (middle) imports `agent` (middle), which is not below it",
            "demo/src/agent/x.rs:1: `agent` (middle) imports `crate::Agent`, an item of the crate root, above every layer: import it from its room",
        ];
        assert_eq!(problems, expected);
        let missing = check_crate("demo", &table, &clean[..4]);
        assert_eq!(missing, ["DESIGN.md's `layers demo` lists `clock`, which demo/src does not have"]);
    }
}
