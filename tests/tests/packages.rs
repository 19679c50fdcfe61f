//! What the binaries say about themselves and what their Debian packages
//! install besides them: `version`, shell completions that a real bash
//! loads and uses, and man pages for every subcommand, built by
//! `packaging/deb/build-debs.sh` from the binaries of this build.

use std::path::Path;
use std::process::Command;

use seaport_lab::seaport::{workspace_root, Binaries};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What bash's completion offers for `words` (the last one being typed),
/// calling the completion function as bash's `complete -F` does.
fn bash_completes(script: &Path, function: &str, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; {function} \"${{COMP_WORDS[0]}}\" \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
    );
    run(Command::new("bash").args(["-c", &line]))
        .lines()
        .map(str::trim)
        .map(str::to_string)
        .collect()
}

#[test]
fn both_binaries_tell_their_version_complete_in_bash_and_package_man_pages() {
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    for (bin, name, sub, partial) in [
        (&bins.seaport, "seaport", "build", "bu"),
        (&bins.agent, "seaport-agent", "join", "jo"),
    ] {
        let version = run(Command::new(bin).arg("version"));
        let want = format!("{name} {} (commit ", env!("CARGO_PKG_VERSION"));
        assert!(version.starts_with(&want), "{version}");
        let commit = version.trim().rsplit("commit ").next().unwrap();
        assert!(
            commit
                .trim_end_matches(')')
                .chars()
                .all(|c| c.is_ascii_hexdigit())
                || commit == "unknown)",
            "{version}"
        );

        let script = tmp.path().join(format!("{name}.bash"));
        std::fs::write(&script, run(Command::new(bin).args(["completion", "bash"]))).unwrap();
        let function = format!("_{}", name.replace('-', "__"));
        let offered = bash_completes(&script, &function, &[name, partial]);
        assert!(
            offered.contains(&sub.to_string()),
            "{name} {partial}<TAB>: {offered:?}"
        );
        for shell in ["zsh", "fish"] {
            let text = run(Command::new(bin).args(["completion", shell]));
            assert!(text.contains(sub), "{name} completion {shell}: {text}");
        }
    }

    // The packages, built from this build's binaries (uncompressed: xz of
    // debug binaries takes minutes and proves nothing here).
    let out = tmp.path().join("debs");
    run(Command::new("sh")
        .env("DEB_COMPRESSION", "none")
        .arg(workspace_root().join("packaging/deb/build-debs.sh"))
        .arg(bins.seaport.parent().unwrap())
        .arg(&out)
        .current_dir(workspace_root()));
    for (pkg, pages) in [
        (
            "seaport",
            &[
                "seaport",
                "seaport-build",
                "seaport-run",
                "seaport-token-create",
            ][..],
        ),
        (
            "seaport-agent",
            &["seaport-agent", "seaport-agent-join", "seaport-agent-run"][..],
        ),
    ] {
        let deb = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{pkg}_"))
            })
            .unwrap_or_else(|| panic!("no {pkg} package in {}", out.display()));
        let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
        for page in pages {
            assert!(
                listing.contains(&format!("./usr/share/man/man1/{page}.1.gz")),
                "{pkg}: no man page {page}: {listing}"
            );
        }
        assert!(
            listing.contains(&format!("./usr/share/bash-completion/completions/{pkg}")),
            "{listing}"
        );
        // A page is a real man page of that command.
        let root = tmp.path().join(format!("x-{pkg}"));
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        let page = root.join(format!("usr/share/man/man1/{}.1.gz", pages[1]));
        let text = run(Command::new("zcat").arg(&page));
        assert!(text.contains(".TH") && text.contains(".SH NAME"), "{text}");
        assert!(text.contains(&pages[1].replace('-', "\\-")), "{text}");
    }
}
