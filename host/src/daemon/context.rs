//! A build context: the files of a directory as the tar the daemon's build API takes, less
//! what its `.dockerignore` excludes, with Docker's semantics (moby's patternmatcher, which
//! `docker build` applies on the client side before sending the context):
//!
//! - one pattern per line, trimmed; blank lines and `#` comments are skipped; `!` makes an
//!   exception; the last pattern that matches a path decides;
//! - a pattern is cleaned like a path (`./a`, `/a` and `a/` all mean `a`) and is relative to
//!   the context root;
//! - `*` and `?` stay within one path component, `[...]` is a character class (`^` negates),
//!   `\` escapes, `**/` matches any number of directories (none too), a trailing `**` anything;
//! - a pattern that matches a directory matches everything under it.
//!
//! The Dockerfile and `.dockerignore` are always sent, as `docker build` does: the daemon needs
//! them. No crate we found implements these semantics and is kept up (the `ignore` crate is
//! gitignore's, which differ: there `*.log` matches at any depth), so this is a small matcher.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::files::IoError;

/// Why a build context could not be sent.
#[derive(Debug)]
pub enum Error {
    /// A `.dockerignore` line Docker refuses; `number` is 1-based.
    Line {
        number: usize,
        line: String,
        problem: Pattern,
    },
    Io(IoError),
    /// A file name that is not UTF-8 (a tar path must be).
    NotUtf8(PathBuf),
}

/// What is wrong with a `.dockerignore` pattern.
#[derive(Debug, PartialEq, Eq)]
pub enum Pattern {
    /// A bare `!`.
    ExceptsNothing,
    LoneBackslash,
    Unclosed,
    Backwards(char, char),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line {
                number,
                line,
                problem: Pattern::ExceptsNothing,
            } => write!(f, ".dockerignore line {number}: {line:?} excepts nothing"),
            Self::Line {
                number,
                line,
                problem,
            } => write!(f, ".dockerignore line {number}: {line:?}: {problem}"),
            Self::Io(e) => e.fmt(f),
            Self::NotUtf8(name) => write!(
                f,
                "the build context holds a file name that is not UTF-8: {}",
                name.display()
            ),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExceptsNothing => f.write_str("excepts nothing"),
            Self::LoneBackslash => f.write_str("it ends with a lone \\"),
            Self::Unclosed => f.write_str("a [ is never closed"),
            Self::Backwards(start, end) => write!(f, "the range {start}-{end} runs backwards"),
        }
    }
}

impl std::error::Error for Error {}

impl From<IoError> for Error {
    fn from(e: IoError) -> Self {
        Self::Io(e)
    }
}

/// The parsed `.dockerignore`.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    /// `!pattern`: a match includes the path again.
    exception: bool,
    tokens: Vec<Token>,
}

