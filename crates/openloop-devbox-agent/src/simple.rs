//! Simple commands, run without `bash`.
//!
//! Every command is `bash -c COMMAND`, and `bash -c` runs a command that is one simple
//! command by executing the program in its own place (no fork). Starting `bash` for that costs
//! about 0.4 ms of the command's time here, as much again as the program itself. So when a
//! command is one program and its plain words (no quoting, expansion, redirection or
//! operator of any kind) and `bash` would run that program, the agent executes it itself, with
//! the arguments, `argv[0]` and environment `bash` would give it: the same process, in the
//! same place of the process tree, with the same exit status. Like GNU make's fast path,
//! with a stricter test. Anything else, or anything this cannot be sure of, goes to `bash`:
//! - a builtin or reserved word first (except `true` and `false` alone, when the system's
//!   own programs of that name are the ones `PATH` finds: they do what the builtins do);
//! - a variable assignment, or an environment variable that `bash`, the dynamic loader,
//!   glibc or the locale act on as a program starts;
//! - a program not found or not executable (`bash` prints its error), or found through a
//!   relative `PATH` entry;
//! - a command too long to be one argument (`bash -c` cannot take it);
//! - a program that cannot be executed as it is (a script without `#!`, which `bash` runs
//!   itself): the spawn fails before anything runs, and `exec.rs` hands it to `bash`;
//! - any command in a devbox with `sudo` (`exec.rs`), whose agent is root and cannot check
//!   what the user may execute the way `bash` would.
//!
//! The one visible difference: the environment's variables come in another order.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A command the agent executes itself: the program's path, its `argv` (the first is
/// `argv[0]`, as typed), and the variables `bash` adds to its environment.
#[derive(Debug, PartialEq, Eq)]
pub struct Direct {
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub extra_env: Vec<(&'static str, String)>,
}

/// `bash`'s builtins and reserved words (`compgen -b`, `compgen -k` of bash 5.2): a command
/// starting with one runs in `bash` itself.
const SHELL_WORDS: &[&str] = &[
    ".",
    ":",
    "[",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "case",
    "esac",
    "for",
    "select",
    "while",
    "until",
    "do",
    "done",
    "in",
    "function",
    "time",
    "{",
    "}",
    "!",
    "[[",
    "]]",
    "coproc",
];

/// Builtins whose programs behave the same when given no argument (exit 0 or 1, no output):
/// only the system's own, where the devbox user cannot replace them (a `true` earlier in
/// `PATH` is not what bash's builtin does).
const SAME_AS_PROGRAM_ALONE: &[(&str, &[&str])] = &[
    ("true", &["/usr/bin/true", "/bin/true"]),
    ("false", &["/usr/bin/false", "/bin/false"]),
];

/// Prefixes of environment variables that change how a program starts or what bash says as
/// it starts (the dynamic loader's, glibc's, the locale's): with one, the command goes to
/// bash, whose own start they act on too.
const STARTUP_PREFIXES: &[&str] = &["BASH", "COMP_", "LD_", "LC_", "MALLOC_", "GLIBC_", "GCONV_"];

/// The locale the agent gives every command, which bash sets without a word. Any other
/// `LANG` goes to bash (which warns about one it cannot set).
pub const AGENT_LANG: &str = "C.UTF-8";

/// The longest single argument Linux passes (`MAX_ARG_STRLEN`, with its NUL): `bash -c`
/// cannot be given a longer command, so neither is the program.
const MAX_ARGUMENT: usize = 128 * 1024;

/// Environment variables `bash` reads at start or sets, resets or drops before it runs a
/// program (`bash -c env` with each set shows it): with any of these the command goes to
/// `bash`, as do those of [`STARTUP_PREFIXES`] (`BASH…` holds exported functions).
const SHELL_VARIABLES: &[&str] = &[
    "LOCPATH",
    "NLSPATH",
    "_",
    "ENV",
    "SHELLOPTS",
    "POSIXLY_CORRECT",
    "IFS",
    "LINENO",
    "OPTERR",
    "OPTIND",
    "OPTARG",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "PPID",
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "EPOCHSECONDS",
    "EPOCHREALTIME",
    "HISTCMD",
    "DIRSTACK",
    "OLDPWD",
    "PWD",
    "GROUPS",
    "FUNCNAME",
    "UID",
    "EUID",
    "HOSTNAME",
    "HOSTTYPE",
    "MACHTYPE",
    "OSTYPE",
    "PIPESTATUS",
    "TMOUT",
    "CDPATH",
    "GLOBIGNORE",
    "HISTFILE",
    "MAILCHECK",
    "COLUMNS",
    "LINES",
    "REPLY",
];

/// A byte that may appear in a plain word: nothing `bash` treats specially anywhere in a
/// word (quotes, `$`, globs, `~`, `=`, operators, comments, braces, history, backslash).
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b',' | b':' | b'+' | b'@')
}

