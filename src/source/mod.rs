//! Sources of objects. Each one feeds [`crate::pipeline::SourceEvent`]s to the pipeline.

pub mod kube;
pub mod manifests;
