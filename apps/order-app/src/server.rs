//! Running a service: bind, serve, stop gracefully on SIGTERM/SIGINT.

use std::error::Error;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use axum::Router;
use tokio::net::TcpListener;

use crate::env::ServerConfig;
use crate::telemetry::AccessLog;
use crate::ServiceInfo;

/// Entry point of each binary: reads the common env, builds the service's
/// router with `build`, serves until SIGTERM/SIGINT. Configuration errors
/// exit with status 2, serving errors with 1. Diagnostics go to stderr so
/// stdout carries only access-log lines.
pub async fn run<F>(name: &'static str, build: F) -> ExitCode
where
    F: FnOnce(ServiceInfo) -> Result<Router, Box<dyn Error>>,
{
    let configured = ServerConfig::from_env()
        .map_err(Box::<dyn Error>::from)
        .and_then(|config| {
            let info = ServiceInfo::new(name, &config.version, AccessLog::Stdout)
                .map_err(|err| format!("invalid SERVICE_VERSION={:?}: {err}", config.version))?;
            Ok((config, build(info)?))
        });
    let (config, router) = match configured {
        Ok(ready) => ready,
        Err(err) => {
            note(&format!("{name}: configuration error: {err}"));
            return ExitCode::from(2);
        }
    };
    match serve(router, config.bind, name, &config.version).await {
        Ok(()) => {
            note(&format!("{name}: stopped"));
            ExitCode::SUCCESS
        }
        Err(err) => {
            note(&format!("{name}: {err}"));
            ExitCode::FAILURE
        }
    }
}

/// Serves `router` on `bind` until SIGTERM or SIGINT, then lets in-flight
/// requests finish.
pub async fn serve(router: Router, bind: SocketAddr, name: &str, version: &str) -> io::Result<()> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {bind}: {err}")))?;
    note(&format!(
        "{name} {version} listening on {}",
        listener.local_addr()?
    ));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Serves `router` on an ephemeral 127.0.0.1 port in the background (tests,
/// embedding) and returns the address.
pub async fn spawn(router: Router) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                note(&format!("cannot watch SIGTERM ({err}); stop with SIGINT"));
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

fn note(message: &str) {
    let _ = writeln!(io::stderr(), "{message}");
}
