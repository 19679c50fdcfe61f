//! The Kubefile: a Dockerfile-like recipe, with sealer's instructions.
//!
//! [`parse`] turns the text into [`Instruction`]s, each with its line number,
//! and checks the rules that do not need the build context: every keyword is
//! known and has the arguments it needs, FROM comes first (only ARG may
//! precede it) and only once, LAUNCH and CMDS are unique and last, CMD and
//! LAUNCH exclude each other. Variables (`${NAME}`, `$NAME`) are kept as
//! written; the build expands them with [`expand`].
//!
//! Syntax, as both sealer generations read it: one instruction per line,
//! keywords case-insensitive, `#` starts a comment line, a trailing `\`
//! continues the line (the next line is appended as it is, without the
//! break; empty and comment lines inside a continuation are skipped; a file
//! that ends inside one ends the instruction there). Arguments are words
//! (double or single quotes group words; a backslash escapes the next
//! character) or, for RUN, CMD, CMDS, LAUNCH, APPCMDS and COPY, a JSON array.
//! Where the JSON does not parse, RUN, CMD and CMDS fall back to the shell
//! form, as sealer and Docker do; APPCMDS must be JSON, as in sealer.
//! COPY reads a source and a destination only: sealer ignores every later
//! word, so a trailing `# comment` is allowed (the words are kept in
//! [`InstructionKind::Copy`]'s `ignored` for the build to warn about).

use std::collections::BTreeMap;
use std::fmt;

/// Errors from parsing a Kubefile or expanding its variables.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {instruction}: {message}")]
pub struct KubefileError {
    /// The Kubefile's path, as given.
    pub file: String,
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction keyword (upper case), or `syntax`.
    pub instruction: String,
    /// What is wrong.
    pub message: String,
}

/// One parsed instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// The instruction as written, continuation lines joined.
    pub original: String,
    /// What it says.
    pub kind: InstructionKind,
}

impl Instruction {
    /// The keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        self.kind.keyword()
    }
}

/// What an instruction says. Strings are unexpanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstructionKind {
    /// `FROM [--platform=P] IMAGE` (`scratch` for none).
    From {
        /// The base image name or `scratch`.
        image: String,
        /// `--platform`, if given.
        platform: Option<String>,
    },
    /// `COPY SRC DEST`: one source (a path or glob relative to the context)
    /// and a destination, as sealer reads it.
    Copy {
        /// A path or glob relative to the context.
        source: String,
        /// Destination relative to the rootfs.
        dest: String,
        /// Words after the destination and `--chown`/`--chmod` flags, which
        /// sealer ignores (a trailing comment, or extra sources).
        ignored: Vec<String>,
    },
    /// `ADD SRC... DEST`: Docker's multi-source copy (sealer 0.9+ hands ADD
    /// to buildah unchanged); local sources only, archives are not unpacked.
    Add {
        /// Paths or globs relative to the context.
        sources: Vec<String>,
        /// Destination relative to the rootfs.
        dest: String,
    },
    /// `ENV K=V ...` or `ENV K V`.
    Env(Vec<(String, String)>),
    /// `ARG NAME[=DEFAULT]`.
    Arg {
        /// The argument's name.
        name: String,
        /// Its default, if any.
        default: Option<String>,
    },
    /// `LABEL K=V ...`.
    Label(Vec<(String, String)>),
    /// `RUN CMD` (shell form) or `RUN ["ARGV", ...]`.
    Run(Command),
    /// `CMD ...`: commands run after the cluster is up (see [`parse`] for
    /// the forms).
    Cmd(Vec<String>),
    /// `CMDS ["CMD", ...]`: commands run after the cluster is up.
    Cmds(Vec<String>),
    /// `LAUNCH ["APP", ...]`: applications run after the cluster is up.
    Launch(Vec<String>),
    /// `APP NAME local://PATH...`.
    App {
        /// The app's name.
        name: String,
        /// Its files, `local://` stripped.
        sources: Vec<String>,
    },
    /// `APPCMDS NAME ["CMD", ...]`.
    AppCmds {
        /// The app's name.
        name: String,
        /// Commands that launch it instead of the default.
        cmds: Vec<String>,
    },
    /// `APPENV NAME K=V ...`.
    AppEnv {
        /// The app's name.
        name: String,
        /// Environment for its commands.
        env: Vec<(String, String)>,
    },
    /// `CNI NAME local://PATH...`: an app that installs the network plugin.
    Cni {
        /// The app's name.
        name: String,
        /// Its files.
        sources: Vec<String>,
    },
    /// `CSI NAME local://PATH...`: an app that installs the storage plugin.
    Csi {
        /// The app's name.
        name: String,
        /// Its files.
        sources: Vec<String>,
    },
    /// `KUBEVERSION vX.Y.Z`.
    KubeVersion(String),
    /// `MAINTAINER TEXT`.
    Maintainer(String),
}

/// A RUN command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run with `sh -c`.
    Shell(String),
    /// Run this argv directly.
    Exec(Vec<String>),
}

