//! The local mesh: runs the `wasmplugin-manifests/` of a cluster on real
//! Envoy processes, translating each object the way istiod and istio-agent do.
//!
//! End-to-end tests use [`Mesh`]: `Mesh::start(MeshOptions::default())` brings
//! up the order app behind sidecars plus the ingress gateway, waits until all
//! answer, and tears everything down on drop (printing every log when the test
//! panicked). `MeshOptions::extra_manifests` adds or replaces documents, e.g. a
//! WasmPlugin with a test config, or a `ServiceEntry` with `STATIC` endpoints
//! on 127.0.0.1 that becomes the cluster `outbound|<port>||<host>` (how an
//! authz filter reaches a JWKS server started by the test).

pub mod bootstrap;
pub mod ca;
pub mod compose;
pub mod demo;
pub mod docker;
pub mod http;
pub mod istio;
pub mod jwks_server;
pub mod mesh;
pub mod oci;
pub mod plugins;
pub mod process;
pub mod prometheus;
pub mod prometheus_server;
pub mod registry;
pub mod resources;
pub mod security;
pub mod skip;
pub mod topology;
pub mod traffic;

pub use mesh::{Mesh, MeshOptions, MeshPlan, PluginPush, ReadyInfo, WorkloadUrls};

pub mod validate;
