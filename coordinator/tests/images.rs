//! The image commands through the real `seaport` binary: build, images,
//! inspect, tag, rmi, save, load, and skopeo reading what save wrote.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(ctx.join("etc")).unwrap();
        fs::write(ctx.join("etc/daemon.json"), "{}").unwrap();
        fs::write(
            ctx.join("Metadata"),
            r#"{"version":"v1.19.8","arch":"amd64"}"#,
        )
        .unwrap();
        fs::write(ctx.join("app.yaml"), "kind: ConfigMap").unwrap();
        fs::write(
            ctx.join("Kubefile"),
            "FROM scratch\nCOPY etc etc\nCOPY Metadata .\nAPP web local://app.yaml\nLAUNCH [\"web\"]\n",
        )
        .unwrap();
        Self { dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_seaport"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "seaport {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "seaport {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    fn build(&self, tag: &str) -> String {
        let ctx = self.path("ctx");
        let ctx = ctx.to_str().unwrap();
        self.ok(&["build", "-f", &format!("{ctx}/Kubefile"), "-t", tag, ctx])
    }

    fn images(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["images", "--json"])).unwrap()
    }

    fn store_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walkdir(&self.root) {
            out.push(e);
        }
        out
    }
}

fn walkdir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new()));
            } else {
                let c = fs::read(&p).unwrap();
                out.push((p, c));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn build_list_inspect_tag_and_rmi() {
    let env = Env::new();
    let out = env.build("web:v1");
    assert!(out.starts_with("web:v1 sha256:"), "{out}");
    let digest = out.split_whitespace().nth(1).unwrap().to_string();

    let images = env.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["name"], "web:v1");
    assert_eq!(images[0]["digest"], digest.as_str());
    assert!(env.ok(&["images"]).contains("web:v1"));

    let info: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "web:v1"])).unwrap();
    assert_eq!(info["digest"], digest.as_str());
    assert_eq!(info["layers"].as_array().unwrap().len(), 3);
    assert_eq!(info["layers"][0]["instruction"], "COPY etc etc");
    assert_eq!(info["launch"]["app_names"][0], "web");
    assert_eq!(info["apps"][0]["name"], "web");
    assert_eq!(info["Metadata"]["version"], "v1.19.8");

    env.ok(&["tag", "web:v1", "registry.example.com:5000/team/web:v2"]);
    let names: Vec<String> = env
        .images()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["web:v1", "registry.example.com:5000/team/web:v2"]);

    // Removing one name keeps the blobs the other still needs.
    env.ok(&["rmi", "web:v1"]);
    assert_eq!(env.images().len(), 1);
    env.ok(&["inspect", "registry.example.com:5000/team/web:v2"]);
    let err = env.fails(&["inspect", "web:v1"]);
    assert!(err.contains("is not in the local store"), "{err}");

    env.ok(&["rmi", "registry.example.com:5000/team/web:v2"]);
    let blobs = fs::read_dir(env.root.join("images/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "rmi of the last name removes every blob");
}

#[test]
fn save_load_round_trip_and_skopeo_reads_the_archive() {
    let env = Env::new();
    let digest = env
        .build("web:v1")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    env.ok(&["tag", "web:v1", "web:v2"]);
    let archive = env.path("web.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "web:v1", "web:v2"]);

    // skopeo reads the archive by the name the user knows.
    let dest = env.path("skopeo-dir");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}:web:v1", archive.display()))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .expect("skopeo must be installed (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = fs::read(dest.join("manifest.json")).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&manifest)),
        digest,
        "skopeo sees the same manifest"
    );

    // Into a fresh store.
    let other = Env::new();
    let out = other.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        out.contains("loaded web:v1") && out.contains("loaded web:v2"),
        "{out}"
    );
    let images = other.images();
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i["digest"] == digest.as_str()));
    let info: serde_json::Value = serde_json::from_str(&other.ok(&["inspect", "web:v2"])).unwrap();
    assert_eq!(info["apps"][0]["name"], "web");
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn corrupted_or_truncated_archives_are_refused_and_the_store_is_unchanged() {
    let env = Env::new();
    env.build("web:v1");
    let archive = env.path("web.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "web:v1"]);
    let good = fs::read(&archive).unwrap();

    let target = Env::new();
    fs::write(target.path("ctx/etc/daemon.json"), "other").unwrap();
    target.build("existing:v1");
    let before = target.store_files();

    // Flip one byte inside the last blob (the tar's data, not its headers).
    let mut corrupted = good.clone();
    let pos = good.len() - 1024 - 10 - (good.len() % 512).min(1);
    let pos = (0..pos).rev().find(|&i| good[i] != 0).unwrap();
    corrupted[pos] ^= 0xff;
    let bad = target.path("corrupted.tar");
    fs::write(&bad, &corrupted).unwrap();
    let err = target.fails(&["load", "-i", bad.to_str().unwrap()]);
    assert!(err.contains("refusing archive"), "{err}");
    assert_eq!(target.store_files(), before);

    let truncated = target.path("truncated.tar");
    fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let err = target.fails(&["load", "-i", truncated.to_str().unwrap()]);
    assert!(err.contains("refusing archive"), "{err}");
    assert_eq!(target.store_files(), before);

    let garbage = target.path("garbage.tar");
    fs::write(&garbage, b"this is not a tar").unwrap();
    target.fails(&["load", "-i", garbage.to_str().unwrap()]);
    assert_eq!(target.store_files(), before);
}

#[test]
fn build_errors_are_clear() {
    let env = Env::new();
    fs::write(
        env.path("ctx/Kubefile"),
        "FROM scratch\nCOPY ../outside .\n",
    )
    .unwrap();
    fs::write(env.path("outside"), "x").unwrap();
    let err = env.fails(&["build", "-t", "bad:v1", env.path("ctx").to_str().unwrap()]);
    assert!(
        err.contains("Kubefile:2: COPY:") && err.contains("outside the build context"),
        "{err}"
    );
    fs::write(
        env.path("ctx/Kubefile"),
        "FROM scratch\nLAUNCH [\"a\"]\nLAUNCH [\"a\"]\n",
    )
    .unwrap();
    let err = env.fails(&["build", "-t", "bad:v1", env.path("ctx").to_str().unwrap()]);
    assert!(err.contains("Kubefile:3: LAUNCH: only one LAUNCH"), "{err}");
    let err = env.fails(&["build", "-t", "Bad Name", env.path("ctx").to_str().unwrap()]);
    assert!(err.contains("invalid image name"), "{err}");
}

#[test]
fn build_prints_which_sealer_rule_placed_a_directory_and_takes_copy_semantics() {
    let env = Env::new();
    let ctx = env.path("charts-ctx");
    fs::create_dir_all(ctx.join("nginx/templates")).unwrap();
    fs::write(ctx.join("nginx/Chart.yaml"), "name: nginx").unwrap();
    fs::write(ctx.join("Kubefile"), "FROM scratch\nCOPY nginx charts\n").unwrap();
    let ctx = ctx.to_str().unwrap().to_string();
    let kubefile = format!("{ctx}/Kubefile");
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "-f", &kubefile, "-t", "charts:v1"];
        args.extend(extra);
        args.push(&ctx);
        let out = env.run(&args);
        (out.status.success(), String::from_utf8(out.stderr).unwrap())
    };
    // Nothing tells the generation: a warning naming the line and the flag.
    let (ok, err) = build(&[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: ")
            && err.contains("Kubefile:2: COPY nginx charts: nothing in the Kubefile or its base")
            && err.contains("charts/nginx/")
            && err.contains("--copy-semantics 0.8 or 0.9"),
        "{err}"
    );
    let layer_of = |env: &Env| {
        let info: serde_json::Value =
            serde_json::from_str(&env.ok(&["inspect", "charts:v1"])).unwrap();
        info["layers"][0]["digest"].as_str().unwrap().to_string()
    };
    let as_08 = layer_of(&env);
    // Forced: a note saying so, and another layout.
    let (ok, err) = build(&["--copy-semantics", "0.9"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("note: ")
            && err.contains("the contents of directory nginx go to charts/ (sealer 0.8 rules: to charts/nginx/): sealer 0.9+ rules, chosen with --copy-semantics"),
        "{err}"
    );
    assert!(!err.contains("warning:"), "{err}");
    assert_ne!(layer_of(&env), as_08);
    let (ok, err) = build(&["--copy-semantics", "0.8"]);
    assert!(ok && err.contains("note: "), "{err}");
    assert_eq!(layer_of(&env), as_08);
    // A value that is not a generation is refused by name.
    let (ok, err) = build(&["--copy-semantics", "1.0"]);
    assert!(
        !ok && err.contains("\"1.0\" is not a sealer generation"),
        "{err}"
    );
}