impl InstructionKind {
    /// The keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::From { .. } => "FROM",
            Self::Copy { .. } => "COPY",
            Self::Add { .. } => "ADD",
            Self::Env(_) => "ENV",
            Self::Arg { .. } => "ARG",
            Self::Label(_) => "LABEL",
            Self::Run(_) => "RUN",
            Self::Cmd(_) => "CMD",
            Self::Cmds(_) => "CMDS",
            Self::Launch(_) => "LAUNCH",
            Self::App { .. } => "APP",
            Self::AppCmds { .. } => "APPCMDS",
            Self::AppEnv { .. } => "APPENV",
            Self::Cni { .. } => "CNI",
            Self::Csi { .. } => "CSI",
            Self::KubeVersion(_) => "KUBEVERSION",
            Self::Maintainer(_) => "MAINTAINER",
        }
    }

    /// Whether only sealer 0.9 and later read this instruction: sealer 0.8
    /// knows FROM, COPY, RUN, CMD and ARG only.
    pub fn only_in_sealer_09(&self) -> bool {
        !matches!(
            self,
            Self::From { .. } | Self::Copy { .. } | Self::Run(_) | Self::Cmd(_) | Self::Arg { .. }
        )
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// The longest Kubefile accepted, in bytes.
pub const MAX_KUBEFILE_SIZE: usize = 1024 * 1024;

/// Parses `text`, read from `file` (used in error messages).
pub fn parse(file: &str, text: &str) -> Result<Vec<Instruction>, KubefileError> {
    let err = |line: usize, instruction: &str, message: String| KubefileError {
        file: file.to_string(),
        line,
        instruction: instruction.to_string(),
        message,
    };
    if text.len() > MAX_KUBEFILE_SIZE {
        return Err(err(
            1,
            "syntax",
            format!("the Kubefile is larger than {MAX_KUBEFILE_SIZE} bytes"),
        ));
    }
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((idx, raw)) = lines.next() {
        let start = idx + 1;
        let raw = if idx == 0 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        let trimmed = raw.trim_start();
        if is_blank_or_comment(trimmed) {
            continue;
        }
        // A continued line is joined to the next as it is (no space added,
        // the next line's indentation kept), as sealer and Docker join them.
        let mut logical = String::new();
        let mut current = trimmed;
        loop {
            match strip_continuation(current) {
                Some(body) => {
                    logical.push_str(body);
                    // Empty and comment lines inside a continuation are
                    // skipped; the end of the file ends the instruction.
                    match lines
                        .by_ref()
                        .map(|(_, l)| l)
                        .find(|l| !is_blank_or_comment(l))
                    {
                        Some(next) => current = next,
                        None => break,
                    }
                }
                None => {
                    logical.push_str(current);
                    break;
                }
            }
        }
        let logical = logical.trim().to_string();
        let (word, rest) = match logical.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (logical.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        let kind = parse_instruction(&keyword, rest)
            .map_err(|e| err(start, &keyword_for_error(&keyword), e.to_string()))?;
        out.push(Instruction {
            line: start,
            original: logical.clone(),
            kind,
        });
    }
    validate(&out).map_err(|(line, kw, m)| err(line, kw, m))?;
    Ok(out)
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.trim_end().is_empty() || t.starts_with('#')
}

/// The line without its continuation backslash (and the blanks after it),
/// or `None` when it does not continue.
fn strip_continuation(line: &str) -> Option<&str> {
    line.trim_end_matches([' ', '\t', '\r']).strip_suffix('\\')
}

fn keyword_for_error(keyword: &str) -> String {
    if keyword.len() > 20 {
        format!(
            "{}...",
            &keyword[..keyword
                .char_indices()
                .nth(20)
                .map_or(keyword.len(), |(i, _)| i)]
        )
    } else {
        keyword.to_string()
    }
}

fn validate(ins: &[Instruction]) -> Result<(), (usize, &'static str, String)> {
    let Some(first_real) = ins
        .iter()
        .position(|i| !matches!(i.kind, InstructionKind::Arg { .. }))
    else {
        return Err((
            ins.first().map_or(1, |i| i.line),
            "FROM",
            "the Kubefile has no FROM instruction (use FROM scratch for an empty base)".into(),
        ));
    };
    if !matches!(ins[first_real].kind, InstructionKind::From { .. }) {
        return Err((
            ins[first_real].line,
            ins[first_real].keyword(),
            "the first instruction must be FROM (only ARG may come before it)".into(),
        ));
    }
    for kw in ["LAUNCH", "CMDS"] {
        let mut all = ins.iter().filter(|i| i.keyword() == kw);
        if let (Some(first), Some(second)) = (all.next(), all.next()) {
            return Err((
                second.line,
                kw,
                format!(
                    "only one {kw} is allowed (another is on line {})",
                    first.line
                ),
            ));
        }
    }
    let last = ins.len() - 1;
    let mut seen_cmd = None;
    let mut seen_launch = None;
    for (i, instr) in ins.iter().enumerate() {
        match &instr.kind {
            InstructionKind::From { .. } if i != first_real => {
                return Err((
                    instr.line,
                    "FROM",
                    format!(
                        "only one FROM is allowed (the first is on line {})",
                        ins[first_real].line
                    ),
                ))
            }
            InstructionKind::Launch(_) | InstructionKind::Cmds(_) => {
                let kw = instr.keyword();
                if i != last {
                    return Err((instr.line, kw, format!("{kw} must be the last instruction")));
                }
                if kw == "LAUNCH" {
                    seen_launch = Some(instr.line);
                }
            }
            InstructionKind::Cmd(_) => seen_cmd = seen_cmd.or(Some(instr.line)),
            _ => {}
        }
    }
    if let (Some(cmd), Some(launch)) = (seen_cmd, seen_launch) {
        return Err((
            launch,
            "LAUNCH",
            format!("CMD (line {cmd}) and LAUNCH exclude each other: use one of them"),
        ));
    }
    Ok(())
}

/// What is wrong with the arguments of one instruction.
#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    /// What the instruction needs or takes.
    #[error("{0}")]
    Usage(&'static str),
    /// A FROM flag other than `--platform`.
    #[error("unknown flag {0:?} (only --platform=OS/ARCH)")]
    FromFlag(String),
    /// A COPY flag other than `--chown` and `--chmod`.
    #[error("flag {0:?} is not supported (only --chown and --chmod, which are ignored)")]
    CopyFlag(String),
    /// A flag the instruction does not take.
    #[error("flag {0:?} is not supported")]
    Flag(String),
    /// An app without sources.
    #[error("app {0:?} needs at least one local://PATH")]
    AppWithoutSource(String),
    /// An app source on the network.
    #[error("source {0:?} is remote; download it into the build context and use local://PATH")]
    RemoteSource(String),
    /// An app source not written `local://PATH`.
    #[error("source {0:?} must be written local://PATH")]
    Source(String),
    /// A COPY source that is a URL.
    #[error("source {0:?} is a URL; download it into the build context and COPY it")]
    UrlSource(String),
    /// A Kubernetes version of another form.
    #[error("version {0:?} is not vMAJOR.MINOR[.PATCH]")]
    Version(String),
    /// A variable name of another form.
    #[error("{0:?} is not a valid variable name")]
    VarName(String),
    /// An app name of another form.
    #[error("app name {0:?} must be letters, digits, '-', '_' or '.', not starting with '.'")]
    AppName(String),
    /// A JSON array holding something else than strings.
    #[error("the JSON array holds {0}, not only strings")]
    JsonNotStrings(String),
    /// APPCMDS that are not a JSON array of strings.
    #[error("the value must be a JSON array of strings, APPCMDS {name} [\"executable\", \"param1\", ...] ({source})")]
    AppCmds {
        /// The app.
        name: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A word that is not `KEY=VALUE`.
    #[error("{0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// `=VALUE`.
    #[error("{0:?} has an empty key")]
    EmptyKey(String),
    /// `${` without `}`.
    #[error("unterminated ${{ in {0:?}")]
    UnterminatedVariable(String),
    /// A bad name inside `${...}`.
    #[error("in ${{{inner}}}: {source}")]
    InVariable {
        /// What the braces hold.
        inner: String,
        /// What is wrong with it.
        source: Box<SyntaxError>,
    },
}

fn parse_instruction(keyword: &str, rest: &str) -> Result<InstructionKind, SyntaxError> {
    let words = || split_words(rest);
    Ok(match keyword {
        "FROM" => {
            let mut w = words()?;
            let mut platform = None;
            while w.first().is_some_and(|f| f.starts_with("--")) {
                let flag = w.remove(0);
                match flag.strip_prefix("--platform=") {
                    Some(p) if !p.is_empty() => platform = Some(p.to_string()),
                    _ => return Err(SyntaxError::FromFlag(flag.to_string())),
                }
            }
            match w.as_slice() {
                [image] => InstructionKind::From {
                    image: image.clone(),
                    platform,
                },
                [] => return Err(SyntaxError::Usage("needs an image name (or scratch)")),
                [_, more @ ..] if more.first().is_some_and(|m| m.eq_ignore_ascii_case("as")) => {
                    return Err(SyntaxError::Usage(
                        "multi-stage builds (FROM ... AS ...) are not supported",
                    ))
                }
                [_, more @ ..] if more.first().is_some_and(|m| m.starts_with('#')) => {
                    return Err(SyntaxError::Usage(
                        "takes exactly one image name; a comment must be on its own line \
                         (sealer refuses it here too)",
                    ))
                }
                _ => return Err(SyntaxError::Usage("takes exactly one image name")),
            }
        }
        "COPY" => {
            let (flags, rest) = leading_flags(rest);
            let mut ignored = Vec::new();
            for flag in flags {
                if flag.starts_with("--chown=") || flag.starts_with("--chmod=") {
                    ignored.push(flag.to_string());
                } else {
                    return Err(SyntaxError::CopyFlag(flag.to_string()));
                }
            }
            // A trailing comment is cut off before quotes are read, so an
            // apostrophe in it is just text (sealer splits on blanks only).
            let (rest, comment) = split_trailing_comment(rest);
            let mut w = match json_prefix_array(rest)? {
                Some(list) => list,
                None => split_words(rest)?,
            };
            if w.len() < 2 {
                return Err(SyntaxError::Usage("needs a source and a destination"));
            }
            ignored.extend(w.split_off(2));
            ignored.extend(comment.map(str::to_string));
            let dest = w.pop().expect("len 2");
            let source = w.pop().expect("len 1");
            check_local(&source)?;
            InstructionKind::Copy {
                source,
                dest,
                ignored,
            }
        }
        "ADD" => {
            let mut w = words()?;
            if let Some(flag) = w.first().filter(|f| f.starts_with("--")) {
                return Err(SyntaxError::Flag(flag.to_string()));
            }
            if w.len() < 2 {
                return Err(SyntaxError::Usage(
                    "needs at least one source and a destination",
                ));
            }
            let dest = w.pop().expect("len >= 2");
            for s in &w {
                check_local(s)?;
            }
            InstructionKind::Add { sources: w, dest }
        }
        "ENV" => InstructionKind::Env(key_values(rest, true)?),
        "LABEL" => InstructionKind::Label(key_values(rest, false)?),
        "ARG" => {
            let w = words()?;
            let [one] = w.as_slice() else {
                return Err(SyntaxError::Usage("takes one NAME or NAME=DEFAULT"));
            };
            let (name, default) = match one.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (one.clone(), None),
            };
            check_var_name(&name)?;
            InstructionKind::Arg { name, default }
        }
        "RUN" => {
            if rest.is_empty() {
                return Err(SyntaxError::Usage("needs a command"));
            }
            match json_prefix_array(rest)? {
                Some(argv) if argv.is_empty() => {
                    return Err(SyntaxError::Usage("the command array is empty"))
                }
                Some(argv) => InstructionKind::Run(Command::Exec(argv)),
                // Not JSON: the shell form, as Docker reads it.
                None => InstructionKind::Run(Command::Shell(rest.to_string())),
            }
        }
        "CMD" => {
            if rest.is_empty() {
                return Err(SyntaxError::Usage("needs a command"));
            }
            let cmds = match json_prefix_array(rest)? {
                // `CMD ["kubectl apply -f a.yaml", "kubectl apply -f b.yaml"]`
                // is a list of commands (sealerio/applications writes it so);
                // `CMD ["kubectl", "apply", "-f", "a.yaml"]` is one argv.
                Some(list)
                    if list
                        .first()
                        .is_some_and(|c| c.contains(char::is_whitespace)) =>
                {
                    list
                }
                Some(argv) if argv.is_empty() => {
                    return Err(SyntaxError::Usage("the command array is empty"))
                }
                Some(argv) => vec![shell_join(&argv)],
                None => shell_form_commands(rest),
            };
            InstructionKind::Cmd(cmds)
        }
        "CMDS" => {
            let cmds = match json_prefix_array(rest)? {
                Some(list) => list,
                None if rest.is_empty() => Vec::new(),
                None => shell_form_commands(rest),
            };
            if cmds.is_empty() {
                return Err(SyntaxError::Usage(
                    "needs at least one command, as [\"CMD\", ...]",
                ));
            }
            InstructionKind::Cmds(cmds)
        }
        "LAUNCH" => {
            let apps = list_arg(rest)?;
            if apps.is_empty() {
                return Err(SyntaxError::Usage(
                    "needs at least one application name, as [\"APP\", ...]",
                ));
            }
            for a in &apps {
                check_app_name(a)?;
            }
            InstructionKind::Launch(apps)
        }
        "APP" | "CNI" | "CSI" => {
            let w = words()?;
            let Some((name, srcs)) = w.split_first() else {
                return Err(SyntaxError::Usage(
                    "needs a name and at least one local://PATH",
                ));
            };
            check_app_name(name)?;
            if srcs.is_empty() {
                return Err(SyntaxError::AppWithoutSource(name.to_string()));
            }
            let mut sources = Vec::new();
            for s in srcs {
                match s.strip_prefix("local://") {
                    Some(p) if !p.is_empty() => sources.push(p.to_string()),
                    _ if s.starts_with("http://") || s.starts_with("https://") => {
                        return Err(SyntaxError::RemoteSource(s.to_string()))
                    }
                    _ => return Err(SyntaxError::Source(s.to_string())),
                }
            }
            let name = name.clone();
            match keyword {
                "APP" => InstructionKind::App { name, sources },
                "CNI" => InstructionKind::Cni { name, sources },
                _ => InstructionKind::Csi { name, sources },
            }
        }
        "APPCMDS" => {
            let (name, rest) = rest
                .split_once(char::is_whitespace)
                .ok_or(SyntaxError::Usage("needs an app name and [\"CMD\", ...]"))?;
            check_app_name(name)?;
            // sealer reads the rest as strict JSON.
            let cmds: Vec<String> =
                serde_json::from_str(rest.trim()).map_err(|source| SyntaxError::AppCmds {
                    name: name.to_string(),
                    source,
                })?;
            if cmds.is_empty() {
                return Err(SyntaxError::Usage("needs at least one command"));
            }
            InstructionKind::AppCmds {
                name: name.to_string(),
                cmds,
            }
        }
        "APPENV" => {
            let (name, rest) = rest
                .split_once(char::is_whitespace)
                .ok_or(SyntaxError::Usage("needs an app name and KEY=VALUE..."))?;
            check_app_name(name)?;
            InstructionKind::AppEnv {
                name: name.to_string(),
                env: key_values(rest.trim(), false)?,
            }
        }
        "KUBEVERSION" => {
            let w = words()?;
            let [v] = w.as_slice() else {
                return Err(SyntaxError::Usage("takes one version, e.g. v1.22.15"));
            };
            let digits = v.strip_prefix('v').unwrap_or(v);
            let parts: Vec<&str> = digits.split('.').collect();
            if parts.len() < 2
                || parts.len() > 3
                || parts
                    .iter()
                    .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(SyntaxError::Version(v.to_string()));
            }
            InstructionKind::KubeVersion(v.clone())
        }
        "MAINTAINER" => {
            if rest.is_empty() {
                return Err(SyntaxError::Usage("needs a name"));
            }
            InstructionKind::Maintainer(rest.to_string())
        }
        "" => return Err(SyntaxError::Usage("empty instruction")),
        _ => {
            return Err(SyntaxError::Usage(
                "unknown instruction; known: FROM COPY ADD ENV ARG LABEL RUN CMD CMDS LAUNCH \
                 APP APPCMDS APPENV CNI CSI KUBEVERSION MAINTAINER",
            ))
        }
    })
}

fn check_var_name(name: &str) -> Result<(), SyntaxError> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SyntaxError::VarName(name.to_string()))
    }
}