/// How `bash -c command` would run `command` in `cwd` with `env` (the whole environment the
/// agent gives it), when it would execute one program with plain words; None otherwise.
pub fn direct(command: &str, env: &BTreeMap<String, String>, cwd: &Path) -> Option<Direct> {
    if command.len() >= MAX_ARGUMENT
        || !command.bytes().all(|b| plain(b) || b == b' ' || b == b'\t')
    {
        return None;
    }
    let argv: Vec<String> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let first = argv.first()?;
    let builtin = SHELL_WORDS.contains(&first.as_str());
    let twins = SAME_AS_PROGRAM_ALONE
        .iter()
        .find(|(name, _)| name == first)
        .map(|(_, paths)| *paths);
    if builtin && !(argv.len() == 1 && twins.is_some()) {
        return None;
    }
    if env.iter().any(|(k, v)| {
        k.is_empty()
            || k.contains('=')
            || STARTUP_PREFIXES.iter().any(|p| k.starts_with(p))
            || SHELL_VARIABLES.contains(&k.as_str())
            || (k == "LANG" && v != AGENT_LANG)
    }) {
        return None;
    }
    // `bash` passes on a plain non-negative level unchanged (it adds one for itself and takes
    // it back as it gives its place to the program), and none as 0.
    let shlvl = match env.get("SHLVL") {
        None => "0".to_string(),
        // Digits as bash would write them back (no sign, no leading zero), below its cap.
        Some(v)
            if v.bytes().all(|b| b.is_ascii_digit())
                && (v == "0" || !v.starts_with('0'))
                && v.parse::<u32>().is_ok_and(|n| n < 999) =>
        {
            v.clone()
        }
        Some(_) => return None,
    };
    let (program, underscore) = if first.contains('/') {
        // Run as named, relative to the working directory the spawn enters (a script's
        // interpreter sees the name as typed, as under bash); `_` is that name too.
        if !executable(&cwd.join(first)) {
            return None;
        }
        (PathBuf::from(first), first.clone())
    } else {
        let found = search(first, env.get("PATH")?)?;
        if twins.is_some_and(|paths| !paths.iter().any(|p| Path::new(p) == found)) {
            return None;
        }
        let shown = found.to_string_lossy().into_owned();
        (found, shown)
    };
    // `bash` sets `PWD` to the working directory as `getcwd` names it (links resolved).
    let pwd = std::fs::canonicalize(cwd).ok()?;
    Some(Direct {
        program,
        argv,
        extra_env: vec![
            ("PWD", pwd.to_str()?.to_string()),
            ("SHLVL", shlvl),
            ("_", underscore),
        ],
    })
}

/// The first executable file named `name` in `path`'s directories, as `bash` searches them;
/// None when there is none, or the search reaches a relative directory (whose name `bash`
/// would give `_` as it stands: not worth matching).
fn search(name: &str, path: &str) -> Option<PathBuf> {
    for dir in path.split(':') {
        if !dir.starts_with('/') {
            return None;
        }
        let candidate = Path::new(dir).join(name);
        if executable(&candidate) {
            return Some(candidate);
        }
    }
    None
}

