//! Cluster images: Kubefile parsing, image build, the local OCI store, layers.
//!
//! # Layout
//!
//! - [`reference`]: image names (`kubernetes:v1.19.8`) and their normalization.
//! - [`oci`]: OCI manifest, config and index documents; media types and
//!   annotation keys of a cluster image.
//! - [`store`]: the local OCI image layout under `<root>/images`.
//! - [`build`]: the Kubefile build pipeline and the [`build::ImageCache`] hook.
//! - [`registry`]: OCI distribution registries: client, auth, credentials,
//!   push and pull, distribution's storage layout.

pub mod oci;
pub mod reference;
pub mod store;
pub mod build;
pub mod kubefile;
pub mod registry;
pub mod layer;
