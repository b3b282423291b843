//! A small blocking HTTP client for the demo and the end-to-end tests: every
//! status is a response (never an error), with headers and body kept.

use anyhow::{Context, Result};
use serde_json::Value;
use std::time::Duration;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.body))
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build(),
    )
}

fn collect(mut response: ureq::http::Response<ureq::Body>) -> Result<Response> {
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok(Response {
        status,
        headers,
        body,
    })
}

pub fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    collect(request.call().with_context(|| format!("GET {url}"))?)
}

pub fn post_json(
    agent: &ureq::Agent,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let mut request = agent.post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    collect(
        request
            .send(body.to_string())
            .with_context(|| format!("POST {url}"))?,
    )
}

/// Any method, with a raw body.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body.to_owned()).context("bad request")?;
    collect(
        agent
            .run(request)
            .with_context(|| format!("{method} {url}"))?,
    )
}

/// Sends one HTTP/1.1 request written byte for byte to `base_url`
/// (`http://host:port`): header values need not be UTF-8 and the path goes
/// out exactly as given (`//x`, `/./x`, `%2F`), which no client library
/// allows. `host` defaults to the address; a `host` header replaces it. The body is kept as sent (a chunked one is not decoded).
pub fn raw_request(
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &str,
) -> Result<Response> {
    use std::io::{Read, Write};
    let address = base_url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {base_url}"))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n").into_bytes();
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.extend_from_slice(format!("host: {address}\r\n").as_bytes());
    }
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(format!("content-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let mut stream =
        std::net::TcpStream::connect(address).with_context(|| format!("connect {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(&request)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {answer:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}
