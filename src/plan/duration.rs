//! Human-friendly durations in plan files: `500ms`, `30s`, `2m`, `1h30m`.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write it (`500ms`, `30s`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

/// The longest duration a plan may give: a year is longer than any boot
/// should take, and far from where adding it to a clock could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `text` as a duration, with an error message that says what is expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|err| {
        format!("invalid duration `{text}` ({err}): write a number and a unit, such as 500ms, 30s, 2m or 1h")
    })?;
    if duration > MAX_DURATION {
        return Err(format!(
            "duration `{text}` is longer than the longest bootplan accepts (366 days)"
        ));
    }
    Ok(duration)
}

/// Parses `MIN..MAX` into two durations with MIN ≤ MAX.
pub fn parse_backoff(range: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = range
        .split_once("..")
        .ok_or_else(|| format!("invalid backoff `{range}`"))?;
    let (min, max) = (parse_duration(min)?, parse_duration(max)?);
    if min > max {
        return Err(format!(
            "backoff minimum {} is above its maximum {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok((min, max))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s or 2m")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "a bare number `{v}` is ambiguous as a duration: add a unit, such as {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "a bare number `{v}` is ambiguous as a duration: add a unit, such as 1500ms"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with a unit, such as 500ms, 30s, 2m or 1h30m.",
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$"
        })
    }
}

/// A backoff range `MIN..MAX` (e.g. `1s..30s`), checked when the plan is
/// parsed: delays are drawn with full jitter under a cap that doubles from
/// MIN up to MAX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_backoff(&text)
            .map(|(min, max)| Backoff { min, max })
            .map_err(|err| serde::de::Error::custom(format!("{err}: write MIN..MAX, e.g. 1s..30s")))
    }
}

impl Serialize for Backoff {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!(
            "{}..{}",
            humantime::format_duration(self.min),
            humantime::format_duration(self.max)
        ))
    }
}

impl JsonSchema for Backoff {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Backoff".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A backoff range MIN..MAX, such as 1s..30s.",
            "pattern": "^\\s*[0-9]+\\s*[a-zA-Zµ]+\\s*\\.\\.\\s*[0-9]+\\s*[a-zA-Zµ]+\\s*$"
        })
    }
}

/// Octal permission bits written as a string (`"0640"`), checked when the
/// plan is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match u32::from_str_radix(text.trim().trim_start_matches("0o"), 8) {
            Ok(bits) if bits <= 0o7777 => Ok(Mode(bits)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid mode `{text}`: write octal permission bits as a string, e.g. \"0640\""
            ))),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:04o}", self.0))
    }
}

impl JsonSchema for Mode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Mode".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Octal permission bits, such as \"0640\".",
            "pattern": "^(0o)?[0-7]{3,4}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn huge_durations_are_refused_not_overflowed() {
        for huge in ["9223372036854775807s", "367d", "100000000000000000000000s"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        assert!(parse_duration("366d").is_ok());
    }

    #[test]
    fn rejects_missing_unit_with_hint() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("such as 500ms"), "{err}");
    }
}
