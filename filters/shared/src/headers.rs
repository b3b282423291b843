//! Header, cookie and query-string helpers over the `(name, value)` pairs the
//! proxy-wasm host hands out. Header names from Envoy are lower-case already;
//! lookups still ignore case so configured names may be written either way.
//! The pairs may be owned (`(String, String)`) or borrowed from the host's
//! buffer ([`crate::host_headers::Header`]).

/// The value of the first header named `name`.
pub fn find<'a, K: AsRef<str>, V: AsRef<str>>(
    headers: &'a [(K, V)],
    name: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_ref())
}

/// How many headers are named `name` (a token sent twice is an error).
pub fn count<K: AsRef<str>, V: AsRef<str>>(headers: &[(K, V)], name: &str) -> usize {
    headers
        .iter()
        .filter(|(key, _)| key.as_ref().eq_ignore_ascii_case(name))
        .count()
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`).
pub fn cookie<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.trim_matches('"'))
    })
}

/// Splits `:path` into the path and the query string (without `?`).
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    let without_fragment = path.split('#').next().unwrap_or(path);
    match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (without_fragment, None),
    }
}

/// The raw (still percent-encoded) value of query parameter `name`.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The query string with parameter `name` removed (for stripping a token).
pub fn remove_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(key, _)| key) != name)
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn find_ignores_case_and_takes_first() {
        let list = headers(&[("x-a", "1"), ("X-A", "2")]);
        assert_eq!(find(&list, "X-a"), Some("1"));
        assert_eq!(count(&list, "x-a"), 2);
        assert_eq!(find(&list, "x-b"), None);
    }

    #[test]
    fn cookies_are_split_and_unquoted() {
        assert_eq!(cookie("a=1; session=\"xyz\"; b=2", "session"), Some("xyz"));
        assert_eq!(cookie("a=1;b=2", "b"), Some("2"));
        assert_eq!(cookie("ab=1", "a"), None);
        assert_eq!(cookie("broken; a=1", "a"), Some("1"));
    }

    #[test]
    fn path_and_query() {
        assert_eq!(split_path("/a/b?x=1&y#frag"), ("/a/b", Some("x=1&y")));
        assert_eq!(split_path("/a"), ("/a", None));
        assert_eq!(query_param("x=1&token=abc&y", "token"), Some("abc"));
        assert_eq!(query_param("x=1&y", "y"), Some(""));
        assert_eq!(query_param("xtoken=1", "token"), None);
        assert_eq!(remove_query_param("x=1&token=abc&y", "token"), "x=1&y");
        assert_eq!(remove_query_param("token=abc", "token"), "");
    }
}
