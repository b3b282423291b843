//! A mix of requests (`--requests-file`): request `n` is line `n mod L` of
//! the file, each line a kind (the name its answers are counted under), a
//! method, a path and headers, separated by tabs. Paths and header values
//! may hold placeholders filled per request, so a mix can send a new tenant,
//! key or path every time:
//!
//! - `{n}`: the request number (`--first` + its index in this run);
//! - `{n%M}`, `{n/D%M}`: `n mod M`, `(n / D) mod M` (cycles and phases);
//! - `{token}`: token `n mod count` of `--tokens-file`;
//! - `\xNN`: the byte NN (header values that are not UTF-8).
//!
//! Empty lines and lines starting with `#` are skipped.

use std::fmt::Write as _;

/// One piece of a path or header value.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    Bytes(Vec<u8>),
    /// `(n / divisor) % modulus` (modulus 0: no modulo).
    Number {
        divisor: u64,
        modulus: u64,
    },
    Token,
}

#[derive(Debug, PartialEq, Eq)]
struct Template(Vec<Part>);

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("\\x") {
                let hex = after
                    .get(..2)
                    .ok_or_else(|| format!("bad \\x escape in {text:?}"))?;
                literal.push(
                    u8::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad \\x escape in {text:?}"))?,
                );
                rest = &after[2..];
            } else if c == '{' {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed {{ in {text:?}"))?;
                let placeholder = Self::placeholder(&rest[1..end])
                    .ok_or_else(|| format!("unknown placeholder {} in {text:?}", &rest[..=end]))?;
                if !literal.is_empty() {
                    parts.push(Part::Bytes(std::mem::take(&mut literal)));
                }
                parts.push(placeholder);
                rest = &rest[end + 1..];
            } else {
                let mut utf8 = [0u8; 4];
                literal.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Bytes(literal));
        }
        Ok(Self(parts))
    }

    /// `n`, `n%M`, `n/D%M`, `token`.
    fn placeholder(inner: &str) -> Option<Part> {
        if inner == "token" {
            return Some(Part::Token);
        }
        let expression = inner.strip_prefix('n')?;
        let (division, modulus) = match expression.split_once('%') {
            Some((division, modulus)) => (division, modulus.parse().ok().filter(|m| *m > 0)?),
            None => (expression, 0),
        };
        let divisor = match division.strip_prefix('/') {
            Some(divisor) => divisor.parse().ok().filter(|d| *d > 0)?,
            None if division.is_empty() => 1,
            None => return None,
        };
        Some(Part::Number { divisor, modulus })
    }

    fn uses_token(&self) -> bool {
        self.0.contains(&Part::Token)
    }

    fn write(&self, n: u64, tokens: &[String], out: &mut Vec<u8>) {
        for part in &self.0 {
            match part {
                Part::Bytes(bytes) => out.extend_from_slice(bytes),
                Part::Number { divisor, modulus } => {
                    let value = n / divisor;
                    let value = if *modulus == 0 {
                        value
                    } else {
                        value % modulus
                    };
                    let mut text = String::new();
                    let _ = write!(text, "{value}");
                    out.extend_from_slice(text.as_bytes());
                }
                Part::Token => {
                    if !tokens.is_empty() {
                        out.extend_from_slice(
                            tokens[(n % tokens.len() as u64) as usize].as_bytes(),
                        );
                    }
                }
            }
        }
    }
}

struct Line {
    kind: usize,
    method: String,
    path: Template,
    headers: Vec<(String, Template)>,
}

pub struct RequestMix {
    /// Kind names in order of first appearance.
    pub kinds: Vec<String>,
    lines: Vec<Line>,
}

