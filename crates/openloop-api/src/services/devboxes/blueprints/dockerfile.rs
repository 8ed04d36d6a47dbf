//! The Dockerfile of a blueprint, parsed into the steps a build runs.
//!
//! Supported: `FROM openloop-base` (the base image) or `FROM <blueprint name or id>` (one
//! stage; `AS <name>` is ignored), `RUN` (shell or JSON form), `ENV`, `ARG`, `WORKDIR`,
//! `USER`, `COPY [--chown=…] <src>… <dest>` from the build context, and `LABEL`, `EXPOSE`
//! (accepted, no effect). Anything else is an error naming the line, never a panic.

use serde::Serialize;
use std::collections::BTreeMap;

/// What a blueprint is built on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum From {
    /// The Openloop base image (`FROM openloop-base`).
    Base,
    /// Another blueprint of the same owner, by name (its newest build) or id.
    Blueprint(String),
}

/// The name of the base image in `FROM`.
pub const BASE: &str = "openloop-base";

/// One build step, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Step {
    /// A shell command (as `USER` says: root unless `USER user` came before).
    Run(String),
    /// Context files (by context path) to a destination, optionally owned by a user.
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
    },
    /// Environment for later steps and for devboxes.
    Env(Vec<(String, String)>),
    /// A build argument: its value from `build_args`, else the default; later steps only.
    Arg(String, Option<String>),
    Workdir(String),
    User(String),
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    pub from: From,
    pub steps: Vec<Step>,
}

/// Lines joined over trailing backslashes, comments and blank lines dropped; each with
/// the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (n, mut line) = current.take().unwrap_or((i + 1, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                line.push_str(head);
                line.push(' ');
                current = Some((n, line));
            }
            None => {
                line.push_str(trimmed);
                out.push((n, line));
            }
        }
    }
    if let Some((n, line)) = current {
        out.push((n, line));
    }
    out
}

/// Shell-like words: whitespace separates, single and double quotes group, a backslash
/// escapes the next character (outside single quotes).
pub fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => word.push(x),
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(x) => word.push(x),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    word.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `KEY=value …` pairs, or the legacy `KEY value with spaces`.
fn env_pairs(args: &str) -> Result<Vec<(String, String)>, String> {
    let ws = words(args)?;
    let first = ws.first().ok_or("ENV needs KEY=value")?;
    let pairs: Vec<(String, String)> = if first.contains('=') {
        ws.iter()
            .map(|w| {
                w.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| format!("`{w}` is not KEY=value"))
            })
            .collect::<Result<_, _>>()?
    } else {
        let (k, v) = args
            .trim()
            .split_once(char::is_whitespace)
            .ok_or("ENV needs KEY=value")?;
        vec![(k.to_string(), words(v)?.join(" "))]
    };
    for (k, _) in &pairs {
        if !valid_env_name(k) {
            return Err(format!("`{k}` is not a valid environment variable name"));
        }
    }
    Ok(pairs)
}

/// A JSON-form command (`["a", "b"]`) as one shell command line; a shell-form one as is.
fn command_of(args: &str) -> Result<String, String> {
    let t = args.trim();
    if t.starts_with('[') {
        if let Ok(parts) = serde_json::from_str::<Vec<String>>(t) {
            if parts.is_empty() {
                return Err("an empty command".into());
            }
            return Ok(parts
                .iter()
                .map(|p| crate::services::devboxes::shell_quote(p))
                .collect::<Vec<_>>()
                .join(" "));
        }
    }
    if t.is_empty() {
        return Err("an empty command".into());
    }
    Ok(t.to_string())
}

/// A context path as given to `COPY`: relative, no `..`, no empty name; `./` and trailing
/// `/` dropped. `.` is the whole context (the empty string).
pub fn context_path(p: &str) -> Result<String, String> {
    if p.starts_with('/') {
        return Err(format!(
            "COPY source `{p}` is absolute; sources are paths in the build context (the relative keys of file_mounts)"
        ));
    }
    let mut parts = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "COPY source `{p}` leaves the build context (`..` is not allowed)"
                ))
            }
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

