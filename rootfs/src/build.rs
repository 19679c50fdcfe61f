//! Building a cluster image from a Kubefile and a context directory.
//!
//! [`build`] parses the Kubefile, then runs its instructions in order:
//!
//! - FROM takes the layers, env, labels, applications and launch settings of
//!   an image in the local store (or nothing, for `scratch`).
//! - COPY (and ADD, local sources only), APP, CNI and CSI turn files from the
//!   context into one layer each. Sources are paths or globs relative to the
//!   context, with `${ARCH}` and other variables expanded; a source that
//!   resolves outside the context (through `..` or a symlink) is refused.
//!   Where a COPY source lands follows the sealer generation the Kubefile
//!   was written for ([`CopySemantics`]: given by the caller, or decided
//!   from the Kubefile and its base by [`decide_generation`]); APP, CNI, CSI
//!   and ADD exist in sealer 0.9+ only and always follow its rules. APP
//!   tells an application's type from its files as sealer does
//!   ([`app_type`]).
//! - RUN runs its command on the build host (`sh -c`, or the exec form's
//!   argv) with the working directory set to a materialized copy of the
//!   rootfs so far; what it added, changed or deleted becomes a layer.
//!   RUN is NOT sandboxed: the command runs with the builder's privileges and
//!   can touch anything the builder can.
//! - ENV, ARG, LABEL, MAINTAINER, KUBEVERSION, CMD, CMDS, LAUNCH, APPCMDS and
//!   APPENV change no files; they are recorded in the image config and the
//!   `sealer.image.extension` manifest annotation.
//!
//! After the last instruction the optional [`ImageCache`] hook may add one
//! more layer (cached container images under `registry/`).
//!
//! Nothing enters the store until every instruction succeeded: layers are
//! written to temporary files inside the store and moved into place at the
//! end, with a [`WriteGuard`](crate::store::WriteGuard) held so a concurrent
//! `gc` cannot remove them before the image is named. A failed build leaves
//! the store as it was.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process;

use seaport_shared::digest::Digest;
use seaport_shared::safetar;
use tempfile::{NamedTempFile, TempDir};

use crate::kubefile::{self, Command, Instruction, InstructionKind, KubefileError, SyntaxError};
use crate::layer::{self, Entries, EntrySource, LayerEntry, LayerError, LayerOptions};
use crate::oci::{
    Application, Descriptor, History, ImageConfig, ImageExtension, Index, Manifest, Platform,
    RootFs, RuntimeConfig, ANNOTATION_LAYER_INSTRUCTION, ANNOTATION_METADATA, ANNOTATION_PLATFORM,
    ANNOTATION_SEALER_EXTENSION, LABEL_KUBE_CNI_PREFIX, LABEL_KUBE_CSI_PREFIX, LABEL_KUBE_VERSION,
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_ZSTD, MEDIA_TYPE_MANIFEST,
};
use crate::reference::{ImageRef, ReferenceError};
use crate::registry::platform::{parse_platform, platform_string};
use crate::store::{Store, StoreError};

/// Where APP, CNI and CSI put an application's files in the rootfs.
pub const APP_ROOT: &str = "application/apps";

/// Top-level directories of a CloudRootfs: a file copied to one of them
/// lands inside it even when the image does not have it yet.
pub const ROOTFS_DIRS: &[&str] = &[
    "bin",
    "cri",
    "etc",
    "images",
    "plugins",
    "charts",
    "manifests",
    "registry",
    "scripts",
    "statics",
    "applications",
    "application",
];

/// Whose COPY rules a build follows: the two sealer generations disagree on
/// where a directory (and a file with a new name) lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopySemantics {
    /// sealer 0.8's own copier: SRC lands at `DEST/SRC` (`COPY nginx charts`
    /// gives `charts/nginx/`; `COPY etc .` gives `etc/`), unless SRC's name
    /// is DEST's last component or SRC is the context itself.
    Sealer08,
    /// sealer 0.9 and later, through buildah (Docker's rules): a directory's
    /// contents are copied into DEST (`COPY rootfs .` spreads `rootfs/`);
    /// a file keeps DEST as its name unless DEST is a directory.
    Sealer09,
}

impl CopySemantics {
    /// The value of `--copy-semantics` that selects it.
    pub fn flag_value(self) -> &'static str {
        match self {
            Self::Sealer08 => "0.8",
            Self::Sealer09 => "0.9",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Sealer08 => Self::Sealer09,
            Self::Sealer09 => Self::Sealer08,
        }
    }
}

impl std::fmt::Display for CopySemantics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sealer08 => "sealer 0.8",
            Self::Sealer09 => "sealer 0.9+",
        })
    }
}

/// Not a sealer generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sealer generation: use 0.8 (a directory lands at DEST/NAME) or 0.9 (its contents are copied into DEST)")]
pub struct UnknownGeneration(String);

impl std::str::FromStr for CopySemantics {
    type Err = UnknownGeneration;

    fn from_str(s: &str) -> Result<Self, UnknownGeneration> {
        match s.trim_start_matches('v') {
            "0.8" => Ok(Self::Sealer08),
            "0.9" | "0.9+" => Ok(Self::Sealer09),
            _ => Err(UnknownGeneration(s.to_string())),
        }
    }
}

/// The generation a build follows and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The rules.
    pub semantics: CopySemantics,
    /// What decided it; `None` when nothing did and sealer's documented
    /// examples' rule (0.8's) applies by default.
    pub reason: Option<String>,
}

/// What a base image shows about the sealer generation it belongs to.
#[derive(Clone, Debug, Default)]
pub struct BaseEvidence {
    /// The base's name, as written in FROM.
    pub name: String,
    /// The `sealerVersion` of the base's `sealer.image.extension` when sealer
    /// (not Seaport) built it.
    pub built_by_sealer: Option<String>,
    /// The base carries a `Metadata` file (sealer 0.8 images do; 0.9+
    /// images built from sealerio/basefs do not).
    pub has_metadata: bool,
    /// A label only sealer 0.9+ writes (`cluster.alpha.sealer.io/...`,
    /// `app.alpha.sealer.io/...`).
    pub sealer_09_label: Option<String>,
}

/// Decides the sealer generation of a build, in this order: the caller's
/// choice; an instruction only sealer 0.9+ reads; a base built by sealer
/// 0.9+; a base carrying `Metadata` (sealer 0.8); a base with sealer 0.9+
/// labels; a CMD (deprecated in 0.9) with nothing of 0.9 around it. With
/// none of these the result has no reason and follows sealer 0.8's rules,
/// the rule of sealer's documented build examples.
pub fn decide_generation(
    forced: Option<CopySemantics>,
    instructions: &[Instruction],
    base: Option<&BaseEvidence>,
) -> Generation {
    let decided = |semantics, reason: String| Generation {
        semantics,
        reason: Some(reason),
    };
    if let Some(s) = forced {
        return decided(s, "chosen with --copy-semantics".into());
    }
    if let Some(i) = instructions.iter().find(|i| i.kind.only_in_sealer_09()) {
        return decided(
            CopySemantics::Sealer09,
            format!(
                "line {} has {}, which only sealer 0.9+ reads",
                i.line,
                i.keyword()
            ),
        );
    }
    if let Some(b) = base {
        if let Some(v) = &b.built_by_sealer {
            return decided(
                CopySemantics::Sealer09,
                format!("the base {} was built by sealer {v}", b.name),
            );
        }
        if b.has_metadata {
            return decided(
                CopySemantics::Sealer08,
                format!(
                    "the base {} carries a Metadata file, as sealer 0.8 images do",
                    b.name
                ),
            );
        }
        if let Some(l) = &b.sealer_09_label {
            return decided(
                CopySemantics::Sealer09,
                format!("the base {} has the sealer 0.9+ label {l}", b.name),
            );
        }
    }
    if let Some(i) = instructions
        .iter()
        .find(|i| matches!(i.kind, InstructionKind::Cmd(_)))
    {
        return decided(
            CopySemantics::Sealer08,
            format!(
                "line {} has CMD, which sealer 0.9 deprecated, and nothing only 0.9+ reads",
                i.line
            ),
        );
    }
    Generation {
        semantics: CopySemantics::Sealer08,
        reason: None,
    }
}

