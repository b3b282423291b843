//! `oci-image`: wasm modules as OCI images istio-agent accepts (`make image`).

use anyhow::{Context, Result};
use clap::Parser;
use oci_client::Reference;
use oci_image::{Image, Layout};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    about = "Builds wasm modules as OCI images for Istio WasmPlugins, writes an OCI image layout, pushes"
)]
struct Cli {
    /// OCI image layout to write every image into; each module as `<name>`
    /// (plugin-tar) and `<name>-wasm-layer`.
    #[arg(long)]
    layout_dir: Option<PathBuf>,
    /// The layout pushed: plugin-tar (`plugin.wasm` in a gzip tar layer, like
    /// `FROM scratch` + `COPY`) or wasm-layer (two layers, the module raw).
    #[arg(long, default_value = "plugin-tar")]
    push_layout: String,
    /// `path/to/name.wasm`, or `path/to/name.wasm=host/repo:tag` to push it
    /// (credentials from the Docker config file).
    #[arg(required = true)]
    modules: Vec<String>,
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("oci-image: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let push_layout = Layout::parse(&cli.push_layout)?;
    let mut layout_images: Vec<(String, Image)> = Vec::new();
    let mut pushes = Vec::new();
    for argument in &cli.modules {
        let (path, target) = match argument.split_once('=') {
            Some((path, image)) => (PathBuf::from(path), Some(image)),
            None => (PathBuf::from(argument), None),
        };
        let module =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .with_context(|| format!("{} has no file name", path.display()))?;
        for layout in Layout::ALL {
            let image =
                oci_image::build(&module, layout).with_context(|| path.display().to_string())?;
            let ref_name = match layout {
                Layout::PluginTar => name.to_owned(),
                Layout::WasmLayer => format!("{name}-wasm-layer"),
            };
            println!(
                "{:<28} {:<11} {}",
                path.display(),
                layout.name(),
                image.digest()
            );
            if let (Some(target), true) = (target, layout == push_layout) {
                pushes.push((target.to_owned(), image.clone()));
            }
            layout_images.push((ref_name, image));
        }
    }
    if let Some(dir) = &cli.layout_dir {
        let images: Vec<(String, &Image)> = layout_images
            .iter()
            .map(|(name, image)| (name.clone(), image))
            .collect();
        oci_image::write_layout(dir, &images)?;
        println!(
            "OCI image layout: {} (skopeo copy oci:{}:<name> docker://<image>)",
            dir.display(),
            dir.display()
        );
    }
    let runtime = oci_image::runtime()?;
    for (target, image) in pushes {
        let reference: Reference = target
            .parse()
            .with_context(|| format!("bad image reference {target}"))?;
        let client = oci_image::client_for(reference.resolve_registry());
        let auth = oci_image::docker_config_auth(reference.resolve_registry())?;
        let digest = runtime.block_on(oci_image::push(&client, &reference, &auth, &image))?;
        println!(
            "pushed {target}\n  WasmPlugin: url: oci://{target}\n              sha256: {}",
            digest.trim_start_matches("sha256:")
        );
    }
    Ok(())
}
