//! Cluster images: Kubefile parsing, image build, the local OCI store, layers.
