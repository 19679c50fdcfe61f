//! `seaport build | images | inspect | tag | rmi | save | load`: thin calls
//! into `seaport_rootfs`.

use seaport_shared::env::key_value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use seaport_rootfs::build::{self, BuildOptions};
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::store::Store;
use seaport_rootfs::{archive, inspect};

fn open_store(root: &Path) -> anyhow::Result<Store> {
    Store::open(root).with_context(|| format!("opening the image store under {}", root.display()))
}

/// Prints to stdout; a closed pipe (`| head`) ends output quietly.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Build a cluster image from a Kubefile and a context directory.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The Kubefile (default: CONTEXT/Kubefile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name of the image, NAME[:TAG].
    #[arg(short = 't', long = "tag")]
    pub tag: String,
    /// Value for an ARG of the Kubefile.
    #[arg(long = "build-arg", value_name = "K=V", value_parser = key_value)]
    pub build_args: Vec<(String, String)>,
    /// Label to set on the image.
    #[arg(long = "label", value_name = "K=V", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// Target platform OS/ARCH[/VARIANT] (sets ${ARCH}); default: this host's.
    /// Several, separated by commas (linux/amd64,linux/arm64), build one
    /// image per platform under one multi-platform index.
    #[arg(long)]
    pub platform: Option<String>,
    /// Extra container images to cache in the image's registry, one per line.
    #[arg(long, value_name = "FILE")]
    pub image_list: Option<PathBuf>,
    /// Container images not to cache even when the rootfs names them.
    #[arg(long, value_name = "FILE")]
    pub ignored_image_list: Option<PathBuf>,
    /// Registry (HOST[:PORT]) to reach over plain HTTP when caching images.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Whose COPY rules to follow: sealer 0.8's (`COPY nginx charts` gives
    /// charts/nginx/) or sealer 0.9+'s (a directory's contents go into DEST).
    /// Default: decided from the Kubefile and its base (docs/images.md).
    #[arg(long, value_name = "0.8|0.9")]
    pub copy_semantics: Option<build::CopySemantics>,
    /// Sign the image once built with this private key (as `seaport sign`).
    #[arg(long, value_name = "NAME.key")]
    pub sign_key: Option<PathBuf>,
    /// The build context: the directory COPY reads from.
    #[arg(default_value = ".")]
    pub context: PathBuf,
}

pub(super) fn build(root: &Path, args: BuildArgs) -> anyhow::Result<()> {
    let store = open_store(root)?;
    // The key opens before the build, so a wrong passphrase costs nothing.
    let sign_key = match &args.sign_key {
        Some(path) => Some(super::signing::load_key(path)?),
        None => None,
    };
    let kubefile = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Kubefile"));
    let mut opts = BuildOptions::new(kubefile, &args.context, &args.tag);
    opts.build_args = args.build_args.into_iter().collect::<BTreeMap<_, _>>();
    opts.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    if let Some(p) = args.platform {
        opts.platform = p;
    }
    opts.copy_semantics = args.copy_semantics;
    let cache = seaport_rootfs::imagecache::RegistryImageCache::from_flags(
        root,
        args.image_list.as_deref(),
        args.ignored_image_list.as_deref(),
        &args.insecure_registry,
    )
    .context("setting up container image caching")?;
    opts.image_cache = Some(&cache);
    let report =
        build::build(&store, &opts).context("build failed; the image store is unchanged")?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("{} {}", report.name, report.digest);
    if report.platforms.len() > 1 {
        for (platform, digest, _) in &report.platforms {
            println!("  {platform} {digest}");
        }
    }
    if let Some(key) = sign_key {
        super::signing::sign_image(&store, &key, &report.digest.to_string())?;
    }
    Ok(())
}

/// List the cluster images in the local store.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct ImageRow {
    name: String,
    /// The manifest's digest, or the index's for a multi-platform image.
    digest: String,
    /// The platforms, comma-separated.
    platform: String,
    platforms: Vec<String>,
    size: u64,
}