/// The largest `Metadata` file recorded in the manifest annotation.
const MAX_METADATA: u64 = 64 * 1024;

/// Build-time caching of container images, plugged into the build.
///
/// Called once per platform, after every Kubefile instruction ran, with the
/// merged rootfs materialized at `rootfs` and the platform being built.
/// Whatever it writes under `out` (a `registry/docker/registry/v2/...` tree,
/// paths relative to the rootfs) becomes one more layer of that platform's
/// image. Returning `Ok(false)` (or writing nothing) adds no layer.
pub trait ImageCache {
    /// Caches the images `rootfs` needs, for `platform`, into `out`.
    fn cache(
        &self,
        rootfs: &Path,
        out: &Path,
        platform: &Platform,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>>;
}

/// Everything a build needs besides the store.
pub struct BuildOptions<'a> {
    /// The Kubefile to read.
    pub kubefile: PathBuf,
    /// The context directory COPY reads from.
    pub context: PathBuf,
    /// The name to give the image.
    pub tag: String,
    /// `--build-arg K=V` values for ARG.
    pub build_args: BTreeMap<String, String>,
    /// `--label K=V` values, applied after the Kubefile's LABELs.
    pub labels: BTreeMap<String, String>,
    /// `linux/<arch>[/<variant>]`, or several separated by commas for a
    /// multi-platform image (one image per platform under one index); sets
    /// `${ARCH}`. Default: the build host's.
    pub platform: String,
    /// Build-time image caching; `None` adds no registry layer.
    pub image_cache: Option<&'a dyn ImageCache>,
    /// Layer compression settings.
    pub layer: LayerOptions,
    /// Whose COPY rules to follow; `None` decides from the Kubefile and its
    /// base ([`decide_generation`]).
    pub copy_semantics: Option<CopySemantics>,
}

impl<'a> BuildOptions<'a> {
    /// Options with the defaults: no args or labels, the host's platform.
    pub fn new(kubefile: impl Into<PathBuf>, context: impl Into<PathBuf>, tag: &str) -> Self {
        Self {
            kubefile: kubefile.into(),
            context: context.into(),
            tag: tag.to_string(),
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            platform: default_platform(),
            image_cache: None,
            layer: LayerOptions::default(),
            copy_semantics: None,
        }
    }
}

/// `linux/<arch>` of the build host, in OCI architecture names.
pub fn default_platform() -> String {
    let p = crate::registry::platform::host_platform();
    format!("{}/{}", p.os, p.architecture)
}

/// What a successful build made.
#[derive(Clone, Debug)]
pub struct BuildReport {
    /// The image's name.
    pub name: ImageRef,
    /// The image digest: the manifest's, or the index's when several
    /// platforms were built.
    pub digest: Digest,
    /// How many layers the image has (the first platform's, for several).
    pub layers: usize,
    /// Each platform built: `os/arch[/variant]`, its manifest digest and
    /// its number of layers.
    pub platforms: Vec<(String, Digest, usize)>,
    /// The sealer generation whose COPY rules the build followed (the first
    /// platform's).
    pub generation: Generation,
    /// Which rule placed a COPY source where the generations differ,
    /// `FILE:LINE: COPY ...: ...` (each once, over every platform).
    pub notes: Vec<String>,
    /// What the user should look at: COPY words sealer ignores, and COPY
    /// lines placed by the default rule because nothing decided the
    /// generation (each once, over every platform).
    pub warnings: Vec<String>,
}

