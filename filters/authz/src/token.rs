//! Finding the token in a request. RFC 6750 §2 forbids sending it in more
//! than one place; a request that does is refused rather than guessed at.

use meshwasm_shared::headers;
use meshwasm_shared::host_headers::Header;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A header whose value starts with `prefix` (compared case-insensitively).
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    Missing,
    Found {
        token: String,
        location: Location,
    },
    /// Sent in two places (or twice in one): `invalid_request`.
    Ambiguous,
}

/// Looks at every configured location; `path` is the raw `:path`.
pub fn extract(locations: &[Location], request_headers: &[Header<'_>], path: &str) -> Extracted {
    let mut found: Option<(String, Location)> = None;
    let mut seen = 0usize;
    let mut take = |token: &str, location: &Location| {
        seen += 1;
        if found.is_none() {
            found = Some((token.to_owned(), location.clone()));
        }
    };
    let (_, query) = headers::split_path(path);
    for location in locations {
        match location {
            Location::Header { name, prefix } => {
                for (key, value) in request_headers {
                    if !key.eq_ignore_ascii_case(name) {
                        continue;
                    }
                    // Repeated headers may arrive joined with commas; a JWT
                    // never contains one, so each part is a token of its own.
                    for part in value.split(',').map(str::trim_start) {
                        if let Some((head, rest)) = part.split_at_checked(prefix.len()) {
                            if head.eq_ignore_ascii_case(prefix) {
                                take(rest.trim(), location);
                            }
                        }
                    }
                }
            }
            Location::Param(name) => {
                for pair in query.unwrap_or("").split('&') {
                    if let Some((key, value)) = pair.split_once('=') {
                        if key == name {
                            take(value, location);
                        }
                    }
                }
            }
            Location::Cookie(name) => {
                for (key, value) in request_headers {
                    if !key.eq_ignore_ascii_case("cookie") {
                        continue;
                    }
                    for pair in value.split(';') {
                        if let Some((key, value)) = pair.trim().split_once('=') {
                            if key == name {
                                take(value.trim_matches('"'), location);
                            }
                        }
                    }
                }
            }
        }
    }
    match found {
        None => Extracted::Missing,
        Some(_) if seen > 1 => Extracted::Ambiguous,
        Some((token, location)) => Extracted::Found { token, location },
    }
}

/// The `cookie` header value without cookie `name`.
pub fn remove_cookie(cookie_header: &str, name: &str) -> String {
    cookie_header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(key, _)| key) != name)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Header<'a>> {
        pairs
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
            .collect()
    }

    fn bearer() -> Location {
        Location::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    fn all() -> Vec<Location> {
        vec![
            bearer(),
            Location::Header {
                name: "x-token".into(),
                prefix: String::new(),
            },
            Location::Param("access_token".into()),
            Location::Cookie("session".into()),
        ]
    }

    fn found(token: &str, location: Location) -> Extracted {
        Extracted::Found {
            token: token.into(),
            location,
        }
    }

    #[test]
    fn each_location_is_read() {
        assert_eq!(
            extract(&all(), &h(&[("authorization", "bearer a.b.c")]), "/"),
            found("a.b.c", bearer())
        );
        assert_eq!(
            extract(&all(), &h(&[("x-token", "t")]), "/"),
            found("t", all()[1].clone())
        );
        assert_eq!(
            extract(&all(), &h(&[]), "/x?y=1&access_token=q.r.s"),
            found("q.r.s", Location::Param("access_token".into()))
        );
        assert_eq!(
            extract(&all(), &h(&[("cookie", "a=1; session=c.d.e")]), "/"),
            found("c.d.e", Location::Cookie("session".into()))
        );
    }

    #[test]
    fn other_schemes_and_absence_are_missing() {
        assert_eq!(
            extract(&all(), &h(&[("authorization", "Basic YTpi")]), "/"),
            Extracted::Missing
        );
        assert_eq!(
            extract(&all(), &h(&[("cookie", "other=1")]), "/?x=1"),
            Extracted::Missing
        );
    }

    #[test]
    fn two_places_are_ambiguous() {
        let headers = h(&[("authorization", "Bearer a"), ("cookie", "session=b")]);
        assert_eq!(extract(&all(), &headers, "/"), Extracted::Ambiguous);
        let twice = h(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert_eq!(extract(&all(), &twice, "/"), Extracted::Ambiguous);
        let joined = h(&[("authorization", "Bearer a, Bearer b")]);
        assert_eq!(extract(&all(), &joined, "/"), Extracted::Ambiguous);
        assert_eq!(
            extract(
                &all(),
                &h(&[("authorization", "Bearer a")]),
                "/?access_token=a"
            ),
            Extracted::Ambiguous
        );
    }

    #[test]
    fn cookie_is_removed() {
        assert_eq!(remove_cookie("a=1; session=x; b=2", "session"), "a=1; b=2");
        assert_eq!(remove_cookie("session=x", "session"), "");
    }
}
