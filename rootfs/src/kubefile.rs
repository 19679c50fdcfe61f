//! The Kubefile: a Dockerfile-like recipe, with sealer's instructions.
//!
//! [`parse`] turns the text into [`Instruction`]s, each with its line number,
//! and checks the rules that do not need the build context: every keyword is
//! known and has the arguments it needs, FROM comes first (only ARG may
//! precede it) and only once, LAUNCH and CMDS are unique and last, CMD and
//! LAUNCH exclude each other. Variables (`${NAME}`, `$NAME`) are kept as
//! written; the build expands them with [`expand`].
//!
//! Syntax: one instruction per line, keywords case-insensitive, `#` starts a
//! comment line, a trailing `\` continues the line. Arguments are words
//! (double or single quotes group words; a backslash escapes the next
//! character) or, for RUN, CMD, CMDS, LAUNCH and APPCMDS, a JSON array.

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
    /// `COPY SRC... DEST` (and `ADD`, local sources only).
    Copy {
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
    /// `CMD CMD`: one command run after the cluster is up.
    Cmd(String),
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
    let mut lines = text.lines().enumerate().peekable();
    while let Some((idx, raw)) = lines.next() {
        let start = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut logical = String::new();
        let mut current = trimmed.to_string();
        loop {
            if let Some(stripped) = current.strip_suffix('\\') {
                logical.push_str(stripped);
                logical.push(' ');
                // Comment lines inside a continuation are skipped, as Docker does.
                let mut next = None;
                for (_, l) in lines.by_ref() {
                    let t = l.trim();
                    if t.starts_with('#') {
                        continue;
                    }
                    next = Some(t.to_string());
                    break;
                }
                match next {
                    Some(n) => current = n,
                    None => {
                        return Err(err(
                            start,
                            "syntax",
                            "the file ends inside a line continued with '\\'".into(),
                        ))
                    }
                }
            } else {
                logical.push_str(&current);
                break;
            }
        }
        let logical = logical.trim().to_string();
        let (word, rest) = match logical.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (logical.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        let kind = parse_instruction(&keyword, rest)
            .map_err(|m| err(start, &keyword_for_error(&keyword), m))?;
        out.push(Instruction {
            line: start,
            original: logical.clone(),
            kind,
        });
    }
    validate(&out).map_err(|(line, kw, m)| err(line, kw, m))?;
    Ok(out)
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

fn parse_instruction(keyword: &str, rest: &str) -> Result<InstructionKind, String> {
    let words = || split_words(rest);
    Ok(match keyword {
        "FROM" => {
            let mut w = words()?;
            let mut platform = None;
            while w.first().is_some_and(|f| f.starts_with("--")) {
                let flag = w.remove(0);
                match flag.strip_prefix("--platform=") {
                    Some(p) if !p.is_empty() => platform = Some(p.to_string()),
                    _ => return Err(format!("unknown flag {flag:?} (only --platform=OS/ARCH)")),
                }
            }
            match w.as_slice() {
                [image] => InstructionKind::From {
                    image: image.clone(),
                    platform,
                },
                [] => return Err("needs an image name (or scratch)".into()),
                [_, more @ ..] if more.first().is_some_and(|m| m.eq_ignore_ascii_case("as")) => {
                    return Err("multi-stage builds (FROM ... AS ...) are not supported".into())
                }
                _ => return Err("takes exactly one image name".into()),
            }
        }
        "COPY" | "ADD" => {
            let mut w = words()?;
            if let Some(flag) = w.first().filter(|f| f.starts_with("--")) {
                return Err(format!("flag {flag:?} is not supported"));
            }
            if w.len() < 2 {
                return Err("needs at least one source and a destination".into());
            }
            let dest = w.pop().expect("len >= 2");
            for s in &w {
                if s.contains("://") {
                    return Err(format!(
                        "source {s:?} is a URL; download it into the build context and COPY it"
                    ));
                }
            }
            InstructionKind::Copy { sources: w, dest }
        }
        "ENV" => InstructionKind::Env(key_values(rest, true)?),
        "LABEL" => InstructionKind::Label(key_values(rest, false)?),
        "ARG" => {
            let w = words()?;
            let [one] = w.as_slice() else {
                return Err("takes one NAME or NAME=DEFAULT".into());
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
                return Err("needs a command".into());
            }
            if rest.starts_with('[') {
                let argv = json_array(rest)?;
                if argv.is_empty() {
                    return Err("the command array is empty".into());
                }
                InstructionKind::Run(Command::Exec(argv))
            } else {
                InstructionKind::Run(Command::Shell(rest.to_string()))
            }
        }
        "CMD" => {
            if rest.is_empty() {
                return Err("needs a command".into());
            }
            if rest.starts_with('[') {
                let argv = json_array(rest)?;
                if argv.is_empty() {
                    return Err("the command array is empty".into());
                }
                InstructionKind::Cmd(argv.join(" "))
            } else {
                InstructionKind::Cmd(rest.to_string())
            }
        }
        "CMDS" => {
            let cmds = list_arg(rest)?;
            if cmds.is_empty() {
                return Err("needs at least one command, as [\"CMD\", ...]".into());
            }
            InstructionKind::Cmds(cmds)
        }
        "LAUNCH" => {
            let apps = list_arg(rest)?;
            if apps.is_empty() {
                return Err("needs at least one application name, as [\"APP\", ...]".into());
            }
            for a in &apps {
                check_app_name(a)?;
            }
            InstructionKind::Launch(apps)
        }
        "APP" | "CNI" | "CSI" => {
            let w = words()?;
            let Some((name, srcs)) = w.split_first() else {
                return Err("needs a name and at least one local://PATH".into());
            };
            check_app_name(name)?;
            if srcs.is_empty() {
                return Err(format!("app {name:?} needs at least one local://PATH"));
            }
            let mut sources = Vec::new();
            for s in srcs {
                match s.strip_prefix("local://") {
                    Some(p) if !p.is_empty() => sources.push(p.to_string()),
                    _ if s.starts_with("http://") || s.starts_with("https://") => {
                        return Err(format!(
                            "source {s:?} is remote; download it into the build context and use local://PATH"
                        ))
                    }
                    _ => return Err(format!("source {s:?} must be written local://PATH")),
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
                .ok_or("needs an app name and [\"CMD\", ...]")?;
            check_app_name(name)?;
            let cmds = list_arg(rest.trim())?;
            if cmds.is_empty() {
                return Err("needs at least one command".into());
            }
            InstructionKind::AppCmds {
                name: name.to_string(),
                cmds,
            }
        }
        "APPENV" => {
            let (name, rest) = rest
                .split_once(char::is_whitespace)
                .ok_or("needs an app name and KEY=VALUE...")?;
            check_app_name(name)?;
            InstructionKind::AppEnv {
                name: name.to_string(),
                env: key_values(rest.trim(), false)?,
            }
        }
        "KUBEVERSION" => {
            let w = words()?;
            let [v] = w.as_slice() else {
                return Err("takes one version, e.g. v1.22.15".into());
            };
            let digits = v.strip_prefix('v').unwrap_or(v);
            let parts: Vec<&str> = digits.split('.').collect();
            if parts.len() < 2
                || parts.len() > 3
                || parts
                    .iter()
                    .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(format!("version {v:?} is not vMAJOR.MINOR[.PATCH]"));
            }
            InstructionKind::KubeVersion(v.clone())
        }
        "MAINTAINER" => {
            if rest.is_empty() {
                return Err("needs a name".into());
            }
            InstructionKind::Maintainer(rest.to_string())
        }
        "" => return Err("empty instruction".into()),
        _ => {
            return Err(
                "unknown instruction; known: FROM COPY ADD ENV ARG LABEL RUN CMD CMDS LAUNCH \
                 APP APPCMDS APPENV CNI CSI KUBEVERSION MAINTAINER"
                    .into(),
            )
        }
    })
}

fn check_var_name(name: &str) -> Result<(), String> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid variable name"))
    }
}

fn check_app_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "app name {name:?} must be letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

/// A JSON array of strings, or whitespace-separated words.
fn list_arg(rest: &str) -> Result<Vec<String>, String> {
    if rest.starts_with('[') {
        json_array(rest)
    } else {
        split_words(rest)
    }
}

fn json_array(text: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(text)
        .map_err(|e| format!("malformed JSON array of strings: {e}"))
}

fn key_values(rest: &str, allow_legacy_space: bool) -> Result<Vec<(String, String)>, String> {
    if rest.is_empty() {
        return Err("needs KEY=VALUE".into());
    }
    let words = split_words(rest)?;
    if allow_legacy_space && !words[0].contains('=') {
        // `ENV KEY value with spaces`
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or("needs KEY=VALUE or KEY VALUE")?;
        check_var_name(k)?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("{w:?} has an empty key"));
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
fn split_words(text: &str) -> Result<Vec<String>, String> {
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
                        None => return Err("unterminated double quote".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err("unterminated double quote".into()),
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
                        None => return Err("unterminated single quote".into()),
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
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
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
                        return Err(format!("unterminated ${{ in {text:?}"));
                    }
                    let (name, op) = match inner.find(":-").or_else(|| inner.find(":+")) {
                        Some(i) => (&inner[..i], Some((&inner[i..i + 2], &inner[i + 2..]))),
                        None => (inner.as_str(), None),
                    };
                    check_var_name(name).map_err(|e| format!("in ${{{inner}}}: {e}"))?;
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
     etc/ .
ADD imageList manifests
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
                sources: vec!["bin/${ARCH}/kubeadm".into(), "etc/".into()],
                dest: ".".into()
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
            "Kubefile:3: COPY: needs at least one source and a destination"
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
        assert!(error("FROM scratch\nRUN [\"a\",\n").starts_with("Kubefile:2: RUN: malformed JSON"));
        assert!(error("FROM scratch\nAPP x http://a/b.yaml\n").contains("remote"));
        assert!(error("FROM scratch\nKUBEVERSION latest\n").starts_with("Kubefile:2: KUBEVERSION"));
        assert!(error("FROM scratch\nFROM scratch\n").contains("only one FROM"));
        assert!(error("FROM scratch\nRUN a \\\n").contains("ends inside a line continued"));
        assert!(error("").contains("no FROM"));
    }

    #[test]
    fn continuation_lines_keep_the_starting_line_number() {
        let ins = parse("K", "FROM scratch\nRUN a \\\n  # skipped\n  b\nCOPY x y\n").unwrap();
        assert_eq!(ins[1].line, 2);
        assert_eq!(
            ins[1].kind,
            InstructionKind::Run(Command::Shell("a  b".into()))
        );
        assert_eq!(ins[2].line, 5);
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
}
