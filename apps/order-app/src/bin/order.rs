//! The `order` service (see `order_app::order`).

use std::process::ExitCode;

use order_app::order::{self, OrderConfig};
use order_app::server;

#[tokio::main]
async fn main() -> ExitCode {
    server::run("order", |info| {
        Ok(order::router(info, OrderConfig::from_env()?)?)
    })
    .await
}
