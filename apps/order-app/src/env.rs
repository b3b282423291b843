//! Environment variables shared by all three services.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// A variable that is set but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    var: &'static str,
    value: String,
    reason: String,
}

impl EnvError {
    pub fn new(var: &'static str, value: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            var,
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}={:?}: {}", self.var, self.value, self.reason)
    }
}

impl std::error::Error for EnvError {}

/// The value of `var`; unset and empty both mean "not given".
pub fn optional(var: &'static str) -> Result<Option<String>, EnvError> {
    match std::env::var(var) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value.trim().to_owned())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => {
            Err(EnvError::new(var, raw.to_string_lossy(), "not valid UTF-8"))
        }
    }
}

/// The value of `var`, or `default` when it is not given.
pub fn string_or(var: &'static str, default: &str) -> Result<String, EnvError> {
    Ok(optional(var)?.unwrap_or_else(|| default.to_owned()))
}

/// `var` parsed as `T`, or `default` when it is not given.
pub fn parse_or<T>(var: &'static str, default: T) -> Result<T, EnvError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match optional(var)? {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|err: T::Err| EnvError::new(var, raw, err)),
    }
}

/// Where a service listens and which version it reports.
///
/// `PORT` (default 8080), `BIND_ADDR` (default 0.0.0.0), `SERVICE_VERSION`
/// (default `v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub version: String,
}

impl ServerConfig {
    pub fn from_env() -> Result<Self, EnvError> {
        let port: u16 = parse_or("PORT", 8080)?;
        let addr: IpAddr = parse_or("BIND_ADDR", IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
        let version = string_or("SERVICE_VERSION", "v1")?;
        Ok(Self {
            bind: SocketAddr::new(addr, port),
            version,
        })
    }
}