fn check_app_name(name: &str) -> Result<(), SyntaxError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SyntaxError::AppName(name.to_string()))
    }
}

/// A JSON array of strings, or whitespace-separated words.
fn list_arg(rest: &str) -> Result<Vec<String>, SyntaxError> {
    match json_prefix_array(rest)? {
        Some(list) => Ok(list),
        None => split_words(rest),
    }
}

/// `Some` when `text` starts with a JSON array of strings (what follows it
/// is ignored, as Go's JSON decoder in sealer ignores it); `None` when it is
/// not JSON, so the caller falls back to its other form; an error when it is
/// a JSON array of something other than strings (sealer refuses that too).
fn json_prefix_array(text: &str) -> Result<Option<Vec<String>>, SyntaxError> {
    if !text.starts_with('[') {
        return Ok(None);
    }
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    let Some(Ok(serde_json::Value::Array(items))) = values.next() else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            other => Err(SyntaxError::JsonNotStrings(other.to_string())),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The shell form of CMD and CMDS. `[a, b]` that is not JSON (sealer 0.8's
/// documentation writes `CMD [kubectl apply -f mysql, kubectl apply -f redis]`)
/// is a list of commands separated by commas; anything else is one command,
/// run by the shell as written.
fn shell_form_commands(rest: &str) -> Vec<String> {
    let t = rest.trim();
    match t.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        Some(inner) => inner
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        None => vec![t.to_string()],
    }
}

/// An argv as one shell command line, each word quoted where it needs it.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` up to a `#` that starts a word outside quotes, and the comment
/// from that `#` on.
fn split_trailing_comment(text: &str) -> (&str, Option<&str>) {
    let mut quote = None;
    let mut escaped = false;
    let mut prev_blank = true;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            _ if escaped => escaped = false,
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('"'), '\\') | (None, '\\') => escaped = true,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if prev_blank => return (text[..i].trim_end(), Some(&text[i..])),
            _ => {}
        }
        prev_blank = c.is_whitespace();
    }
    (text, None)
}

