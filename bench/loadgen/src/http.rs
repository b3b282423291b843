//! The HTTP/1.1 bytes: requests out, responses in (what Envoy sends back:
//! a status line, headers, and a Content-Length or chunked body).

/// The request's fixed part, with an optional per-request header appended.
pub struct RequestTemplate {
    head: Vec<u8>,
}

impl RequestTemplate {
    /// `headers` are `(name, value)` pairs sent in order; `Host` must be one
    /// of them when the server needs it.
    pub fn new(method: &str, path: &str, headers: &[(String, String)]) -> Self {
        let mut head = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
        for (name, value) in headers {
            head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        RequestTemplate { head }
    }

    /// The full request in `out` (cleared first), with `Authorization:
    /// Bearer <token>` when a token is given.
    pub fn write(&self, token: Option<&str>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.head);
        if let Some(token) = token {
            out.extend_from_slice(b"Authorization: Bearer ");
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// One complete response at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes of the buffer the response took (head and body).
    pub length: usize,
    /// The server closes the connection after it (`Connection: close`, or
    /// no body length: the body runs to the end of the connection, which a
    /// keep-alive benchmark treats as an error).
    pub close: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest response head accepted: anything longer is not Envoy answering.
const MAX_HEAD: usize = 64 * 1024;

fn error<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(message.into()))
}

/// The first response in `buf`: `Ok(None)` while it is incomplete.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, ParseError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            error("response head too long")
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ParseError("response head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return error(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status = match parts.next().map(str::parse::<u16>) {
        Some(Ok(code)) if (100..1000).contains(&code) => code,
        _ => return error(format!("bad status code in {status_line:?}")),
    };
    let mut close = version == "HTTP/1.0";
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return error(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| ParseError(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .to_ascii_lowercase()
                .split(',')
                .any(|coding| coding.trim() == "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.split(',').any(|token| token.trim() == "close") {
                close = true;
            } else if value.split(',').any(|token| token.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    let body_start = head_end + 4;
    // 1xx, 204 and 304 have no body whatever the headers say.
    let body_length = if status < 200 || status == 204 || status == 304 {
        Some(0)
    } else if chunked {
        match chunked_length(&buf[body_start..])? {
            Some(length) => Some(length),
            None => return Ok(None),
        }
    } else {
        content_length
    };
    let Some(body_length) = body_length else {
        return error("response without Content-Length or chunked body");
    };
    if buf.len() < body_start + body_length {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        length: body_start + body_length,
        close,
    }))
}

/// Length of a complete chunked body (up to and including the last CRLF),
/// `None` while incomplete. Trailers are not expected and not accepted.
fn chunked_length(body: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut at = 0;
    loop {
        let Some(line_end) = find(&body[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&body[at..at + line_end])
            .map_err(|_| ParseError("bad chunk size".into()))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ParseError(format!("bad chunk size {line:?}")))?;
        at += line_end + 2;
        if size == 0 {
            return Ok(if body.len() >= at + 2 {
                if &body[at..at + 2] == b"\r\n" {
                    Some(at + 2)
                } else {
                    return error("chunk trailers are not supported");
                }
            } else {
                None
            });
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_request_with_and_without_token() {
        let template = RequestTemplate::new(
            "POST",
            "/charge",
            &[
                ("Host".into(), "payment:8080".into()),
                ("Content-Length".into(), "0".into()),
            ],
        );
        let mut out = Vec::new();
        template.write(Some("abc"), &mut out);
        assert_eq!(
            out,
            b"POST /charge HTTP/1.1\r\nHost: payment:8080\r\nContent-Length: 0\r\nAuthorization: Bearer abc\r\n\r\n"
        );
        template.write(None, &mut out);
        assert_eq!(
            out,
            b"POST /charge HTTP/1.1\r\nHost: payment:8080\r\nContent-Length: 0\r\n\r\n"
        );
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\ndate: x\r\nserver: envoy\r\n\r\nok";

    #[test]
    fn parses_envoy_direct_response() {
        assert_eq!(
            parse_response(OK),
            Ok(Some(Response {
                status: 200,
                length: OK.len(),
                close: false
            }))
        );
    }

    #[test]
    fn incomplete_until_the_last_body_byte() {
        for end in 0..OK.len() {
            assert_eq!(
                parse_response(&OK[..end]),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn leaves_the_next_response_in_the_buffer() {
        let two = [OK, OK].concat();
        assert_eq!(parse_response(&two).unwrap().unwrap().length, OK.len());
    }

    #[test]
    fn parses_problem_json_rejection_with_close() {
        let body =
            br#"{"type":"about:blank","title":"Unauthorized","status":401,"kind":"missing_token"}"#;
        let response = [
            format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
        ]
        .concat();
        assert_eq!(
            parse_response(&response),
            Ok(Some(Response {
                status: 401,
                length: response.len(),
                close: true
            }))
        );
    }

    #[test]
    fn parses_chunked_body() {
        let response = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(response),
            Ok(Some(Response {
                status: 503,
                length: response.len(),
                close: false
            }))
        );
        assert_eq!(parse_response(&response[..response.len() - 1]), Ok(None));
    }

    #[test]
    fn no_body_for_204_and_error_without_length() {
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap()
                .unwrap()
                .length,
            27
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nrest").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"hello there\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_response(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }
}
