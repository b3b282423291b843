//! `mint-token --sub alice --claims '{"groups":["admin"]}' [--exp-in 1h] [--key path]`
//! prints a DEMO token signed with the demo key (or `--key`).

use clap::Parser;
use mint_token::{Mint, DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID};

#[derive(Parser)]
#[command(about = "Mint a DEMO JWT (signed with the committed demo key unless --key is given)")]
struct Args {
    /// `sub` claim.
    #[arg(long, default_value = "alice")]
    sub: String,
    /// Extra claims as a JSON object; `null` removes a standard claim.
    #[arg(long, default_value = "{}")]
    claims: String,
    /// Lifetime (`30s`, `10m`, `1h`).
    #[arg(long, default_value = "1h")]
    exp_in: String,
    /// PEM private key (or HMAC secret file with --alg HS256).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    #[arg(long, default_value = DEMO_KID)]
    kid: String,
    #[arg(long, default_value = DEMO_ISSUER)]
    iss: String,
    #[arg(long, default_value = DEMO_AUDIENCE)]
    aud: String,
    /// JWS algorithm (RS256, ES256, EdDSA, HS256...).
    #[arg(long, default_value = "RS256")]
    alg: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let claims: serde_json::Value = serde_json::from_str(&args.claims)?;
    let mut mint = Mint::demo(&args.sub)?.claims(claims)?;
    if let Some(path) = &args.key {
        mint.key_pem = std::fs::read(path)?;
    }
    mint.expires_in = meshwasm_shared::duration::parse(&args.exp_in).map_err(anyhow::Error::msg)?;
    mint.kid = Some(args.kid).filter(|kid| !kid.is_empty());
    mint.issuer = args.iss;
    mint.audience = args.aud;
    mint.algorithm = args
        .alg
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown algorithm `{}`", args.alg))?;
    println!("{}", mint.sign()?);
    Ok(())
}
