//! Cluster images: Kubefile parsing, image build, the local OCI store, layers.
//!
//! # Layout
//!
//! - [`reference`]: image names (`kubernetes:v1.19.8`) and their normalization.
//! - [`oci`]: OCI manifest, config and index documents; media types and
//!   annotation keys of a cluster image.
//! - [`store`]: the local OCI image layout under `<root>/images`.
//! - [`kubefile`]: the Kubefile parser (sealer's instructions, line numbers).
//! - [`layer`]: deterministic zstd tar layers and RUN's before/after diff.
//! - [`media`]: media types of manifests, indexes and layers, and the one
//!   reader of layer blobs (tar, gzip, zstd; OCI and Docker media types).
//! - [`build`]: the Kubefile build pipeline and the [`build::ImageCache`] hook.
//! - [`inspect`]: what `seaport inspect` shows.
//! - [`contents`]: files of a stored image read from its layers (what the
//!   coordinator hands to hosts comes from its own copy).
//! - [`archive`]: `save`/`load` of OCI archives, verified before loading.
//! - [`registry`]: OCI distribution registries: client, auth, credentials,
//!   push and pull, distribution's storage layout.
//! - [`imagecache`]: build-time caching of container images into `registry/`.
//! - [`render`]: rendering `*.tmpl` and `statics/` with the cluster env.
//! - [`kubeadm`]: merging kubeadm documents and the fields an install computes.
//! - [`signing`]: signing keys, cosign's key-based signature layout,
//!   verification against trusted keys, signatures in the store.

pub mod archive;
pub mod build;
pub mod contents;
pub mod imagecache;
pub mod inspect;
pub mod kubeadm;
pub mod kubefile;
pub mod layer;
pub mod media;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod render;
pub mod signing;
pub mod store;
