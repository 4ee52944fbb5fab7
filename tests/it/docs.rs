//! The docs cannot drift from the code: `docs/configuration.md`'s settings
//! reference is generated from the settings table
//! (`clerk_introspect::config::settings`, which also builds `serve`'s flags
//! and `--help`), and its config-file example is `examples/config.toml`
//! itself. This test regenerates both blocks and fails, with a diff, when
//! the file differs; `UPDATE_DOCS=1 cargo test --test it docs` rewrites it.
//! It also holds the README to its size and to linking every docs page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clerk_introspect::config::settings::{Kind, Scope, Setting};

/// The generated reference.
const CONFIGURATION: &str = "docs/configuration.md";
/// Set to rewrite the generated blocks instead of failing.
const UPDATE: &str = "UPDATE_DOCS";
/// The README's limit (issue 16: a short README, the rest in docs/).
const README_MAX_BYTES: usize = 12 * 1024;
/// Docs pages written on other branches, linked from the README before
/// they land (a link to one of them may not resolve yet).
const PENDING: &[&str] = &[];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A table cell: pipes escaped (also inside code spans, as GFM wants).
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// How a setting is written on the command line.
fn flag(setting: Setting) -> String {
    let meta = setting.meta();
    match meta.kind {
        Kind::Switch => format!("`--{}`", meta.flag),
        Kind::One | Kind::List => format!("`--{} {}`", meta.flag, cell(meta.value_name)),
    }
}

fn default(setting: Setting) -> String {
    let meta = setting.meta();
    match (meta.default, meta.kind) {
        (None, _) => "none".to_owned(),
        (Some("false"), Kind::Switch) => "off".to_owned(),
        (Some(d), _) => format!("`{}`", cell(d)),
    }
}

/// The config-file key as it is written in the file.
fn file_key(setting: Setting) -> String {
    match setting.meta().key.split_once('.') {
        Some((table, key)) => format!("`[{table}]` `{key}`"),
        None => format!("`{}`", setting.meta().key),
    }
}

/// The settings reference: one table per place a setting may be given.
fn settings_block() -> String {
    let mut out = String::new();
    let sections = [
        (Scope::Server, "Server: flag, environment variable, or a top-level key (or `[tls]` key) of the config file."),
        (
            Scope::Issuer,
            "Issuer policy: a flag or environment variable applies to every issuer; in the config file, a key of an `[[issuers]]` table applies to that issuer.",
        ),
        (Scope::Process, "Process: flag or environment variable only (not in the config file)."),
        (Scope::FileIssuer, "Config file only, in each `[[issuers]]` table: the issuer and its key source."),
    ];
    for (scope, title) in sections {
        let settings: Vec<Setting> = Setting::ALL.iter().copied().filter(|s| s.meta().scope == scope).collect();
        if settings.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}\n");
        match scope {
            Scope::FileIssuer => {
                out.push_str("| key | meaning |\n|---|---|\n");
                for s in settings {
                    let _ = writeln!(out, "| {} | {} |", file_key(s), cell(s.meta().help));
                }
            }
            Scope::Process => {
                out.push_str("| flag | environment | default | meaning |\n|---|---|---|---|\n");
                for s in settings {
                    let m = s.meta();
                    let _ = writeln!(out, "| {} | `{}` | {} | {} |", flag(s), m.env, default(s), cell(m.help));
                }
            }
            Scope::Server | Scope::Issuer => {
                out.push_str("| flag | environment | config file | default | meaning |\n|---|---|---|---|---|\n");
                for s in settings {
                    let m = s.meta();
                    let _ = writeln!(
                        out,
                        "| {} | `{}` | {} | {} | {} |",
                        flag(s),
                        m.env,
                        file_key(s),
                        default(s),
                        cell(m.help)
                    );
                }
            }
        }
        out.push('\n');
    }
    out
}

/// The config-file example: `examples/config.toml`, verbatim.
fn example_block() -> String {
    format!("```toml\n{}```\n", read("examples/config.toml"))
}

