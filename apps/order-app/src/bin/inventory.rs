//! The `inventory` service (see `order_app::inventory`).

use std::process::ExitCode;

use order_app::inventory::{self, InventoryConfig};
use order_app::server;

#[tokio::main]
async fn main() -> ExitCode {
    server::run("inventory", |info| {
        Ok(inventory::router(info, InventoryConfig::from_env()?))
    })
    .await
}