/// Why one instruction of a build failed (shown with the Kubefile, line and
/// instruction in [`BuildError::Instruction`]).
#[derive(Debug, thiserror::Error)]
pub enum InstructionError {
    /// Its arguments do not parse (after variables are expanded).
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// A layer could not be made or read.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer's media type is not one Seaport reads.
    #[error(transparent)]
    Media(#[from] crate::media::LayerMediaError),
    /// A file operation failed.
    #[error("{action}{}: {source}", .path.display())]
    Io {
        /// What was done (`reading `), or nothing.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A layer of the image does not read as a tar stream.
    #[error(transparent)]
    Tar(std::io::Error),
    /// A staged layer cannot be read again.
    #[error("reopening a staged layer: {0}")]
    Reopen(std::io::Error),
    /// A layer does not unpack.
    #[error("materializing layer {layer}: {source}")]
    Materialize {
        /// The layer.
        layer: Digest,
        /// Why.
        source: safetar::SafeTarError,
    },
    /// Walking a source directory failed.
    #[error("reading {}: {source}", .path.display())]
    Walk {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: walkdir::Error,
    },
    /// Not `os/arch[/variant]`.
    #[error("expected OS/ARCH[/VARIANT], e.g. linux/amd64")]
    Platform,
    /// LAUNCH or APPENV names an app that was not declared.
    #[error("application {0:?} does not exist in the image (declare it with APP first)")]
    NoApplication(String),
    /// A one-platform base image of another platform.
    #[error("base image {image} is {available}, but this build is for {wanted} (use --platform)")]
    BaseIsOther {
        /// The base image.
        image: String,
        /// Its platform.
        available: String,
        /// The build's.
        wanted: String,
    },
    /// A multi-platform base image without the build's platform.
    #[error("base image {image} has no manifest for {wanted} (it has: {available})")]
    BaseLacks {
        /// The base image.
        image: String,
        /// The build's platform.
        wanted: String,
        /// Its platforms.
        available: String,
    },
    /// A base image whose layers Seaport does not read.
    #[error("base image {image}: {source}")]
    BaseMedia {
        /// The base image.
        image: String,
        /// Why.
        source: crate::media::LayerMediaError,
    },
    /// A base image whose layers and config disagree.
    #[error("base image {image} is malformed: {layers} layers but {diff_ids} diff_ids")]
    BaseMalformed {
        /// The base image.
        image: String,
        /// Its layers.
        layers: usize,
        /// Its config's diff ids.
        diff_ids: usize,
    },
    /// A base image with a broken sealer extension.
    #[error("base image {image}: malformed {ANNOTATION_SEALER_EXTENSION}: {source}")]
    BaseExtension {
        /// The base image.
        image: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A bad glob.
    #[error("source pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        source: glob::PatternError,
    },
    /// A glob matching nothing.
    #[error("source {0:?} matches nothing in the build context")]
    NoMatch(String),
    /// A source that does not exist.
    #[error("source {pattern:?} does not exist in the build context {}", .context.display())]
    NoSource {
        /// The source.
        pattern: String,
        /// The context.
        context: PathBuf,
    },
    /// A source that cannot be resolved.
    #[error("source {pattern:?}: {}: {source}", .path.display())]
    SourceIo {
        /// The source.
        pattern: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A source leading out of the context.
    #[error("source {pattern:?} resolves to {}, outside the build context {}; COPY only reads from the context", .resolved.display(), .context.display())]
    OutsideContext {
        /// The source.
        pattern: String,
        /// Where it leads.
        resolved: PathBuf,
        /// The context.
        context: PathBuf,
    },
    /// RUN could not start its command.
    #[error("starting the command: {0}")]
    Start(std::io::Error),
    /// RUN's command failed.
    #[error("the command failed ({0})")]
    CommandFailed(process::ExitStatus),
    /// A directory copied over a file of the image.
    #[error("destination {0} is a file in the image, not a directory")]
    DestinationIsFile(String),
    /// A destination climbing out of the rootfs.
    #[error("destination {0:?} leaves the rootfs")]
    DestinationLeaves(String),
}

/// Errors from a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Kubefile does not parse.
    #[error(transparent)]
    Kubefile(#[from] KubefileError),
    /// An instruction failed.
    #[error("{file}:{line}: {instruction}: {message}")]
    Instruction {
        /// The Kubefile.
        file: String,
        /// Its line.
        line: usize,
        /// The keyword.
        instruction: String,
        /// What failed.
        message: String,
    },
    /// Something outside any one instruction failed.
    #[error("{0}")]
    Other(String),
    /// A step outside any one instruction failed.
    #[error(transparent)]
    Step(#[from] InstructionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image name is invalid.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

struct LayerRec {
    desc: Descriptor,
    diff_id: Digest,
    /// The layer's bytes before they enter the store (None: already there).
    staged: Option<NamedTempFile>,
    /// For layers this build made: each path and whether it is a directory,
    /// a whiteout or something else.
    paths: Option<Vec<(String, PathKind)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Dir,
    Other,
    Whiteout,
}

struct Builder<'s, 'o> {
    store: &'s Store,
    opts: &'o BuildOptions<'o>,
    file: String,
    context: PathBuf,
    work: TempDir,
    layers: Vec<LayerRec>,
    history: Vec<History>,
    env: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
    author: Option<String>,
    vars: BTreeMap<String, String>,
    ext: ImageExtension,
    metadata: Option<String>,
    os: String,
    arch: String,
    variant: Option<String>,
    materialized: Option<(PathBuf, usize)>,
    index: BTreeMap<String, PathKind>,
    indexed: usize,
    instructions: Vec<Instruction>,
    generation: Generation,
    notes: Vec<String>,
    warnings: Vec<String>,
    /// Apps this Kubefile declares whose type could not be told: the line,
    /// the instruction (APP, CNI, CSI) and why.
    untyped_apps: BTreeMap<String, (usize, &'static str, String)>,
}

/// Builds the image `opts` describes into `store` and names it `opts.tag`.
///
/// With several platforms, the Kubefile runs once per platform (`${ARCH}`
/// and FROM's base resolved for each) and the name points at an OCI index
/// of the platforms' manifests, in the order given. Nothing enters the
/// store until every platform's build succeeded.
pub fn build(store: &Store, opts: &BuildOptions<'_>) -> Result<BuildReport, BuildError> {
    let name = ImageRef::parse(&opts.tag)?;
    let file = opts.kubefile.display().to_string();
    let text = read_kubefile(&opts.kubefile)?;
    let instructions = kubefile::parse(&file, &text)?;
    let context = fs::canonicalize(&opts.context)
        .map_err(|e| BuildError::Other(format!("build context {}: {e}", opts.context.display())))?;
    if !context.is_dir() {
        return Err(BuildError::Other(format!(
            "build context {} is not a directory",
            opts.context.display()
        )));
    }
    let platforms = parse_platforms(&opts.platform)
        .map_err(|m| BuildError::Other(format!("--platform {:?}: {m}", opts.platform)))?;
    let mut built = Vec::new();
    for platform in &platforms {
        if platforms.len() > 1 {
            tracing::info!(platform = %platform_string(platform), "building for platform");
        }
        built.push(build_platform(
            store,
            opts,
            &file,
            &context,
            &instructions,
            platform,
        )?);
    }
    store_built(store, &name, built)
}

/// Runs the Kubefile for one platform; the result is staged, not stored.
fn build_platform(
    store: &Store,
    opts: &BuildOptions<'_>,
    file: &str,
    context: &Path,
    instructions: &[Instruction],
    platform: &Platform,
) -> Result<Built, BuildError> {
    let mut vars = BTreeMap::new();
    vars.insert("ARCH".to_string(), platform.architecture.clone());
    let mut b = Builder {
        store,
        opts,
        file: file.to_string(),
        context: context.to_path_buf(),
        work: store.temp_dir("build-")?,
        layers: Vec::new(),
        history: Vec::new(),
        env: Vec::new(),
        labels: BTreeMap::new(),
        author: None,
        vars,
        ext: ImageExtension::default(),
        metadata: None,
        os: platform.os.clone(),
        arch: platform.architecture.clone(),
        variant: platform.variant.clone(),
        materialized: None,
        index: BTreeMap::new(),
        indexed: 0,
        generation: decide_generation(opts.copy_semantics, instructions, None),
        instructions: instructions.to_vec(),
        notes: Vec::new(),
        warnings: Vec::new(),
        untyped_apps: BTreeMap::new(),
    };
    for ins in instructions {
        tracing::info!(line = ins.line, instruction = %ins.original, "build step");
        b.step(ins).map_err(|e| BuildError::Instruction {
            file: b.file.clone(),
            line: ins.line,
            instruction: ins.keyword().to_string(),
            message: e.to_string(),
        })?;
    }
    // As sealer: an app whose type cannot be told needs APPCMDS.
    for (name, (line, keyword, why)) in &b.untyped_apps {
        let has_cmds = b
            .ext
            .applications
            .iter()
            .any(|a| &a.name == name && !a.launch_cmds.is_empty());
        if !has_cmds {
            return Err(BuildError::Instruction {
                file: b.file.clone(),
                line: *line,
                instruction: keyword.to_string(),
                message: format!(
                    "app {name}: {why}, so Seaport cannot tell how to launch it; \
                     give APPCMDS {name} [\"COMMAND\", ...]"
                ),
            });
        }
    }
    for (k, v) in &opts.labels {
        b.labels.insert(k.clone(), v.clone());
    }
    if let Some(cache) = opts.image_cache {
        b.run_image_cache(cache)?;
    }
    Ok(b.finish())
}

/// One platform's image, ready to enter the store.
struct Built {
    platform: Platform,
    layers: Vec<LayerRec>,
    config_bytes: Vec<u8>,
    manifest_bytes: Vec<u8>,
    generation: Generation,
    notes: Vec<String>,
    warnings: Vec<String>,
}

/// Moves the built images' blobs into the store and names the image: the
/// one manifest, or an index of all of them.
fn store_built(
    store: &Store,
    name: &ImageRef,
    built: Vec<Built>,
) -> Result<BuildReport, BuildError> {
    let _guard = store.write_guard()?;
    let mut platforms = Vec::new();
    let mut index = Index::new();
    let generation = built
        .first()
        .map(|b| b.generation.clone())
        .ok_or_else(|| BuildError::Other("no platform to build".into()))?;
    let mut notes: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    for mut b in built {
        for n in b.notes.drain(..) {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        for w in b.warnings.drain(..) {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        for rec in &mut b.layers {
            if let Some(tmp) = rec.staged.take() {
                store.commit_temp_blob(tmp, &rec.desc.digest)?;
            } else if !store.has_blob(&rec.desc.digest) {
                return Err(StoreError::MissingBlob(rec.desc.digest).into());
            }
        }
        store.put_blob(&b.config_bytes)?;
        let digest = store.put_blob(&b.manifest_bytes)?;
        platforms.push((platform_string(&b.platform), digest, b.layers.len()));
        index.manifests.push(Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest,
            size: b.manifest_bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: Some(b.platform),
        });
    }
    let digest = match platforms.as_slice() {
        [(_, digest, _)] => *digest,
        _ => store.put_blob(&serde_json::to_vec(&index).expect("index serializes"))?,
    };
    store.set_name(name, &digest)?;
    Ok(BuildReport {
        name: name.clone(),
        digest,
        layers: platforms.first().map_or(0, |p| p.2),
        platforms,
        generation,
        notes,
        warnings,
    })
}

fn read_kubefile(path: &Path) -> Result<String, BuildError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| {
            f.take(kubefile::MAX_KUBEFILE_SIZE as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| BuildError::Other(format!("reading Kubefile {}: {e}", path.display())))?;
    Ok(text)
}

fn parse_one_platform(p: &str) -> Result<Platform, InstructionError> {
    parse_platform(p).ok_or(InstructionError::Platform)
}

/// `os/arch[/variant]` values separated by commas, without duplicates.
fn parse_platforms(list: &str) -> Result<Vec<Platform>, InstructionError> {
    let mut out: Vec<Platform> = Vec::new();
    for p in list.split(',') {
        let p = parse_one_platform(p)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

impl Builder<'_, '_> {
    fn expand(&self, s: &str) -> Result<String, InstructionError> {
        Ok(kubefile::expand(s, &self.vars)?)
    }

    fn step(&mut self, ins: &Instruction) -> Result<(), InstructionError> {
        let created_by = ins.original.clone();
        match &ins.kind {
            InstructionKind::From { image, platform } => {
                let image = self.expand(image)?;
                if let Some(p) = platform {
                    let p = parse_one_platform(&self.expand(p)?)?;
                    self.vars.insert("ARCH".into(), p.architecture.clone());
                    (self.os, self.arch, self.variant) = (p.os, p.architecture, p.variant);
                }
                let base = if image == "scratch" {
                    None
                } else {
                    Some(self.start_from_image(&image)?)
                };
                self.generation =
                    decide_generation(self.opts.copy_semantics, &self.instructions, base.as_ref());
                self.ext.kind = if self.ext.kind.is_empty() {
                    "kube-installer".into()
                } else {
                    self.ext.kind.clone()
                };
                self.empty_history(created_by);
            }
            InstructionKind::Copy {
                source,
                dest,
                ignored,
            } => {
                let words: Vec<&String> = ignored.iter().filter(|w| !w.starts_with("--")).collect();
                let flags: Vec<&String> = ignored.iter().filter(|w| w.starts_with("--")).collect();
                if !flags.is_empty() {
                    self.warn(ins, format!("ignoring {flags:?}, as sealer 0.9+ does: layers are root's, modes are kept"));
                }
                if words.first().is_some_and(|w| !w.starts_with('#')) {
                    self.warn(
                        ins,
                        format!(
                            "ignoring {words:?}: sealer reads a source and a destination only \
                             (use ADD, or one COPY per source)"
                        ),
                    );
                }
                let source = self.expand(source)?;
                let dest = self.expand(dest)?;
                let mut entries = Entries::new();
                let semantics = self.generation.semantics;
                let placed = self.copy_into(&mut entries, &[source], &dest, semantics)?;
                self.report_placements(ins, &placed);
                self.add_layer(entries, created_by)?;
            }
            InstructionKind::Add { sources, dest } => {
                let dest = self.expand(dest)?;
                let mut expanded = Vec::new();
                for s in sources {
                    expanded.push(self.expand(s)?);
                }
                let mut entries = Entries::new();
                self.copy_into(&mut entries, &expanded, &dest, CopySemantics::Sealer09)?;
                self.add_layer(entries, created_by)?;
            }
            InstructionKind::Env(kvs) => {
                for (k, v) in kvs {
                    let v = self.expand(v)?;
                    self.vars.insert(k.clone(), v.clone());
                    match self.env.iter_mut().find(|(ek, _)| ek == k) {
                        Some(e) => e.1 = v,
                        None => self.env.push((k.clone(), v)),
                    }
                }
                self.empty_history(created_by);
            }
            InstructionKind::Arg { name, default } => {
                let value = match (self.opts.build_args.get(name), default) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(d)) => Some(self.expand(d)?),
                    (None, None) => None,
                };
                if let Some(v) = value {
                    self.vars.insert(name.clone(), v);
                }
                self.empty_history(created_by);
            }
            InstructionKind::Label(kvs) => {
                for (k, v) in kvs {
                    self.labels.insert(self.expand(k)?, self.expand(v)?);
                }
                self.empty_history(created_by);
            }
            InstructionKind::Maintainer(m) => {
                self.author = Some(m.clone());
                self.empty_history(created_by);
            }
            InstructionKind::KubeVersion(v) => {
                self.labels.insert(LABEL_KUBE_VERSION.into(), v.clone());
                self.empty_history(created_by);
            }
            InstructionKind::Run(cmd) => self.run(cmd, created_by)?,
            InstructionKind::Cmd(c) => {
                self.ext.launch.cmds.extend(c.iter().cloned());
                self.empty_history(created_by);
            }
            InstructionKind::Cmds(cmds) => {
                self.ext.launch.cmds = cmds.clone();
                self.ext.launch.app_names.clear();
                self.empty_history(created_by);
            }
            InstructionKind::Launch(apps) => {
                for a in apps {
                    if !self.ext.applications.iter().any(|x| &x.name == a) {
                        return Err(InstructionError::NoApplication(a.clone()));
                    }
                }
                self.ext.launch.app_names = apps.clone();
                self.ext.launch.cmds.clear();
                self.empty_history(created_by);
            }
            InstructionKind::App { name, sources } => {
                self.app(ins, name, sources, "app", created_by)?
            }
            InstructionKind::Cni { name, sources } => {
                self.app(ins, name, sources, "cni", created_by)?;
                self.labels
                    .insert(format!("{LABEL_KUBE_CNI_PREFIX}{name}"), "true".into());
            }
            InstructionKind::Csi { name, sources } => {
                self.app(ins, name, sources, "csi", created_by)?;
                self.labels
                    .insert(format!("{LABEL_KUBE_CSI_PREFIX}{name}"), "true".into());
            }
            InstructionKind::AppCmds { name, cmds } => {
                self.app_mut(name)?.launch_cmds = cmds.clone();
                self.empty_history(created_by);
            }
            InstructionKind::AppEnv { name, env } => {
                let mut expanded = Vec::new();
                for (k, v) in env {
                    expanded.push((k.clone(), self.expand(v)?));
                }
                let app = self.app_mut(name)?;
                app.env.extend(expanded);
                self.empty_history(created_by);
            }
        }
        Ok(())
    }

    fn app_mut(&mut self, name: &str) -> Result<&mut Application, InstructionError> {
        self.ext
            .applications
            .iter_mut()
            .find(|a| a.name == name)
            .ok_or_else(|| InstructionError::NoApplication(name.to_string()))
    }

    fn empty_history(&mut self, created_by: String) {
        self.history.push(History {
            created: created_stamp(&self.opts.layer),
            created_by: Some(created_by),
            empty_layer: true,
        });
    }

    fn start_from_image(&mut self, image: &str) -> Result<BaseEvidence, InstructionError> {
        let stored = self.store.image(image)?;
        let wanted = Platform {
            architecture: self.arch.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        };
        let base = stored.for_platform(&wanted).map_err(|e| match e {
            StoreError::NoPlatform { available, .. } if !stored.is_index() => {
                InstructionError::BaseIsOther {
                    image: image.to_string(),
                    available,
                    wanted: platform_string(&wanted),
                }
            }
            StoreError::NoPlatform { available, .. } => InstructionError::BaseLacks {
                image: image.to_string(),
                wanted: platform_string(&wanted),
                available,
            },
            other => other.into(),
        })?;
        crate::media::check_layers(&base.manifest.layers).map_err(|source| {
            InstructionError::BaseMedia {
                image: image.to_string(),
                source,
            }
        })?;
        if base.manifest.layers.len() != base.config.rootfs.diff_ids.len() {
            return Err(InstructionError::BaseMalformed {
                image: image.to_string(),
                layers: base.manifest.layers.len(),
                diff_ids: base.config.rootfs.diff_ids.len(),
            });
        }
        for (desc, diff_id) in base
            .manifest
            .layers
            .iter()
            .zip(&base.config.rootfs.diff_ids)
        {
            // The same bytes under the OCI name of their format: the new
            // manifest is an OCI manifest even over a Docker base.
            let mut desc = desc.clone();
            if let Some(t) = crate::media::oci_layer_media_type(&desc.media_type) {
                desc.media_type = t.into();
            }
            self.layers.push(LayerRec {
                desc,
                diff_id: *diff_id,
                staged: None,
                paths: None,
            });
        }
        self.history = base.config.history.clone();
        for e in &base.config.config.env {
            if let Some((k, v)) = e.split_once('=') {
                self.env.push((k.into(), v.into()));
                self.vars.insert(k.into(), v.into());
            }
        }
        self.labels = base.config.config.labels.clone();
        self.author = base.config.author.clone();
        if let Some(ext) = base.manifest.annotations.get(ANNOTATION_SEALER_EXTENSION) {
            self.ext =
                serde_json::from_str(ext).map_err(|source| InstructionError::BaseExtension {
                    image: image.to_string(),
                    source,
                })?;
        }
        self.metadata = base.manifest.annotations.get(ANNOTATION_METADATA).cloned();
        let client = &self.ext.build_client;
        let built_by_sealer = (!client.buildah_version.is_empty()
            || (!client.sealer_version.is_empty()
                && !client.sealer_version.starts_with("seaport")))
        .then(|| client.sealer_version.clone());
        let sealer_09_label = self
            .labels
            .keys()
            .find(|k| {
                k.starts_with("cluster.alpha.sealer.io/") || k.starts_with("app.alpha.sealer.io/")
            })
            .cloned();
        Ok(BaseEvidence {
            name: image.to_string(),
            built_by_sealer,
            has_metadata: self.metadata.is_some(),
            sealer_09_label,
        })
    }

    fn warn(&mut self, ins: &Instruction, message: String) {
        let text = format!("{}:{}: {}: {message}", self.file, ins.line, ins.keyword());
        tracing::debug!("{text}");
        self.warnings.push(text);
    }

    /// Says, for each COPY source the two generations place differently,
    /// where it went and by which rule.
    fn report_placements(&mut self, ins: &Instruction, placed: &[Placement]) {
        let other = self.generation.semantics.other();
        for p in placed.iter().filter(|p| p.chosen != p.other) {
            let what = if p.is_dir {
                format!(
                    "the contents of directory {} go to {} ({other} rules: to {})",
                    p.source,
                    show_dir(&p.chosen),
                    show_dir(&p.other)
                )
            } else {
                format!(
                    "{} is written to {} ({other} rules: to {})",
                    p.source,
                    show_file(&p.chosen),
                    show_file(&p.other)
                )
            };
            let head = format!("{}:{}: {}", self.file, ins.line, ins.original);
            match &self.generation.reason {
                Some(reason) => self.notes.push(format!(
                    "{head}: {what}: {} rules, {reason}",
                    self.generation.semantics
                )),
                None => self.warnings.push(format!(
                    "{head}: nothing in the Kubefile or its base shows which sealer generation \
                     it was written for, so sealer's documented rule applies: {what}; \
                     choose with --copy-semantics {} or {}",
                    CopySemantics::Sealer08.flag_value(),
                    CopySemantics::Sealer09.flag_value()
                )),
            }
        }
        for p in placed.iter().filter(|p| p.replaced_file) {
            self.notes.push(format!(
                "{}:{}: {}: {} replaces the file {} (sealer 0.8 would have turned it into a directory holding {})",
                self.file,
                ins.line,
                ins.original,
                p.source,
                show_file(&p.chosen),
                p.source
            ));
        }
    }

    /// Resolves a source pattern to (name to copy as, path to read).
    fn resolve_sources(&self, pattern: &str) -> Result<Vec<(String, PathBuf)>, InstructionError> {
        let rel = pattern.trim_start_matches('/');
        let has_glob = rel.contains(['*', '?', '[']);
        let candidates: Vec<PathBuf> = if has_glob {
            let full = format!(
                "{}/{}",
                glob::Pattern::escape(&self.context.to_string_lossy()),
                rel
            );
            let mut found: Vec<PathBuf> = glob::glob(&full)
                .map_err(|source| InstructionError::Pattern {
                    pattern: pattern.to_string(),
                    source,
                })?
                .filter_map(Result::ok)
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(InstructionError::NoMatch(pattern.to_string()));
            }
            found
        } else {
            let p = self.context.join(if rel.is_empty() { "." } else { rel });
            if fs::symlink_metadata(&p).is_err() {
                return Err(InstructionError::NoSource {
                    pattern: pattern.to_string(),
                    context: self.context.clone(),
                });
            }
            vec![p]
        };
        let mut out = Vec::new();
        for c in candidates {
            let canon = fs::canonicalize(&c).map_err(|source| InstructionError::SourceIo {
                pattern: pattern.to_string(),
                path: c.clone(),
                source,
            })?;
            if !canon.starts_with(&self.context) {
                return Err(InstructionError::OutsideContext {
                    pattern: pattern.to_string(),
                    resolved: canon,
                    context: self.context.clone(),
                });
            }
            let base = c
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((base, canon));
        }
        Ok(out)
    }

    /// Copies `sources` to `dest` by `rules` into `entries`; returns where
    /// each source went and where the other generation would have put it.
    fn copy_into(
        &mut self,
        entries: &mut Entries,
        sources: &[String],
        dest: &str,
        rules: CopySemantics,
    ) -> Result<Vec<Placement>, InstructionError> {
        let (dest_key, trailing) = normalize_dest(dest)?;
        let mut resolved = Vec::new();
        let mut globbed = false;
        for s in sources {
            globbed |= s.contains(['*', '?', '[']);
            resolved.extend(self.resolve_sources(s)?);
        }
        // The layers below are read (once, indexed) only when the
        // destination's own spelling does not say it is a directory.
        let dest_kind =
            if trailing || dest_key.is_empty() || ROOTFS_DIRS.contains(&dest_key.as_str()) {
                Some(PathKind::Dir)
            } else {
                self.path_kind_in_image(&dest_key)?
            };
        let target = CopyTarget {
            last: dest_key.rsplit('/').next().unwrap_or_default().to_string(),
            is_dir: dest_kind == Some(PathKind::Dir),
            is_file: dest_kind == Some(PathKind::Other),
            several: resolved.len() > 1 || globbed,
            key: dest_key,
        };
        let mut placed = Vec::new();
        for (base, path) in resolved {
            let meta = fs::metadata(&path).map_err(|source| InstructionError::Io {
                action: "",
                path: path.clone(),
                source,
            })?;
            let source = Source {
                base,
                is_dir: meta.is_dir(),
                is_context: path == self.context,
            };
            let chosen = target.place(&source, rules)?;
            let other = target
                .place(&source, rules.other())
                .unwrap_or_else(|_| chosen.clone());
            if source.is_dir {
                layer::add_tree(entries, &path, &chosen)?;
            } else {
                let mut e = layer::entry_for(&path)?;
                if let EntrySource::Symlink(_) = e.source {
                    // The top-level source was followed by canonicalize; copy the file.
                    e = LayerEntry {
                        source: EntrySource::File(path.clone()),
                        mode: e.mode,
                    };
                }
                entries.insert(chosen.clone(), e);
            }
            placed.push(Placement {
                source: if source.is_context {
                    "the build context".into()
                } else {
                    source.base.clone()
                },
                is_dir: source.is_dir,
                replaced_file: rules == CopySemantics::Sealer08
                    && !source.is_dir
                    && target.is_file
                    && chosen == target.key
                    && source.base != target.last,
                chosen,
                other,
            });
        }
        Ok(placed)
    }

    fn app(
        &mut self,
        ins: &Instruction,
        name: &str,
        sources: &[String],
        role: &str,
        created_by: String,
    ) -> Result<(), InstructionError> {
        let dest = format!("{APP_ROOT}/{name}/");
        let mut expanded = Vec::new();
        for s in sources {
            expanded.push(self.expand(s)?);
        }
        let mut resolved = Vec::new();
        for s in &expanded {
            for (_, path) in self.resolve_sources(s)? {
                resolved.push((s.clone(), path));
            }
        }
        let detected = app_type(name, &resolved)?;
        let mut entries = Entries::new();
        self.copy_into(&mut entries, &expanded, &dest, CopySemantics::Sealer09)?;
        self.add_layer(entries, created_by)?;
        let (kind, launch_files) = match detected {
            AppType::Known { kind, files } => {
                self.untyped_apps.remove(name);
                (kind.to_string(), files)
            }
            AppType::Unknown(why) => {
                self.untyped_apps
                    .insert(name.to_string(), (ins.line, ins.keyword(), why));
                (String::new(), Vec::new())
            }
        };
        let app = Application {
            name: name.to_string(),
            kind,
            launch_files,
            launch_cmds: Vec::new(),
            env: BTreeMap::new(),
            role: role.to_string(),
            path: dest,
        };
        match self.ext.applications.iter_mut().find(|a| a.name == name) {
            Some(existing) => *existing = app,
            None => self.ext.applications.push(app),
        }
        Ok(())
    }

    fn run(&mut self, cmd: &Command, created_by: String) -> Result<(), InstructionError> {
        let root = self.materialize()?;
        let before = layer::Snapshot::take(&root)?;
        let mut command = match cmd {
            Command::Shell(s) => {
                let mut c = process::Command::new("sh");
                c.arg("-c").arg(s);
                c
            }
            Command::Exec(argv) => {
                let mut c = process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        command.current_dir(&root).stdin(process::Stdio::null());
        for (k, v) in &self.vars {
            command.env(k, v);
        }
        let status = command.status().map_err(InstructionError::Start)?;
        if !status.success() {
            return Err(InstructionError::CommandFailed(status));
        }
        let entries = before.diff(&root)?;
        if entries.is_empty() {
            self.empty_history(created_by);
            return Ok(());
        }
        self.add_layer(entries, created_by)?;
        // The tree already holds what the new layer holds.
        self.materialized = Some((root, self.layers.len()));
        Ok(())
    }

    fn run_image_cache(&mut self, cache: &dyn ImageCache) -> Result<(), BuildError> {
        let root = self.materialize()?;
        let out = self.work.path().join("image-cache");
        fs::create_dir_all(&out)
            .map_err(|e| BuildError::Other(format!("creating {}: {e}", out.display())))?;
        let platform = Platform {
            architecture: self.arch.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        };
        let wrote = cache
            .cache(&root, &out, &platform)
            .map_err(|e| BuildError::Other(format!("caching container images: {e}")))?;
        let mut entries = Entries::new();
        layer::add_tree(&mut entries, &out, "").map_err(|e| BuildError::Other(e.to_string()))?;
        if wrote && !entries.is_empty() {
            self.add_layer(
                entries,
                "seaport: cached container images (registry/)".into(),
            )?;
        }
        Ok(())
    }

    fn add_layer(&mut self, entries: Entries, created_by: String) -> Result<(), InstructionError> {
        let mut tmp = self.store.temp_file()?;
        let written = layer::write_layer(&entries, tmp.as_file_mut(), &self.opts.layer)?;
        // Track the rootfs's Metadata file for the manifest annotation.
        match entries.get("Metadata").map(|e| &e.source) {
            Some(EntrySource::File(p)) => {
                let mut text = String::new();
                File::open(p)
                    .and_then(|f| f.take(MAX_METADATA).read_to_string(&mut text))
                    .map_err(|source| InstructionError::Io {
                        action: "reading ",
                        path: p.clone(),
                        source,
                    })?;
                self.metadata = Some(text);
            }
            Some(_) => self.metadata = None,
            None => {}
        }
        let paths = entries
            .iter()
            .map(|(k, e)| {
                let kind = match e.source {
                    EntrySource::Dir => PathKind::Dir,
                    EntrySource::Whiteout => PathKind::Whiteout,
                    _ => PathKind::Other,
                };
                (k.clone(), kind)
            })
            .collect();
        let mut annotations = BTreeMap::new();
        annotations.insert(
            ANNOTATION_LAYER_INSTRUCTION.to_string(),
            created_by.chars().take(1024).collect(),
        );
        self.layers.push(LayerRec {
            desc: Descriptor {
                media_type: MEDIA_TYPE_LAYER_ZSTD.into(),
                digest: written.digest,
                size: written.size,
                annotations,
                platform: None,
            },
            diff_id: written.diff_id,
            staged: Some(tmp),
            paths: Some(paths),
        });
        self.history.push(History {
            created: created_stamp(&self.opts.layer),
            created_by: Some(created_by),
            empty_layer: false,
        });
        Ok(())
    }

    fn open_layer(&self, rec: &LayerRec) -> Result<Box<dyn Read + '_>, InstructionError> {
        let file = match &rec.staged {
            Some(t) => t.reopen().map_err(InstructionError::Reopen)?,
            None => self.store.open_blob(&rec.desc.digest)?,
        };
        Ok(crate::media::open_layer(&rec.desc, file)?)
    }

    /// The merged rootfs so far, as a directory.
    fn materialize(&mut self) -> Result<PathBuf, InstructionError> {
        let (root, applied) = match self.materialized.take() {
            Some(m) => m,
            None => {
                let root = self.work.path().join("rootfs");
                fs::create_dir_all(&root).map_err(|source| InstructionError::Io {
                    action: "creating ",
                    path: root.clone(),
                    source,
                })?;
                (root, 0)
            }
        };
        for rec in &self.layers[applied..] {
            let reader = self.open_layer(rec)?;
            safetar::unpack(reader, &root, &safetar::UnpackOptions::default()).map_err(
                |source| InstructionError::Materialize {
                    layer: rec.desc.digest,
                    source,
                },
            )?;
        }
        self.materialized = Some((root.clone(), self.layers.len()));
        Ok(root)
    }

    /// Whether `key` is a directory or something else in the layers so far.
    fn path_kind_in_image(&mut self, key: &str) -> Result<Option<PathKind>, InstructionError> {
        if key.is_empty() {
            return Ok(Some(PathKind::Dir));
        }
        while self.indexed < self.layers.len() {
            let rec = &self.layers[self.indexed];
            let paths: Vec<(String, PathKind)> = match &rec.paths {
                Some(p) => p.clone(),
                None => {
                    let mut out = Vec::new();
                    let reader = self.open_layer(rec)?;
                    let mut archive = tar::Archive::new(reader);
                    for entry in archive.entries().map_err(InstructionError::Tar)? {
                        let entry = entry.map_err(InstructionError::Tar)?;
                        let path = entry.path().map_err(InstructionError::Tar)?;
                        let Ok(Some(norm)) = safetar::normalize_entry_path(&path) else {
                            continue;
                        };
                        let s = norm.to_string_lossy().into_owned();
                        let name = norm
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        if let Some(hidden) = name.strip_prefix(safetar::WHITEOUT_PREFIX) {
                            let parent = s.rsplit_once('/').map(|(p, _)| p.to_string());
                            let target = match (parent, hidden) {
                                (p, ".wh..opq") => p
                                    .map(|p| format!("{p}/\0opaque"))
                                    .unwrap_or_else(|| "\0opaque".into()),
                                (Some(p), h) => format!("{p}/{h}"),
                                (None, h) => h.to_string(),
                            };
                            out.push((target, PathKind::Whiteout));
                        } else if entry.header().entry_type().is_dir() {
                            out.push((s, PathKind::Dir));
                        } else {
                            out.push((s, PathKind::Other));
                        }
                    }
                    out
                }
            };
            for (p, kind) in paths {
                match kind {
                    PathKind::Whiteout => {
                        let (base, opaque) = match p.strip_suffix("\0opaque") {
                            Some(b) => (b.trim_end_matches('/').to_string(), true),
                            None => (p.clone(), false),
                        };
                        let prefix = if base.is_empty() {
                            String::new()
                        } else {
                            format!("{base}/")
                        };
                        self.index.retain(|k, _| {
                            !(k.starts_with(&prefix) && (opaque || !prefix.is_empty()))
                        });
                        if !opaque {
                            self.index.remove(&base);
                        }
                    }
                    kind => {
                        let mut parent = p.as_str();
                        while let Some((par, _)) = parent.rsplit_once('/') {
                            self.index.insert(par.to_string(), PathKind::Dir);
                            parent = par;
                        }
                        self.index.insert(p, kind);
                    }
                }
            }
            self.indexed += 1;
        }
        Ok(self.index.get(key).copied())
    }

    /// The config and manifest of the image built so far; its layers stay
    /// staged until [`store_built`].
    fn finish(mut self) -> Built {
        let layer_opts = &self.opts.layer;
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.dedup();
        if self.ext.schema_version.is_empty() {
            self.ext.schema_version = "v1alpha1".into();
        }
        self.ext.build_client.sealer_version = format!("seaport-{}", env!("CARGO_PKG_VERSION"));
        let config = ImageConfig {
            created: created_stamp(layer_opts),
            author: self.author.clone(),
            architecture: self.arch.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            config: RuntimeConfig {
                env,
                cmd: self.ext.launch.cmds.clone(),
                labels: self.labels.clone(),
            },
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: self.layers.iter().map(|l| l.diff_id).collect(),
            },
            history: self.history.clone(),
        };
        let config_bytes = serde_json::to_vec(&config).expect("config serializes");
        let mut annotations = BTreeMap::new();
        annotations.insert(
            ANNOTATION_SEALER_EXTENSION.to_string(),
            serde_json::to_string(&self.ext).expect("extension serializes"),
        );
        let platform = match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.arch),
            None => format!("{}/{}", self.os, self.arch),
        };
        annotations.insert(ANNOTATION_PLATFORM.to_string(), platform);
        if let Some(m) = &self.metadata {
            annotations.insert(ANNOTATION_METADATA.to_string(), m.clone());
        }
        if let Some(c) = created_stamp(layer_opts) {
            annotations.insert("org.opencontainers.image.created".into(), c);
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            config: Descriptor {
                media_type: MEDIA_TYPE_CONFIG.into(),
                digest: Digest::of(&config_bytes),
                size: config_bytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: self.layers.iter().map(|l| l.desc.clone()).collect(),
            annotations,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        Built {
            platform: Platform {
                architecture: self.arch.clone(),
                os: self.os.clone(),
                variant: self.variant.clone(),
            },
            layers: std::mem::take(&mut self.layers),
            config_bytes,
            manifest_bytes,
            generation: self.generation.clone(),
            notes: std::mem::take(&mut self.notes),
            warnings: std::mem::take(&mut self.warnings),
        }
    }
}

/// An application's type, told from its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppType {
    /// `helm`, `kube` or `shell`, and the files that launch it (relative to
    /// the app's directory; `[NAME]` for a chart, as sealer records it).
    Known {
        /// The type.
        kind: &'static str,
        /// Its launch files.
        files: Vec<String>,
    },
    /// No type: why (the app then needs APPCMDS).
    Unknown(String),
}

/// Tells an app's type from its sources (as written, and resolved in the
/// context) as sealer 0.9+ does:
///
/// - `helm` when a source directory holds `Chart.yaml`, `values.yaml` and
///   `templates`, or the sources' names end in all three;
/// - otherwise every file (directories walked) by its extension, ignoring
///   case: `.yaml`/`.yml` files only make a `kube` app launched by each file
///   in order; `.sh` files only a `shell` app launched by the first
///   source's files (the others are for it to call);
/// - anything else (another extension, YAML mixed with shell, no files) has
///   no type, and needs APPCMDS.
pub fn app_type(name: &str, sources: &[(String, PathBuf)]) -> Result<AppType, InstructionError> {
    let walk_err = |p: &Path, e: walkdir::Error| InstructionError::Walk {
        path: p.to_path_buf(),
        source: e,
    };
    // Helm.
    let artifact = |s: &str| {
        if s.ends_with("Chart.yaml") {
            1
        } else if s.ends_with("values.yaml") {
            2
        } else if s.ends_with("templates") {
            4
        } else {
            0
        }
    };
    let mut bits = 0;
    for (written, path) in sources {
        if path.is_dir() {
            if ["Chart.yaml", "values.yaml", "templates"]
                .iter()
                .all(|f| path.join(f).exists())
            {
                return Ok(AppType::Known {
                    kind: "helm",
                    files: vec![name.to_string()],
                });
            }
            let entries = fs::read_dir(path).map_err(|source| InstructionError::Io {
                action: "reading ",
                path: path.clone(),
                source,
            })?;
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    bits |= artifact(&e.file_name().to_string_lossy());
                }
            }
        } else {
            bits |= artifact(written);
        }
    }
    if bits == 7 {
        return Ok(AppType::Known {
            kind: "helm",
            files: vec![name.to_string()],
        });
    }
    // By extension.
    let mut per_source: Vec<Vec<String>> = Vec::new();
    for (_, path) in sources {
        let mut files = Vec::new();
        if path.is_dir() {
            for item in walkdir::WalkDir::new(path)
                .follow_links(false)
                .sort_by_file_name()
            {
                let item = item.map_err(|e| walk_err(path, e))?;
                if item.file_type().is_dir() {
                    continue;
                }
                let rel = item.path().strip_prefix(path).expect("under its root");
                files.push(rel.to_string_lossy().into_owned());
            }
        } else {
            files.push(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        per_source.push(files);
    }
    let ext = |f: &str| {
        Path::new(f)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let all: Vec<&String> = per_source.iter().flatten().collect();
    if let Some(other) = all
        .iter()
        .find(|f| !matches!(ext(f).as_str(), "yaml" | "yml" | "sh"))
    {
        return Ok(AppType::Unknown(format!(
            "{other} is neither YAML (.yaml, .yml) nor a shell script (.sh)"
        )));
    }
    let kube = all.iter().any(|f| ext(f) != "sh");
    let shell = all.iter().any(|f| ext(f) == "sh");
    Ok(match (kube, shell) {
        (true, false) => AppType::Known {
            kind: "kube",
            files: all.into_iter().cloned().collect(),
        },
        (false, true) => AppType::Known {
            kind: "shell",
            files: per_source.into_iter().next().unwrap_or_default(),
        },
        (true, true) => AppType::Unknown("its files mix YAML and shell scripts".into()),
        (false, false) => AppType::Unknown("it has no files".into()),
    })
}

/// Where one COPY source went.
struct Placement {
    /// The source's name as shown to the user.
    source: String,
    is_dir: bool,
    /// The key it was written at (for a directory, the key its contents
    /// went under).
    chosen: String,
    /// Where the other generation's rules would have put it.
    other: String,
    /// A file replaced a file of the same path with another name (sealer 0.8
    /// would have made the path a directory).
    replaced_file: bool,
}

/// A COPY destination as the layers below show it.
struct CopyTarget {
    /// Normalized, relative to the rootfs (empty: the root).
    key: String,
    /// Its last component.
    last: String,
    /// It is a directory: written with a trailing `/`, the root, a
    /// directory in the layers below, or one of [`ROOTFS_DIRS`].
    is_dir: bool,
    /// It is a file (or symlink) in the layers below.
    is_file: bool,
    /// Several sources, or a glob.
    several: bool,
}

/// A COPY source.
struct Source {
    base: String,
    is_dir: bool,
    /// The build context itself (`COPY . DEST`).
    is_context: bool,
}

impl CopyTarget {
    /// The key `src` lands at under `rules`: for a directory, the key its
    /// contents go under.
    fn place(&self, src: &Source, rules: CopySemantics) -> Result<String, InstructionError> {
        let inside = || join_key(&self.key, &src.base);
        Ok(match (rules, src.is_dir) {
            // buildah refuses a directory over a file; sealer 0.8 replaced
            // the file by a directory, which no one means.
            (_, true) if self.is_file => {
                return Err(InstructionError::DestinationIsFile(self.key.clone()))
            }
            // Both generations spread the context itself into DEST.
            (_, true) if src.is_context => self.key.clone(),
            // 0.8: SRC at DEST/SRC, or at DEST when DEST already ends in
            // SRC's name.
            (CopySemantics::Sealer08, true) if src.base == self.last => self.key.clone(),
            (CopySemantics::Sealer08, true) => inside(),
            (CopySemantics::Sealer08, false) if self.is_dir => inside(),
            (CopySemantics::Sealer08, false) if src.base == self.last || self.is_file => {
                self.key.clone()
            }
            (CopySemantics::Sealer08, false) => inside(),
            // 0.9+ (buildah): a directory's contents into DEST, a file into
            // a directory DEST or as DEST.
            (CopySemantics::Sealer09, true) => self.key.clone(),
            (CopySemantics::Sealer09, false) if self.is_dir || self.several => inside(),
            (CopySemantics::Sealer09, false) => self.key.clone(),
        })
    }
}

fn show_dir(key: &str) -> String {
    if key.is_empty() {
        "/".into()
    } else {
        format!("{key}/")
    }
}

fn show_file(key: &str) -> String {
    if key.is_empty() {
        "/".into()
    } else {
        key.to_string()
    }
}

fn normalize_dest(dest: &str) -> Result<(String, bool), InstructionError> {
    let trailing = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
    let mut parts: Vec<&str> = Vec::new();
    for c in dest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(InstructionError::DestinationLeaves(dest.to_string()));
                }
            }
            p => parts.push(p),
        }
    }
    Ok((parts.join("/"), trailing))
}

fn join_key(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn created_stamp(opts: &LayerOptions) -> Option<String> {
    layer::source_date_epoch().map(|_| rfc3339(opts.mtime))
}

/// Formats seconds since the epoch as RFC 3339 UTC.
fn rfc3339(secs: u64) -> String {
    seaport_shared::clock::rfc3339(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn destinations_stay_inside_the_rootfs() {
        assert_eq!(normalize_dest("etc/").unwrap(), ("etc".into(), true));
        assert_eq!(normalize_dest("/etc/x").unwrap(), ("etc/x".into(), false));
        assert_eq!(normalize_dest(".").unwrap(), ("".into(), true));
        assert_eq!(normalize_dest("a/../b").unwrap(), ("b".into(), false));
        assert!(normalize_dest("../x").is_err());
    }
}