pub(super) fn images(root: &Path, args: ImagesArgs) -> anyhow::Result<()> {
    let store = open_store(root)?;
    let mut rows = Vec::new();
    for entry in store.list()? {
        let image = store
            .image(&entry.manifest.digest.to_string())
            .with_context(|| format!("reading image {}", entry.name))?;
        let platforms = image.platforms();
        rows.push(ImageRow {
            name: entry.name.to_string(),
            digest: entry.manifest.digest.to_string(),
            platform: platforms.join(","),
            platforms,
            size: inspect::layers_size(&image),
        });
    }
    if args.json {
        return print_out(&serde_json::to_string_pretty(&rows)?);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let pwidth = rows
        .iter()
        .map(|r| r.platform.len())
        .max()
        .unwrap_or(8)
        .max(13);
    println!(
        "{:width$}  {:19}  {:pwidth$}  SIZE",
        "NAME", "DIGEST", "PLATFORM"
    );
    for r in rows {
        println!(
            "{:width$}  {:19}  {:pwidth$}  {}",
            r.name,
            &r.digest[..19],
            r.platform,
            human_size(r.size)
        );
    }
    Ok(())
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Show an image as JSON.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image name, NAME@sha256:... or a manifest digest.
    pub name: String,
    /// Show only this platform's manifest of a multi-platform image
    /// (os/arch[/variant]).
    #[arg(long)]
    pub platform: Option<String>,
    /// Check the image's signatures against the public keys (*.pub, *.pem)
    /// in this directory.
    #[arg(long, value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
}

pub(super) fn inspect(root: &Path, args: InspectArgs) -> anyhow::Result<()> {
    let store = open_store(root)?;
    let platform = match &args.platform {
        Some(p) => Some(
            seaport_rootfs::registry::platform::parse_platform(p)
                .with_context(|| format!("--platform {p:?} is not os/arch[/variant]"))?,
        ),
        None => None,
    };
    let keys = match &args.trusted_keys {
        Some(dir) => super::signing::trusted_keys(dir)?,
        None => seaport_rootfs::signing::TrustedKeys::new(),
    };
    let info = inspect::inspect_image(&store, &args.name, platform.as_ref())?;
    let mut json = serde_json::to_value(&info)?;
    // The signatures of what the name points at (the index, for a
    // multi-platform image): who signed it.
    let subject = store.image(&args.name)?.digest();
    let signatures = match seaport_rootfs::signing::stored(&store, &subject)? {
        Some(sigs) => seaport_rootfs::signing::describe(&subject, &sigs, &keys),
        None => vec![],
    };
    if let Some(obj) = json.as_object_mut() {
        obj.insert("signatures".into(), serde_json::to_value(signatures)?);
    }
    print_out(&serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// Give an image in the local store another name.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The existing image.
    pub source: String,
    /// The new name.
    pub target: String,
}

pub(super) fn tag(root: &Path, args: TagArgs) -> anyhow::Result<()> {
    let store = open_store(root)?;
    let image = store.lookup(&args.source)?;
    let target = ImageRef::parse(&args.target)?;
    if target.digest().is_some() {
        bail!("the new name {} must not contain a digest", args.target);
    }
    store.set_name(&target, &image.manifest.digest)?;
    Ok(())
}

/// Remove image names, and the blobs nothing else references.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Images to remove.
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub(super) fn rmi(root: &Path, args: RmiArgs) -> anyhow::Result<()> {
    let store = open_store(root)?;
    for name in &args.names {
        let image = store.lookup(name)?;
        store.remove_name(&image.name)?;
        println!("untagged {}", image.name);
    }
    let report = store.gc().context("removing unreferenced blobs")?;
    println!(
        "removed {} blobs, freed {}",
        report.removed.len(),
        human_size(report.freed_bytes)
    );
    Ok(())
}

/// Write images to one OCI archive.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// The archive to write.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Images to save.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Write a one-file offline bundle instead: the seaport and
    /// seaport-agent binaries, systemd units, the images and a README.
    #[arg(long)]
    pub bundle: bool,
    /// With --bundle: the seaport binary to include (default: this one).
    #[arg(long, requires = "bundle")]
    pub seaport_binary: Option<PathBuf>,
    /// With --bundle: the seaport-agent binary to include (default: the one
    /// beside this seaport). Prefer static builds (packaging/build-static.sh).
    #[arg(long, requires = "bundle")]
    pub agent_binary: Option<PathBuf>,
}

pub(super) fn save(root: &Path, args: SaveArgs) -> anyhow::Result<()> {
    let store = open_store(root)?;
    if args.bundle {
        let mut bins = crate::bundle::BundleBinaries::beside_current_exe();
        if let Some(p) = args.seaport_binary {
            bins.seaport = p;
        }
        if let Some(p) = args.agent_binary {
            bins.agent = p;
        }
        let report = crate::bundle::write(&store, &args.names, &bins, &args.output)
            .with_context(|| format!("writing the bundle {}", args.output.display()))?;
        for n in &report.images {
            println!("saved {n}");
        }
        println!(
            "wrote bundle {} ({} bytes); unpack it and follow {}/README.md",
            args.output.display(),
            report.size,
            crate::bundle::BUNDLE_DIR
        );
        return Ok(());
    }
    let names = archive::save(&store, &args.names, &args.output)
        .with_context(|| format!("saving to {}", args.output.display()))?;
    for n in names {
        println!("saved {n}");
    }
    Ok(())
}

/// Load images from an OCI archive, verifying every blob.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The archive to read.
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
}

pub(super) fn load(root: &Path, args: LoadArgs) -> anyhow::Result<()> {
    let store = open_store(root)?;
    let loaded = archive::load(&store, &args.input)?;
    for img in loaded {
        println!("loaded {} {}", img.name, img.digest);
    }
    Ok(())
}
