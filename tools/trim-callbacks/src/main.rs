//! `trim-callbacks <in.wasm> <out.wasm>`: see the library.

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        anyhow::bail!("usage: trim-callbacks <in.wasm> <out.wasm>");
    };
    let module = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let removed: Vec<&str> = trim_callbacks::REMOVED_CALLBACKS
        .iter()
        .map(|(export, _)| *export)
        .collect();
    let (trimmed, dropped) = trim_callbacks::without_exports(&module, &removed)
        .with_context(|| format!("trimming {input}"))?;
    std::fs::write(output, trimmed).with_context(|| format!("writing {output}"))?;
    println!("{output}: removed {}", dropped.join(", "));
    Ok(())
}
