//! Durations in configs are written like Istio's: `"30s"`, `"500ms"`, `"1.5s"`,
//! `"2m"`, `"1h"`. Use with `#[serde(with = "meshwasm_shared::duration")]`.

use serde::{de, Deserialize, Deserializer, Serializer};
use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration `{text}` does not start with a number"))?;
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "duration `{text}` has unknown unit `{other}` (use ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("duration `{text}` is out of range"))
}

pub fn format(duration: &Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(de::Error::custom)
}

pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_style_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn refuses_bad_durations() {
        assert!(parse("30").unwrap_err().contains("needs a unit"));
        assert!(parse("s").is_err());
        assert!(parse("3d").unwrap_err().contains("unknown unit"));
        assert!(parse("-1s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["30s", "500ms", "1500ms"] {
            assert_eq!(format(&parse(text).unwrap()), text);
        }
    }
}
