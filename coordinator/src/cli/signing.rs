//! `seaport key generate` and `seaport sign`: signing keys and image
//! signatures (cosign's key-based layout, `seaport_rootfs::signing`).
//!
//! The passphrase of a private key comes from `SEAPORT_KEY_PASSWORD`, else
//! from a prompt on the terminal (not echoed).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use seaport_rootfs::signing::{self, SigningKey, TrustedKeys};
use seaport_rootfs::store::Store;

/// The environment variable holding a private key's passphrase.
pub(super) const PASSWORD_ENV: &str = "SEAPORT_KEY_PASSWORD";

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Make an ECDSA P-256 signing key pair: NAME.key (encrypted with a
    /// passphrase, mode 0600) and NAME.pub (PEM public key, 0644).
    Generate {
        /// NAME: the files written are NAME.key and NAME.pub.
        #[arg(short = 'o', long = "output", value_name = "NAME")]
        output: PathBuf,
    },
}

pub(super) fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Generate { output } => {
            let (private, _) = signing::key_pair_paths(&output);
            let pass = passphrase(&format!("passphrase for {}", private.display()), true)?;
            let key = SigningKey::generate()?;
            let (private, public) = signing::write_key_pair(&output, &key, pass.as_bytes())?;
            println!("private key: {} (0600)", private.display());
            println!("public key:  {} (0644)", public.display());
            println!("fingerprint: {}", key.public_key().fingerprint());
            Ok(())
        }
    }
}

/// Sign an image of the local store.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The private key (made by `seaport key generate` or `cosign generate-key-pair`).
    #[arg(long, value_name = "NAME.key")]
    pub key: PathBuf,
    /// The image: a name, NAME@sha256:... or its digest.
    pub image: String,
}

pub(super) fn sign(root: &Path, args: SignArgs) -> anyhow::Result<()> {
    let key = load_key(&args.key)?;
    let store = Store::open(root)?;
    sign_image(&store, &key, &args.image)
}

/// Opens a private key, asking for its passphrase.
pub(super) fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    if !path.is_file() {
        bail!("{}: no such key file", path.display());
    }
    let pass = passphrase(&format!("passphrase for {}", path.display()), false)?;
    Ok(SigningKey::load(path, pass.as_bytes())?)
}

/// Signs the image `name` of `store` with `key` and prints what it signed.
pub(super) fn sign_image(store: &Store, key: &SigningKey, name: &str) -> anyhow::Result<()> {
    let image = store.image(name)?;
    let subject = image.digest();
    let existing = signing::stored(store, &subject)?;
    let sigs = signing::sign(
        key,
        &image.name.canonical_repository(),
        &subject,
        existing.as_ref(),
    )?;
    let stored = signing::store(store, &subject, &sigs)?;
    println!(
        "signed {} ({subject}) with key {}; {} signature(s)",
        image.name,
        key.public_key().fingerprint(),
        stored.signatures.len()
    );
    Ok(())
}

/// Reads `--trusted-keys DIR`, naming the flag in errors.
pub(super) fn trusted_keys(dir: &Path) -> anyhow::Result<TrustedKeys> {
    TrustedKeys::load_dir(dir).with_context(|| format!("--trusted-keys {}", dir.display()))
}

/// A passphrase: `SEAPORT_KEY_PASSWORD`, else asked on the terminal
/// (twice when `confirm`). Empty passphrases are refused.
fn passphrase(what: &str, confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        if p.is_empty() {
            bail!("{PASSWORD_ENV} is empty; a private key needs a passphrase");
        }
        return Ok(p);
    }
    let first = prompt(&format!("{what}: "))?;
    if first.is_empty() {
        bail!("an empty passphrase is not accepted");
    }
    if confirm && prompt(&format!("{what} (again): "))? != first {
        bail!("the passphrases differ");
    }
    Ok(first)
}

/// Reads one line from the terminal with echo off.
fn prompt(text: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .with_context(|| format!("no terminal to ask for the passphrase: set {PASSWORD_ENV}"))?;
    let saved = tcgetattr(&tty).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&tty, SetArg::TCSANOW, &quiet).context("turning off the terminal echo")?;
    let read = (|| {
        let mut out = &tty;
        write!(out, "{text}")?;
        out.flush()?;
        let mut line = String::new();
        std::io::BufReader::new(&tty).read_line(&mut line)?;
        writeln!(out)?;
        Ok::<_, std::io::Error>(line)
    })();
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    Ok(read
        .context("reading the passphrase")?
        .trim_end_matches(['\n', '\r'])
        .to_string())
}
