//! The `payment` service (see `order_app::payment`).

use std::process::ExitCode;

use order_app::payment::{self, Faults};
use order_app::server;

#[tokio::main]
async fn main() -> ExitCode {
    server::run("payment", |info| {
        Ok(payment::router(info, Faults::from_env()?))
    })
    .await
}
