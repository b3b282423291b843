//! Reading Envoy's `/stats/prometheus` text: samples by name and labels.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value, empty when the sample has no such label.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample line of the text (`name{a="1",b="2"} 3`); comments skipped.
/// Label values are Envoy's, which never contain `",` inside a value.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The samples of the series `name` (e.g. `meshwasm_request_bytes_bucket`).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    parse(text)
        .into_iter()
        .filter(|sample| sample.name == name)
        .collect()
}

/// The sum of `name`'s samples whose labels include every pair of `want`.
pub fn total(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|sample| want.iter().all(|(key, value)| sample.label(key) == *value))
        .map(|sample| sample.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
        })
        .collect();
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE meshwasm_requests_total counter
meshwasm_requests_total{reporter="inbound",route="/orders/{id}",method="GET"} 12
meshwasm_requests_total{reporter="inbound",route="/orders",method="POST"} 3
plain_gauge 7
"#;

    #[test]
    fn samples_and_labels() {
        let all = parse(TEXT);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].label("route"), "/orders/{id}");
        assert_eq!(all[0].label("missing"), "");
        assert_eq!(all[2].name, "plain_gauge");
        assert!(all[2].labels.is_empty());
    }

    #[test]
    fn totals_filter_by_labels() {
        assert_eq!(total(TEXT, "meshwasm_requests_total", &[]), 15.0);
        assert_eq!(
            total(TEXT, "meshwasm_requests_total", &[("method", "POST")]),
            3.0
        );
        assert_eq!(
            total(TEXT, "meshwasm_requests_total", &[("method", "PUT")]),
            0.0
        );
    }
}