impl RequestMix {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut kinds: Vec<String> = Vec::new();
        let mut lines = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |message: String| format!("line {}: {message}", number + 1);
            let mut fields = line.split('\t');
            let (Some(kind), Some(method), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(at("expected kind, method and path separated by tabs".into()));
            };
            let kind = match kinds.iter().position(|known| known == kind) {
                Some(index) => index,
                None => {
                    kinds.push(kind.to_owned());
                    kinds.len() - 1
                }
            };
            let headers = fields
                .map(|field| {
                    let (name, value) = field
                        .split_once(':')
                        .ok_or_else(|| at(format!("expected `Name: value`, got {field:?}")))?;
                    Ok((
                        name.trim().to_owned(),
                        Template::parse(value.trim()).map_err(&at)?,
                    ))
                })
                .collect::<Result<_, String>>()?;
            lines.push(Line {
                kind,
                method: method.to_owned(),
                path: Template::parse(path).map_err(at)?,
                headers,
            });
        }
        if lines.is_empty() {
            return Err("no requests".into());
        }
        Ok(Self { kinds, lines })
    }

    pub fn uses_tokens(&self) -> bool {
        self.lines.iter().any(|line| {
            line.path.uses_token() || line.headers.iter().any(|(_, value)| value.uses_token())
        })
    }

    /// Request `n` in `out` (cleared first); returns its kind's index.
    pub fn write(&self, n: u64, tokens: &[String], out: &mut Vec<u8>) -> usize {
        let line = &self.lines[(n % self.lines.len() as u64) as usize];
        out.clear();
        out.extend_from_slice(line.method.as_bytes());
        out.push(b' ');
        line.path.write(n, tokens, out);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &line.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            value.write(n, tokens, out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        line.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mix: &RequestMix, n: u64, tokens: &[String]) -> (String, String) {
        let mut out = Vec::new();
        let kind = mix.write(n, tokens, &mut out);
        (
            mix.kinds[kind].clone(),
            String::from_utf8_lossy(&out).into_owned(),
        )
    }

    #[test]
    fn lines_cycle_with_placeholders_filled() {
        let mix = RequestMix::parse(
            "# a comment\nvalid\tGET\t/orders/{n}\tHost: a\tx-tenant: t{n%3}\tAuthorization: Bearer {token}\n\nfail\tPOST\t/charge\tx-fail: {n/10%2}\tContent-Length: 0\n",
        )
        .unwrap();
        assert_eq!(mix.kinds, ["valid", "fail"]);
        assert!(mix.uses_tokens());
        let tokens = ["A".to_owned(), "B".to_owned(), "C".to_owned()];
        assert_eq!(
            request(&mix, 4, &tokens),
            (
                "valid".into(),
                "GET /orders/4 HTTP/1.1\r\nHost: a\r\nx-tenant: t1\r\nAuthorization: Bearer B\r\n\r\n".into()
            )
        );
        assert_eq!(
            request(&mix, 13, &tokens).1,
            "POST /charge HTTP/1.1\r\nx-fail: 1\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            request(&mix, 21, &tokens).1.lines().nth(1),
            Some("x-fail: 0")
        );
    }

    #[test]
    fn byte_escapes_give_bytes_that_are_not_utf8() {
        let mix = RequestMix::parse("hostile\tGET\t/\tx-user: a\\xff\\x00{n}").unwrap();
        let mut out = Vec::new();
        mix.write(7, &[], &mut out);
        assert!(out.windows(4).any(|w| w == b"a\xff\x007"));
        assert!(!mix.uses_tokens());
    }

    #[test]
    fn refuses_malformed_lines() {
        for (text, message) in [
            ("kind\tGET", "expected kind, method and path"),
            ("k\tGET\t/{x}", "unknown placeholder {x}"),
            ("k\tGET\t/{n%0}", "unknown placeholder"),
            ("k\tGET\t/{n", "unclosed"),
            ("k\tGET\t/\tno-colon", "expected `Name: value`"),
            ("k\tGET\t/\\xZZ", "bad \\x escape"),
            ("# only a comment", "no requests"),
        ] {
            let err = RequestMix::parse(text).err().unwrap();
            assert!(err.contains(message), "{text:?}: {err}");
        }
    }
}