/// Whether `path` is a file (not a directory) that this process may execute.
fn executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        return false;
    }
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    unsafe { libc::access(c.as_ptr() as *const libc::c_char, libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn env(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut e: BTreeMap<String, String> = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            e.insert(k.to_string(), v.to_string());
        }
        e
    }

    /// Output and exit status of `command` run by `bash -c`, and run directly.
    fn both(
        command: &str,
        env: &BTreeMap<String, String>,
        cwd: &Path,
    ) -> [(Vec<String>, Option<i32>); 2] {
        let by_bash = Command::new("/bin/bash")
            .arg("-c")
            .arg(command)
            .env_clear()
            .envs(env)
            .current_dir(cwd)
            .output()
            .unwrap();
        let d = direct(command, env, cwd).unwrap_or_else(|| panic!("{command:?} runs directly"));
        let mut cmd = Command::new(&d.program);
        {
            use std::os::unix::process::CommandExt;
            cmd.arg0(&d.argv[0]);
        }
        let by_agent = cmd
            .args(&d.argv[1..])
            .env_clear()
            .envs(env)
            .envs(d.extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(cwd)
            .output()
            .unwrap();
        [by_bash, by_agent].map(|o| {
            // The same variables, in either order.
            let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            lines.sort();
            (lines, o.status.code())
        })
    }

    #[test]
    fn a_simple_command_runs_as_bash_would_run_it() {
        let dir = tempfile_dir();
        let link = dir.join("link");
        let real = dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        std::fs::copy("/usr/bin/env", real.join("myenv")).unwrap();
        let script = real.join("args.sh");
        std::fs::write(&script, "#!/bin/sh\necho \"$0\" \"$@\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for (command, extra, cwd) in [
            ("env", vec![], Path::new("/")),
            ("  env  -u  HOME ", vec![], Path::new("/")),
            (
                "/usr/bin/env",
                vec![("SHLVL", "40"), ("API_KEY", "x y")],
                Path::new("/"),
            ),
            ("./myenv", vec![], link.as_path()),
            ("./args.sh a b", vec![], real.as_path()),
            ("../real/args.sh", vec![], link.as_path()),
            ("env", vec![("A-B", "1")], link.as_path()),
            ("true", vec![], Path::new("/")),
            ("false", vec![], Path::new("/")),
            ("ls -d /", vec![], Path::new("/")),
        ] {
            let [a, b] = both(command, &env(&extra), cwd);
            assert_eq!(a, b, "{command:?} with {extra:?} in {cwd:?}");
        }
        let [(_, code), _] = both("false", &env(&[]), Path::new("/"));
        assert_eq!(code, Some(1));
        // A file without the execute bit is for bash to refuse.
        std::fs::write(real.join("notes"), "ls\n").unwrap();
        assert_eq!(direct("./notes", &env(&[]), &real), None);
        // A `true` of the user's, earlier in PATH, is not bash's builtin.
        std::fs::copy("/usr/bin/false", real.join("true")).unwrap();
        let shadowed = format!("{}:/usr/bin:/bin", real.display());
        assert_eq!(direct("true", &env(&[("PATH", &shadowed)]), &real), None);
        assert!(direct("true", &env(&[]), &real).is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn anything_else_goes_to_bash() {
        let root = Path::new("/");
        for command in [
            "",
            "   ",
            "echo hi",
            "true --help",
            "false 1",
            "cd /tmp",
            "exit 3",
            "time ls",
            "A=1 env",
            "ls *",
            "ls ~",
            "ls $HOME",
            "ls; ls",
            "ls | cat",
            "ls > x",
            "ls && ls",
            "ls \"a b\"",
            "ls 'a'",
            "ls a\\ b",
            "ls\nls",
            "ls # comment",
            "ls {a,b}",
            "! ls",
            "no-such-program-here",
            "/no/such/program",
            "/usr",
        ] {
            assert_eq!(direct(command, &env(&[]), root), None, "{command:?}");
        }
        for var in [
            "BASH_ENV",
            "BASH_FUNC_ls%%",
            "SHELLOPTS",
            "IFS",
            "PWD",
            "OLDPWD",
            "_",
            "ENV",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LC_ALL",
            "GLIBC_TUNABLES",
            "MALLOC_CHECK_",
            "",
            "A=B",
        ] {
            assert_eq!(direct("ls", &env(&[(var, "x")]), root), None, "{var}");
        }
        for level in ["-1", "abc", "999", " 7", "", "07", "+7"] {
            assert_eq!(
                direct("ls", &env(&[("SHLVL", level)]), root),
                None,
                "{level:?}"
            );
        }
        assert_eq!(direct("ls", &env(&[("PATH", "bin:/usr/bin")]), root), None);
        assert_eq!(direct("ls", &env(&[("LANG", "xx")]), root), None);
        assert!(direct("ls", &env(&[("LANG", "C.UTF-8")]), root).is_some());
        let long = format!("ls {}", "a".repeat(MAX_ARGUMENT));
        assert_eq!(direct(&long, &env(&[]), root), None);
        assert_eq!(direct("ls", &BTreeMap::new(), root), None, "no PATH");
        assert_eq!(direct("ls", &env(&[]), Path::new("/no/such/dir")), None);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("openloop-agent-simple-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
