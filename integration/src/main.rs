//! `mesh`: run the manifests of `wasmplugin-manifests/` on real Envoy, locally.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use meshwasm_integration::{
    compose, demo, prometheus_server, resources, validate, Mesh, MeshOptions, ReadyInfo,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Runs Istio WasmPlugin manifests and the order app on local Envoy processes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the mesh in the foreground; Ctrl-C stops every process.
    Up(RunArgs),
    /// Start the mesh, run the demo scenario, print what happened, stop.
    Demo(RunArgs),
    /// Write the mesh as a Docker Compose project: one Envoy container per proxy with its
    /// translated config, one container per app, all on the host's network.
    Compose {
        #[command(flatten)]
        translate: TranslateArgs,
        /// Folder of the project (compose.yaml, Envoy configs, certificates, modules).
        #[arg(long, default_value = "mesh-compose")]
        out: PathBuf,
    },
    /// Print the manifests' Prometheus rule groups as a rules file (for promtool).
    Rules {
        #[arg(long, default_value_os_t = MeshOptions::default().manifests)]
        manifests: PathBuf,
    },
    /// Validate the manifests against Istio's CRD schemas and Kubernetes types.
    Validate {
        #[arg(long, default_value_os_t = MeshOptions::default().manifests)]
        manifests: PathBuf,
    },
}

/// What the translation of the manifests takes (`up`, `demo`, `compose`).
#[derive(Args)]
struct TranslateArgs {
    #[arg(long, default_value_os_t = MeshOptions::default().manifests)]
    manifests: PathBuf,
    /// Folder with the built `<module>.wasm` files: pushed as `meshwasm/<module>` images into the
    /// mesh's registry, and served for https:// URLs.
    #[arg(long, env = "MESHWASM_DIST")]
    dist: Option<PathBuf>,
    #[arg(long, default_value_t = 18080)]
    ingress_port: u16,
    /// Envoy worker threads per proxy.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// The Istio release to emulate (its istiod's names): 1.31 (default), 1.30;
    /// 1.29 and 1.28 are end of life.
    #[arg(long, env = "MESHWASM_ISTIO_VERSION")]
    istio_version: Option<String>,
}

impl TranslateArgs {
    fn options(self) -> MeshOptions {
        let defaults = MeshOptions::default();
        MeshOptions {
            manifests: self.manifests,
            dist: self.dist.unwrap_or(defaults.dist.clone()),
            ingress_port: self.ingress_port,
            concurrency: self.concurrency,
            istio_version: self.istio_version.unwrap_or(defaults.istio_version.clone()),
            ..defaults
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    translate: TranslateArgs,
    /// Envoy binary (default: the project's pinned Envoy, or MESHWASM_ENVOY).
    #[arg(long, env = "MESHWASM_ENVOY")]
    envoy: Option<PathBuf>,
    /// Folder with the order app's binaries.
    #[arg(long, env = "MESHWASM_APP_BIN")]
    app_bin: Option<PathBuf>,
    /// Also run Prometheus (Debian's `prometheus` on PATH, or MESHWASM_PROMETHEUS) scraping every
    /// Envoy, with the manifests' recording and alert rules; always on for `demo`.
    #[arg(long)]
    prometheus: bool,
    /// Written as JSON once every Envoy and app is ready.
    #[arg(long, env = "MESH_READY_FILE")]
    ready_file: Option<PathBuf>,
}

impl RunArgs {
    fn options(self) -> MeshOptions {
        let defaults = self.translate.options();
        MeshOptions {
            envoy: self.envoy.unwrap_or(defaults.envoy.clone()),
            app_bin_dir: self.app_bin.unwrap_or(defaults.app_bin_dir.clone()),
            prometheus: self.prometheus,
            ..defaults
        }
    }
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("mesh: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Validate { manifests } => {
            let documents = validate::validate_dir(&manifests).map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::anyhow!("{} problem(s):\n{}", lines.len(), lines.join("\n"))
            })?;
            println!(
                "{} documents in {} are valid",
                documents.len(),
                manifests.display()
            );
            Ok(())
        }
        Command::Up(args) => {
            let ready_file = args.ready_file.clone();
            let stop = stop_flag()?;
            let mut mesh = Mesh::start(args.options())?;
            print_endpoints(&mesh.ready);
            if let Some(path) = ready_file {
                std::fs::write(&path, serde_json::to_vec_pretty(&mesh.ready)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!(
                "\nmesh is up; Ctrl-C stops it (logs in {})",
                mesh.run_dir.display()
            );
            while !stop.load(Ordering::SeqCst) {
                if let Some(name) = mesh.exited_process() {
                    anyhow::bail!(
                        "{name} exited; stopping the mesh. Logs:{}",
                        mesh.dump_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            mesh.shutdown();
            println!("mesh stopped");
            Ok(())
        }
        Command::Compose { translate, out } => {
            let project = compose::write_project(&MeshOptions {
                run_dir: out,
                ..translate.options()
            })?;
            print_endpoints(&project.ready);
            println!("\nwrote {}; start it with", project.file.display());
            println!("  docker compose -f {} up", project.file.display());
            println!("images (set the variable to use another):");
            for (variable, default) in &project.image_variables {
                println!("  {variable:<18} {default}");
            }
            Ok(())
        }
        Command::Rules { manifests } => {
            print!(
                "{}",
                prometheus_server::rules_file(&resources::load_dir(&manifests)?)?
            );
            Ok(())
        }
        Command::Demo(args) => {
            let mesh = Mesh::start(MeshOptions {
                prometheus: true,
                ..args.options()
            })?;
            print_endpoints(&mesh.ready);
            demo::run(&mesh)
        }
    }
}

/// Set on SIGINT or SIGTERM; the main loop then stops every process.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&stop);
    ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

fn print_endpoints(ready: &ReadyInfo) {
    println!("{:<24} {:<28} SIDECAR ADMIN", "WORKLOAD", "APP");
    println!(
        "{:<24} {:<28} {}",
        "istio-ingressgateway", ready.ingress, ready.ingress_admin
    );
    for (name, urls) in &ready.workloads {
        println!("{:<24} {:<28} {}", name, urls.app, urls.sidecar_admin);
    }
    if let Some(url) = &ready.prometheus {
        println!("{:<24} {url}", "prometheus");
    }
}
