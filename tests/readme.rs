//! The README and the guide under `docs/` against the repository: the README's code is an excerpt
//! of a compiled example, its first lines give the two commands, and every relative link of the
//! README and the guide names a file that exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced code blocks of `markdown` whose info string is `lang`, in order.
fn code_blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(String::new()),
            (Some(_), Some("")) => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Each Rust block of the README is a contiguous excerpt of `examples/axum_dynamodb.rs`, which
/// CI compiles and runs against moto: the README cannot show code that does not build.
#[test]
fn the_readme_rust_code_is_an_excerpt_of_the_axum_dynamodb_example() {
    let readme = read(&root().join("README.md"));
    let example = read(&root().join("examples/axum_dynamodb.rs"));
    let blocks = code_blocks(&readme, "rust");
    assert!(!blocks.is_empty(), "the README shows no Rust code");
    for block in blocks {
        assert!(
            block.lines().count() >= 10 && example.contains(&block),
            "this README block is not an excerpt of examples/axum_dynamodb.rs:\n{block}"
        );
    }
}

/// The README opens with the two commands: the quickstart and the whole test suite.
#[test]
fn the_readme_opens_with_the_two_commands() {
    let readme = read(&root().join("README.md"));
    let head: String = readme.lines().take(12).collect::<Vec<_>>().join("\n");
    for command in ["cargo run --example quickstart", "bash tests/run-all.sh"] {
        assert!(
            head.contains(command),
            "the README's first lines lack `{command}`"
        );
    }
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.contains("tests/run-all.sh"),
        ".ci/run no longer calls tests/run-all.sh"
    );
}

/// Every relative link `](path)` in the README and in `docs/*.md` names an existing file.
#[test]
fn relative_links_of_the_readme_and_the_guide_resolve() {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = read(page);
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = page.parent().expect("a parent directory").join(target);
            if !resolved.exists() {
                broken.push(format!("{}: {}", page.display(), &rest[..end]));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to missing files:\n{}",
        broken.join("\n")
    );
}