/// Leading `--flag` words and the rest of the line.
fn leading_flags(rest: &str) -> (Vec<&str>, &str) {
    let mut flags = Vec::new();
    let mut rest = rest.trim_start();
    while rest.starts_with("--") {
        let (flag, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        flags.push(flag);
        rest = tail.trim_start();
    }
    (flags, rest)
}

fn check_local(source: &str) -> Result<(), SyntaxError> {
    if source.contains("://") {
        return Err(SyntaxError::UrlSource(source.to_string()));
    }
    Ok(())
}

fn key_values(rest: &str, allow_legacy_space: bool) -> Result<Vec<(String, String)>, SyntaxError> {
    if rest.is_empty() {
        return Err(SyntaxError::Usage("needs KEY=VALUE"));
    }
    let words = split_words(rest)?;
    if allow_legacy_space && !words[0].contains('=') {
        // `ENV KEY value with spaces`
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or(SyntaxError::Usage("needs KEY=VALUE or KEY VALUE"))?;
        check_var_name(k)?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| SyntaxError::NotKeyValue(w.to_string()))?;
        if k.is_empty() {
            return Err(SyntaxError::EmptyKey(w.to_string()));
        }
        if allow_legacy_space {
            check_var_name(k)?;
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Splits on whitespace; quotes group, a backslash escapes the next
/// character (outside single quotes). Quotes and escapes are removed, but a
/// `$` stays so variables can be expanded later (inside single quotes it is
/// escaped as `\$` so [`expand`] leaves it alone).
fn split_words(text: &str) -> Result<Vec<String>, SyntaxError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(SyntaxError::Usage("unterminated double quote")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(SyntaxError::Usage("unterminated double quote")),
                            Some('$') => cur.push_str("\\$"),
                            Some(e) => cur.push(e),
                        },
                        Some(o) => cur.push(o),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(SyntaxError::Usage("unterminated single quote")),
                        Some('\'') => break,
                        Some('$') => cur.push_str("\\$"),
                        Some('\\') => cur.push_str("\\\\"),
                        Some(o) => cur.push(o),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    None => cur.push('\\'),
                    Some('$') => cur.push_str("\\$"),
                    Some(e) => cur.push(e),
                }
            }
            o => {
                in_word = true;
                cur.push(o);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Expands `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alt}` from
/// `vars`; an unknown variable expands to the empty string, as in Docker.
/// `\$` yields a literal `$`.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> Result<String, SyntaxError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|(_, n)| *n == '$' || *n == '\\') => {
                out.push(chars.next().expect("peeked").1);
            }
            '$' => match chars.peek().map(|(_, n)| *n) {
                Some('{') => {
                    chars.next();
                    let mut inner = String::new();
                    let mut closed = false;
                    for (_, n) in chars.by_ref() {
                        if n == '}' {
                            closed = true;
                            break;
                        }
                        inner.push(n);
                    }
                    if !closed {
                        return Err(SyntaxError::UnterminatedVariable(text.to_string()));
                    }
                    let (name, op) = match inner.find(":-").or_else(|| inner.find(":+")) {
                        Some(i) => (&inner[..i], Some((&inner[i..i + 2], &inner[i + 2..]))),
                        None => (inner.as_str(), None),
                    };
                    check_var_name(name).map_err(|e| SyntaxError::InVariable {
                        inner: inner.clone(),
                        source: Box::new(e),
                    })?;
                    let value = vars.get(name).filter(|v| !v.is_empty());
                    match (op, value) {
                        (None, v) => out.push_str(v.map_or("", String::as_str)),
                        (Some((":-", d)), None) => out.push_str(d),
                        (Some((":-", _)), Some(v)) => out.push_str(v),
                        (Some((_, alt)), Some(_)) => out.push_str(alt),
                        (Some(_), None) => {}
                    }
                }
                Some(n) if n.is_ascii_alphabetic() || n == '_' => {
                    let mut name = String::new();
                    while let Some((_, n)) = chars.peek() {
                        if n.is_ascii_alphanumeric() || *n == '_' {
                            name.push(*n);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push_str(vars.get(&name).map_or("", String::as_str));
                }
                _ => out.push('$'),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<InstructionKind> {
        parse("Kubefile", text)
            .unwrap()
            .into_iter()
            .map(|i| i.kind)
            .collect()
    }

    fn error(text: &str) -> String {
        parse("Kubefile", text).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_instruction() {
        let text = r#"
# a comment
ARG VERSION=v1.19.8
FROM --platform=linux/amd64 kubernetes:${VERSION}
copy bin/${ARCH}/kubeadm \
     bin/ # the binary
ADD imageList kubeadm.yml etc/
ENV A=1 B="two words"
ENV LEGACY some value
LABEL "io.example/x"=y z=1
RUN echo hi > x
RUN ["sh", "-c", "true"]
APP nginx local://nginx.yaml local://svc.yaml
APPCMDS nginx ["kubectl apply -f nginx.yaml"]
APPENV nginx NS=default MODE=fast
CNI calico local://calico.yaml
CSI openebs local://openebs.yaml
KUBEVERSION v1.22.15
MAINTAINER ops@example.com
LAUNCH ["calico", "nginx"]
"#;
        let k = kinds(text);
        assert_eq!(k.len(), 17);
        assert_eq!(
            k[1],
            InstructionKind::From {
                image: "kubernetes:${VERSION}".into(),
                platform: Some("linux/amd64".into())
            }
        );
        assert_eq!(
            k[2],
            InstructionKind::Copy {
                source: "bin/${ARCH}/kubeadm".into(),
                dest: "bin/".into(),
                ignored: vec!["# the binary".into()],
            }
        );
        assert_eq!(
            k[3],
            InstructionKind::Add {
                sources: vec!["imageList".into(), "kubeadm.yml".into()],
                dest: "etc/".into(),
            }
        );
        assert_eq!(
            k[4],
            InstructionKind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into())
            ])
        );
        assert_eq!(
            k[5],
            InstructionKind::Env(vec![("LEGACY".into(), "some value".into())])
        );
        assert_eq!(
            k[6],
            InstructionKind::Label(vec![
                ("io.example/x".into(), "y".into()),
                ("z".into(), "1".into())
            ])
        );
        assert_eq!(
            k[7],
            InstructionKind::Run(Command::Shell("echo hi > x".into()))
        );
        assert_eq!(
            k[8],
            InstructionKind::Run(Command::Exec(vec!["sh".into(), "-c".into(), "true".into()]))
        );
        assert_eq!(
            k[9],
            InstructionKind::App {
                name: "nginx".into(),
                sources: vec!["nginx.yaml".into(), "svc.yaml".into()]
            }
        );
        assert_eq!(
            k[10],
            InstructionKind::AppCmds {
                name: "nginx".into(),
                cmds: vec!["kubectl apply -f nginx.yaml".into()]
            }
        );
        assert_eq!(k[14], InstructionKind::KubeVersion("v1.22.15".into()));
        assert_eq!(
            k[16],
            InstructionKind::Launch(vec!["calico".into(), "nginx".into()])
        );
    }

    #[test]
    fn errors_name_file_line_and_instruction() {
        assert_eq!(
            error("FROM scratch\n\nCOPY onlyone\n"),
            "Kubefile:3: COPY: needs a source and a destination"
        );
        assert!(error("FROM scratch\nFROBNICATE x\n")
            .starts_with("Kubefile:2: FROBNICATE: unknown instruction"));
        assert!(
            error("COPY a b\n").starts_with("Kubefile:1: COPY: the first instruction must be FROM")
        );
        assert!(error("FROM scratch\nCMDS [\"a\"]\nCOPY a b\n")
            .starts_with("Kubefile:2: CMDS: CMDS must be the last"));
        assert!(error("FROM scratch\nLAUNCH [\"a\"]\nLAUNCH [\"a\"]\n")
            .starts_with("Kubefile:3: LAUNCH: only one LAUNCH"));
        assert!(error("FROM scratch\nCMD x\nLAUNCH [\"a\"]\n").contains("exclude each other"));
        assert!(error("FROM scratch\nENV A=\"x\n")
            .starts_with("Kubefile:2: ENV: unterminated double quote"));
        assert!(error("FROM scratch\nRUN [\"a\", 1]\n")
            .starts_with("Kubefile:2: RUN: the JSON array holds 1, not only strings"));
        assert!(error("FROM scratch\nAPP x http://a/b.yaml\n").contains("remote"));
        assert!(error("FROM scratch\nKUBEVERSION latest\n").starts_with("Kubefile:2: KUBEVERSION"));
        assert!(error("FROM scratch\nFROM scratch\n").contains("only one FROM"));
        assert!(error("FROM scratch\nCOPY --from=base a b\n")
            .contains("\"--from=base\" is not supported"));
        assert!(error("FROM kubernetes:v1.19.8 # base\n").starts_with(
            "Kubefile:1: FROM: takes exactly one image name; a comment must be on its own line"
        ));
        assert!(
            error("FROM scratch\nAPP a local://a.yaml\nAPPCMDS a kubectl apply -f a.yaml\n")
                .starts_with("Kubefile:3: APPCMDS: the value must be a JSON array of strings")
        );
        assert!(error("").contains("no FROM"));
    }

    #[test]
    fn continuation_lines_keep_the_starting_line_number() {
        let ins = parse(
            "K",
            "FROM scratch\nRUN a \\\n  # skipped\n\n  b\nCOPY x y\n",
        )
        .unwrap();
        assert_eq!(ins[1].line, 2);
        // Joined as sealer and Docker join: the next line as it is, no
        // space added; comment and empty lines inside are skipped.
        assert_eq!(
            ins[1].kind,
            InstructionKind::Run(Command::Shell("a   b".into()))
        );
        assert_eq!(ins[2].line, 6);
        let ins = parse("K", "FROM scratch\nRUN echo a\\\nb\n").unwrap();
        assert_eq!(
            ins[1].kind,
            InstructionKind::Run(Command::Shell("echo ab".into()))
        );
        // The end of the file ends a continued instruction.
        let ins = parse("K", "FROM scratch\nRUN a \\").unwrap();
        assert_eq!(
            ins[1].kind,
            InstructionKind::Run(Command::Shell("a".into()))
        );
    }

    #[test]
    fn expands_variables() {
        let vars: BTreeMap<String, String> = [
            ("ARCH".to_string(), "amd64".to_string()),
            ("E".to_string(), String::new()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            expand("bin/${ARCH}/x-$ARCH.tgz", &vars).unwrap(),
            "bin/amd64/x-amd64.tgz"
        );
        assert_eq!(
            expand("${NOPE}-${E:-d}-${ARCH:+set}", &vars).unwrap(),
            "-d-set"
        );
        assert_eq!(expand("\\$ARCH $ 5", &vars).unwrap(), "$ARCH $ 5");
        assert!(expand("${ARCH", &vars).is_err());
        // Single quotes protect variables from expansion.
        let w = split_words("'$ARCH' \"$ARCH\"").unwrap();
        assert_eq!(expand(&w[0], &vars).unwrap(), "$ARCH");
        assert_eq!(expand(&w[1], &vars).unwrap(), "amd64");
    }

    #[test]
    fn cmd_and_cmds_forms_as_sealer_documents_them() {
        let cmd = |line: &str| match &kinds(&format!("FROM scratch\n{line}\n"))[1] {
            InstructionKind::Cmd(c) | InstructionKind::Cmds(c) => c.clone(),
            other => panic!("{other:?}"),
        };
        // Shell form, trailing comment left to the shell (sealer's docs).
        assert_eq!(
            cmd("CMD helm list # multi CMD is valid"),
            ["helm list # multi CMD is valid"]
        );
        // sealer 0.8's documentation: a bracketed list that is not JSON.
        assert_eq!(
            cmd("CMD [kubectl apply -f mysql, kubectl apply -f redis, kubectl apply -f saas]"),
            [
                "kubectl apply -f mysql",
                "kubectl apply -f redis",
                "kubectl apply -f saas"
            ]
        );
        // sealerio/applications: a JSON list of whole commands.
        assert_eq!(
            cmd(
                r#"CMD ["kubectl apply -f manifests/bundle.yaml", "kubectl apply -f manifests/cr.yaml"]"#
            ),
            [
                "kubectl apply -f manifests/bundle.yaml",
                "kubectl apply -f manifests/cr.yaml"
            ]
        );
        // Docker's exec form: one argv, quoted for the shell.
        assert_eq!(
            cmd(r#"CMD ["sh", "-c", "kubectl get nodes; echo it's up"]"#),
            [r#"sh -c 'kubectl get nodes; echo it'\''s up'"#]
        );
        // CMDS: JSON (what follows the array is ignored, as Go's decoder
        // in sealer ignores it), else the shell form.
        assert_eq!(
            cmd(r#"CMDS ["kubectl apply -f a.yaml", "echo done"] # two"#),
            ["kubectl apply -f a.yaml", "echo done"]
        );
        assert_eq!(
            cmd("CMDS kubectl apply -f a.yaml"),
            ["kubectl apply -f a.yaml"]
        );
        assert_eq!(
            cmd("CMDS [kubectl apply -f a.yaml, echo done]"),
            ["kubectl apply -f a.yaml", "echo done"]
        );
        // RUN: not JSON is the shell form.
        assert_eq!(
            kinds("FROM scratch\nRUN [ -d etc ] && echo yes\n")[1],
            InstructionKind::Run(Command::Shell("[ -d etc ] && echo yes".into()))
        );
    }

    #[test]
    fn copy_reads_a_source_and_a_destination_as_sealer_does() {
        let copy = |line: &str| kinds(&format!("FROM scratch\n{line}\n")).remove(1);
        assert_eq!(
            copy("COPY ${ARCH}/helm bin # copy binary file,make sure the build context's got it"),
            InstructionKind::Copy {
                source: "${ARCH}/helm".into(),
                dest: "bin".into(),
                ignored: vec!["# copy binary file,make sure the build context's got it".into()],
            }
        );
        assert_eq!(
            copy(r#"cOpY ["my file.yaml", "manifests/"]"#),
            InstructionKind::Copy {
                source: "my file.yaml".into(),
                dest: "manifests/".into(),
                ignored: vec![],
            }
        );
        assert_eq!(
            copy("COPY 'my #1.yaml' manifests#x #"),
            InstructionKind::Copy {
                source: "my #1.yaml".into(),
                dest: "manifests#x".into(),
                ignored: vec!["#".into()],
            }
        );
        assert_eq!(
            copy("COPY --chown=1000:1000 a b c"),
            InstructionKind::Copy {
                source: "a".into(),
                dest: "b".into(),
                ignored: vec!["--chown=1000:1000".into(), "c".into()],
            }
        );
        assert!(
            error("FROM scratch\nCOPY http://example.com/a.yaml manifests\n")
                .starts_with("Kubefile:2: COPY: source \"http://example.com/a.yaml\" is a URL")
        );
    }

    #[test]
    fn only_sealer_09_instructions_are_marked() {
        let ins = kinds(
            "ARG A=1\nFROM scratch\nCOPY a b\nRUN x\nCMD y\nLABEL k=v\nAPP n local://a.yaml\nCMDS [\"n\"]\n",
        );
        let marked: Vec<&str> = ins
            .iter()
            .filter(|k| k.only_in_sealer_09())
            .map(InstructionKind::keyword)
            .collect();
        assert_eq!(marked, ["LABEL", "APP", "CMDS"]);
    }
}