fn parse_copy(args: &str) -> Result<Step, String> {
    let t = args.trim();
    let mut ws = if t.starts_with('[') {
        serde_json::from_str::<Vec<String>>(t).map_err(|e| format!("JSON form: {e}"))?
    } else {
        words(t)?
    };
    let mut chown = None;
    while ws.first().is_some_and(|w| w.starts_with("--")) {
        let flag = ws.remove(0);
        match flag.split_once('=') {
            Some(("--chown", who)) if !who.is_empty() => chown = Some(who.to_string()),
            _ => {
                return Err(format!(
                    "COPY option `{flag}` is not supported (only --chown)"
                ))
            }
        }
    }
    if ws.len() < 2 {
        return Err("COPY needs at least one source and a destination".into());
    }
    let dest = ws.pop().unwrap_or_default();
    let sources = ws
        .iter()
        .map(|s| context_path(s))
        .collect::<Result<_, _>>()?;
    Ok(Step::Copy {
        sources,
        dest,
        chown,
    })
}

/// Parse `text`. Errors name the line and say what is wrong.
pub fn parse(text: &str) -> Result<Dockerfile, String> {
    let mut from = None;
    let mut steps = Vec::new();
    for (n, line) in logical_lines(text) {
        let (word, args) = line
            .split_once(char::is_whitespace)
            .map(|(w, a)| (w, a.trim()))
            .unwrap_or((line.as_str(), ""));
        let at = |e: String| format!("Dockerfile line {n}: {e}");
        let instruction = word.to_ascii_uppercase();
        if from.is_none() && !matches!(instruction.as_str(), "FROM" | "ARG") {
            return Err(at(format!(
                "{instruction} before FROM; start with `FROM {BASE}` or `FROM <blueprint name>`"
            )));
        }
        let step = match instruction.as_str() {
            "FROM" => {
                if from.is_some() {
                    return Err(at("only one FROM (one stage) is supported".into()));
                }
                let ws = words(args).map_err(at)?;
                let image = match ws.as_slice() {
                    [image] => image,
                    [image, as_, _] if as_.eq_ignore_ascii_case("as") => image,
                    _ => return Err(at(format!("FROM takes one name: `FROM {BASE}` or `FROM <blueprint name>`"))),
                };
                from = Some(match image.as_str() {
                    BASE => From::Base,
                    name => From::Blueprint(name.to_string()),
                });
                continue;
            }
            "RUN" => Step::Run(command_of(args).map_err(at)?),
            "ENV" => Step::Env(env_pairs(args).map_err(at)?),
            "ARG" => {
                let (k, v) = match args.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(words(v).map_err(at)?.join(" "))),
                    None => (args.trim(), None),
                };
                if !valid_env_name(k) {
                    return Err(at(format!("`{k}` is not a valid argument name")));
                }
                if from.is_none() {
                    // An ARG before FROM only parameterises FROM, which takes no variables here.
                    continue;
                }
                Step::Arg(k.to_string(), v)
            }
            "WORKDIR" => {
                let ws = words(args).map_err(at)?;
                match ws.as_slice() {
                    [dir] => Step::Workdir(dir.clone()),
                    _ => return Err(at("WORKDIR takes one path".into())),
                }
            }
            "USER" => {
                let ws = words(args).map_err(at)?;
                match ws.as_slice() {
                    [who] => Step::User(who.clone()),
                    _ => return Err(at("USER takes one user".into())),
                }
            }
            "COPY" => parse_copy(args).map_err(at)?,
            "LABEL" | "EXPOSE" => continue,
            "ADD" => {
                return Err(at(
                    "ADD is not supported (no URLs or archives); use COPY with the build context"
                        .into(),
                ))
            }
            "CMD" | "ENTRYPOINT" | "SHELL" | "VOLUME" | "HEALTHCHECK" | "STOPSIGNAL"
            | "ONBUILD" | "MAINTAINER" => {
                return Err(at(format!(
                    "{instruction} is not supported in a blueprint (a devbox's entrypoint is given when it is created)"
                )))
            }
            other => return Err(at(format!("unknown instruction `{other}`"))),
        };
        steps.push(step);
    }
    let from = from.ok_or("the Dockerfile has no FROM; start with `FROM openloop-base`")?;
    Ok(Dockerfile { from, steps })
}