#[derive(Debug, PartialEq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**/`: any number of whole directories, none included.
    Directories,
    /// `**` elsewhere: anything at all.
    Anything,
    /// `[...]`: ranges of characters, or anything but them.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl IgnoreRules {
    /// Parses a `.dockerignore`; a line Docker refuses (a bare `!`, an unterminated `[`) is an
    /// error naming the line.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut rules = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let refused = |problem| Error::Line {
                number: number + 1,
                line: line.to_string(),
                problem,
            };
            if pattern.is_empty() {
                return Err(refused(Pattern::ExceptsNothing));
            }
            let cleaned = clean(pattern);
            if cleaned.is_empty() {
                continue; // `/` or `.`: the context itself, which is never excluded
            }
            let tokens = tokens(&cleaned).map_err(refused)?;
            rules.push(Rule { exception, tokens });
        }
        Ok(Self { rules })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            // The path itself, or any directory it is in.
            let matched = matches(&rule.tokens, path)
                || path
                    .match_indices('/')
                    .any(|(at, _)| matches(&rule.tokens, &path[..at]));
            if matched {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

/// A pattern cleaned as Go's `filepath.Clean` cleans it, without a leading `/`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn tokens(pattern: &str) -> Result<Vec<Token>, Pattern> {
    let mut out = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.next_if_eq(&'/').is_some() {
                    Token::Directories
                } else {
                    Token::Anything
                }
            }
            '*' => Token::Star,
            '?' => Token::One,
            '\\' => Token::Literal(chars.next().ok_or(Pattern::LoneBackslash)?),
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    let start = match chars.next() {
                        None => return Err(Pattern::Unclosed),
                        Some(']') if !ranges.is_empty() => break,
                        Some('\\') => chars.next().ok_or(Pattern::Unclosed)?,
                        Some(c) => c,
                    };
                    let end = if chars.next_if_eq(&'-').is_some() {
                        match chars.next() {
                            None => return Err(Pattern::Unclosed),
                            Some('\\') => chars.next().ok_or(Pattern::Unclosed)?,
                            Some(c) => c,
                        }
                    } else {
                        start
                    };
                    if end < start {
                        return Err(Pattern::Backwards(start, end));
                    }
                    ranges.push((start, end));
                }
                Token::Class { negated, ranges }
            }
            other => Token::Literal(other),
        });
    }
    Ok(out)
}

/// Whether the whole of `path` matches `tokens`.
fn matches(tokens: &[Token], path: &str) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return path.is_empty();
    };
    let mut chars = path.chars();
    match token {
        Token::Literal(c) => chars.next() == Some(*c) && matches(rest, chars.as_str()),
        Token::One => chars.next().is_some_and(|c| c != '/') && matches(rest, chars.as_str()),
        Token::Class { negated, ranges } => {
            chars.next().is_some_and(|c| {
                c != '/' && ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != *negated
            }) && matches(rest, chars.as_str())
        }
        Token::Star => {
            let run = path.find('/').unwrap_or(path.len());
            char_boundaries(&path[..run]).any(|at| matches(rest, &path[at..]))
        }
        Token::Anything => char_boundaries(path).any(|at| matches(rest, &path[at..])),
        Token::Directories => {
            matches(rest, path)
                || path
                    .match_indices('/')
                    .any(|(at, _)| matches(rest, &path[at + 1..]))
        }
    }
}

/// Every place a `&str` can be split: 0, each character's end.
fn char_boundaries(text: &str) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(text.char_indices().map(|(at, c)| at + c.len_utf8()))
}

/// The context directory as a tar: every file, directory and symlink under it (symlinks kept
/// as links, in a stable order) that `.dockerignore` does not exclude, and always the
/// Dockerfile and `.dockerignore`. `dockerfile` is the Dockerfile's path in the context.
pub fn context_tar(dir: &Path, dockerfile: &str) -> Result<Vec<u8>, Error> {
    let ignore_path = dir.join(".dockerignore");
    let rules = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => IgnoreRules::parse(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => return Err(IoError::at(format!("reading {}", ignore_path.display()))(e).into()),
    };
    let dockerfile = clean(dockerfile);
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let keep = |path: &str| path == dockerfile || path == ".dockerignore" || !rules.excludes(path);
    add_directory(&mut builder, dir, Path::new(""), &keep)?;
    let tar = builder
        .into_inner()
        .map_err(IoError::at("finishing the build context"))?;
    Ok(tar)
}