/// `text` with the block named `name` replaced by `body`.
fn with_block(text: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- BEGIN GENERATED: {name} ");
    let end = format!("<!-- END GENERATED: {name} -->");
    let start = text.find(&begin).unwrap_or_else(|| panic!("{CONFIGURATION} has no {begin}… marker"));
    let open_end = start + text[start..].find("-->\n").expect("the BEGIN marker ends with -->") + "-->\n".len();
    let close = text[open_end..].find(&end).unwrap_or_else(|| panic!("{CONFIGURATION} has no {end}")) + open_end;
    format!("{}{}{}", &text[..open_end], body, &text[close..])
}

/// The lines that differ, for the failure message.
fn diff(want: &str, have: &str) -> String {
    let (want, have): (Vec<&str>, Vec<&str>) = (want.lines().collect(), have.lines().collect());
    let mut out = String::new();
    for line in have.iter().filter(|l| !want.contains(l)) {
        let _ = writeln!(out, "- {line}");
    }
    for line in want.iter().filter(|l| !have.contains(l)) {
        let _ = writeln!(out, "+ {line}");
    }
    out
}

#[test]
fn configuration_reference_is_generated_from_the_settings_table() {
    let have = read(CONFIGURATION);
    let want = with_block(&with_block(&have, "settings", &settings_block()), "example", &example_block());
    if want == have {
        return;
    }
    if std::env::var_os(UPDATE).is_some() {
        std::fs::write(repo(CONFIGURATION), &want).expect("rewrite the configuration reference");
        return;
    }
    panic!(
        "{CONFIGURATION} is out of date with the settings table or examples/config.toml; \
         regenerate it with `{UPDATE}=1 cargo test --test it docs`:\n{}",
        diff(&want, &have)
    );
}

#[tokio::test]
async fn every_setting_with_a_flag_is_in_the_reference_and_in_serve_help() {
    let doc = read(CONFIGURATION);
    let out = crate::scratch::run_bin(&["serve", "--help"], None).await;
    assert!(out.status.success(), "serve --help: {}", crate::scratch::stderr(&out));
    let help = crate::scratch::stdout(&out);
    for &s in Setting::ALL {
        let m = s.meta();
        if m.flag.is_empty() {
            assert!(doc.contains(&format!("| {} |", file_key(s))), "{} in {CONFIGURATION}", m.key);
            continue;
        }
        let long = format!("--{}", m.flag);
        assert!(doc.contains(&format!("`{long}")), "{long} in {CONFIGURATION}");
        assert!(doc.contains(m.env), "{} in {CONFIGURATION}", m.env);
        assert!(help.contains(&long) && help.contains(m.env), "{long} and {} in serve --help", m.env);
    }
}

/// Relative link targets of a Markdown file (`](target)`), without anchors.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or_default().to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn the_readme_is_short_links_every_docs_page_and_every_link_resolves() {
    let readme = read("README.md");
    assert!(readme.len() < README_MAX_BYTES, "README.md is {} bytes; keep it under {README_MAX_BYTES}", readme.len());
    let readme_links = links(&readme);
    let mut pages: Vec<String> = std::fs::read_dir(repo("docs"))
        .expect("docs/")
        .filter_map(Result::ok)
        .map(|e| format!("docs/{}", e.file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    pages.sort();
    for page in pages.iter().map(String::as_str).chain(PENDING.iter().copied()) {
        assert!(readme_links.iter().any(|l| l == page), "README.md does not link {page}");
    }
    for file in std::iter::once("README.md".to_owned()).chain(pages) {
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for link in links(&read(&file)) {
            let target = dir.join(&link);
            let normal = normalize(&target);
            let pending = PENDING.iter().any(|p| Path::new(p) == normal);
            assert!(pending || repo(&normal.to_string_lossy()).exists(), "{file} links {link}, which does not exist");
        }
    }
}

/// `a/b/../c` → `a/c` (without touching the file system).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