/// What `USER` may name: `user` (uid 1000, devboxes' default) or `root` (a blueprint that
/// ends as root makes root devboxes). Returns whether it is root.
pub fn is_root_user(who: &str) -> Result<bool, String> {
    let name = who.split(':').next().unwrap_or_default();
    match name {
        "root" | "0" => Ok(true),
        "user" | "1000" => Ok(false),
        other => Err(format!(
            "USER `{other}` does not exist in the image; use `user` (the devbox user) or `root`"
        )),
    }
}

/// What a devbox started from a blueprint gets: its ENV, WORKDIR and USER.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ImageConfig {
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_instructions() {
        let d = parse(
            "# a comment\nFROM openloop-base AS base\nARG V=1\nENV A=1 B=\"two words\"\nENV C three four\n\
             WORKDIR /app\nCOPY --chown=user ./pkg/a.py b.txt /app/\nRUN apt-get update && \\\n  echo hi\n\
             RUN [\"echo\", \"it's\"]\nLABEL x=y\nUSER user\n",
        )
        .unwrap();
        assert_eq!(d.from, From::Base);
        assert_eq!(
            d.steps,
            vec![
                Step::Arg("V".into(), Some("1".into())),
                Step::Env(vec![
                    ("A".into(), "1".into()),
                    ("B".into(), "two words".into())
                ]),
                Step::Env(vec![("C".into(), "three four".into())]),
                Step::Workdir("/app".into()),
                Step::Copy {
                    sources: vec!["pkg/a.py".into(), "b.txt".into()],
                    dest: "/app/".into(),
                    chown: Some("user".into()),
                },
                Step::Run("apt-get update &&  echo hi".into()),
                Step::Run("'echo' 'it'\\''s'".into()),
                Step::User("user".into()),
            ]
        );
        assert_eq!(
            parse("from my-bp\nrun true").unwrap().from,
            From::Blueprint("my-bp".into())
        );
    }

    #[test]
    fn bad_dockerfiles_are_errors_naming_the_line() {
        for (text, wanted) in [
            (
                "FROM openloop-base\nFROBNICATE x",
                "line 2: unknown instruction `FROBNICATE`",
            ),
            ("RUN true", "RUN before FROM"),
            ("", "no FROM"),
            ("FROM a\nFROM b", "only one FROM"),
            (
                "FROM openloop-base\nCOPY ../../etc/passwd /x",
                "leaves the build context",
            ),
            ("FROM openloop-base\nCOPY /etc/passwd /x", "is absolute"),
            ("FROM openloop-base\nCOPY a", "at least one source"),
            ("FROM openloop-base\nCOPY --from=x a b", "not supported"),
            (
                "FROM openloop-base\nADD http://x /y",
                "ADD is not supported",
            ),
            ("FROM openloop-base\nENV 1A=b", "not a valid"),
            ("FROM openloop-base\nENV A='x", "unterminated"),
            ("FROM openloop-base\nCMD [\"x\"]", "CMD is not supported"),
            ("FROM openloop-base\nRUN", "empty command"),
        ] {
            let e = parse(text).map(|_| ()).unwrap_err();
            assert!(e.contains(wanted), "{text:?}: {e}");
        }
        assert!(is_root_user("root").unwrap());
        assert!(!is_root_user("user:user").unwrap());
        assert!(is_root_user("nobody").is_err());
    }
}