/// Adds what `keep` keeps of `dir/relative`, depth first in name order.
fn add_directory(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    relative: &Path,
    keep: &impl Fn(&str) -> bool,
) -> Result<(), Error> {
    let full = dir.join(relative);
    let reading = || IoError::at(format!("reading the build context {}", full.display()));
    let mut entries: Vec<_> = std::fs::read_dir(&full)
        .map_err(reading())?
        .collect::<Result<_, _>>()
        .map_err(reading())?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = relative.join(entry.file_name());
        let Some(path) = slash_path(&name) else {
            return Err(Error::NotUtf8(name));
        };
        if keep(&path) {
            let adding = format!("adding {} to the build context", entry.path().display());
            builder
                .append_path_with_name(entry.path(), &path)
                .map_err(IoError::at(adding))?;
        }
        // Directories are walked even when excluded: an exception may bring back a file.
        let kind = entry
            .file_type()
            .map_err(IoError::at(entry.path().display()))?;
        if kind.is_dir() {
            add_directory(builder, dir, &name, keep)?;
        }
    }
    Ok(())
}

fn slash_path(path: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = path
        .components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    Some(parts?.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_as_docker_matches_them() {
        let r = rules("# comment\n\n*.log\n/secret*\n./build/\ndocs/**/*.tmp\n");
        assert!(r.excludes("debug.log"));
        assert!(!r.excludes("sub/debug.log"), "* stays in one component");
        assert!(r.excludes("secret.txt") && r.excludes("secrets"));
        assert!(
            r.excludes("build") && r.excludes("build/out/a.o"),
            "a directory and all under it"
        );
        assert!(!r.excludes("src/build"));
        assert!(
            r.excludes("docs/a.tmp") && r.excludes("docs/x/y/a.tmp"),
            "**/ is any depth, none too"
        );
        assert!(!r.excludes("docs/a.md") && !r.excludes("a.tmp"));
        assert!(!r.excludes("# comment"));
    }

    #[test]
    fn the_last_matching_pattern_wins_and_exceptions_bring_files_back() {
        let r = rules("logs\n!logs/keep.log\n**/*.log\n!important.log\n");
        assert!(r.excludes("logs/other.txt"));
        assert!(
            r.excludes("logs/keep.log"),
            "a later **/*.log matches it again"
        );
        assert!(!r.excludes("important.log"));
        assert!(r.excludes("a/b/c.log"));
        let r = rules("*\n!keep/\n");
        assert!(r.excludes("anything"));
        assert!(!r.excludes("keep") && !r.excludes("keep/x"));
    }

    #[test]
    fn globs_classes_and_escapes() {
        let r = rules("file?.txt\n[a-c]*.bin\n[^x]z\nliteral\\*\nall/**\n");
        assert!(r.excludes("file1.txt") && !r.excludes("file10.txt") && !r.excludes("file/.txt"));
        assert!(r.excludes("b0.bin") && !r.excludes("d0.bin"));
        assert!(r.excludes("yz") && !r.excludes("xz"));
        assert!(r.excludes("literal*") && !r.excludes("literalx"));
        assert!(r.excludes("all/a/b") && !r.excludes("allx"));
        assert!(rules("**").excludes("any/thing"));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let err = IgnoreRules::parse("ok\n!\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(IgnoreRules::parse("[abc")
            .unwrap_err()
            .to_string()
            .contains("never closed"));
        assert!(IgnoreRules::parse("[z-a]")
            .unwrap_err()
            .to_string()
            .contains("backwards"));
        assert_eq!(
            IgnoreRules::parse("a\\").unwrap_err().to_string(),
            ".dockerignore line 1: \"a\\\\\": it ends with a lone \\"
        );
        // `/` and `.` name the context itself: nothing is excluded.
        assert!(!rules("/\n.\n").excludes("a"));
    }

    #[test]
    fn the_context_tar_leaves_out_what_is_ignored_but_keeps_the_build_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, data: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        write("Dockerfile", "FROM scratch\n");
        write(".dockerignore", "*\n!app\n");
        write("app/main.txt", "main\n");
        write("secret.txt", "secret\n");
        std::os::unix::fs::symlink("main.txt", dir.path().join("app/link")).unwrap();
        let tar = context_tar(dir.path(), "Dockerfile").unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                ".dockerignore",
                "Dockerfile",
                "app",
                "app/link",
                "app/main.txt"
            ]
        );
    }
}
