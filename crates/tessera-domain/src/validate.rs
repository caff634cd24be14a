//! Validated values: each newtype can only be built from input that satisfies its rule, so code
//! holding one never re-checks it. Errors name the offending field.

use std::fmt;

/// A value broke a rule. `field` is the dotted path as the client sent it (`model.temperature`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Re-roots the error under `parent` (`temperature` → `model.temperature`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Checks the length in characters and rejects control characters.
fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    let len = value.chars().count();
    if len < min {
        return Err(ValidationError::new(
            field,
            if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters (got {len})"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a machine-readable token: `first` for the first byte, `rest` for the others.
fn check_token(
    field: &str,
    value: &str,
    max: usize,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
    rule: &str,
) -> Result<(), ValidationError> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= max
        && first(bytes[0])
        && bytes[1..].iter().all(|&b| rest(b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("must be 1-{max} characters matching {rule}"),
        ))
    }
}

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, |$field:ident, $value:ident| $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`; errors are reported against `field`.
            pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
                let $value: String = value.into();
                let $field = field;
                $check?;
                Ok(Self($value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(stringify!($name), raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_string!(
    /// A deployment's unique name: `[a-z0-9][a-z0-9-]*`, at most 63 characters.
    DeploymentName,
    |field, value| check_token(field, &value, 63, lower_alnum, |b| lower_alnum(b) || b == b'-', "[a-z0-9][a-z0-9-]*")
);
validated_string!(
    /// A human label (key names, project names, agent names): 1-200 characters, no control chars.
    Label,
    |field, value| check_text(field, &value, 1, 200)
);
validated_string!(
    /// The kind of subject an actor represents (`user`, `service`, `team`): `[a-z][a-z0-9_]*`, ≤ 32.
    SubjectType,
    |field, value| check_token(field, &value, 32, |b| b.is_ascii_lowercase(), |b| lower_alnum(b) || b == b'_', "[a-z][a-z0-9_]*")
);
validated_string!(
    /// The caller's own identifier for an actor: 1-256 characters, no control characters.
    ExternalKey,
    |field, value| check_text(field, &value, 1, 256)
);
validated_string!(
    /// Free text describing something (agent description): at most 10 000 characters.
    Description,
    |field, value| check_text(field, &value, 0, 10_000)
);
validated_string!(
    /// A model provider's configured name: `[a-z0-9][a-z0-9_-]*`, ≤ 64.
    ProviderName,
    |field, value| check_token(field, &value, 64, lower_alnum, |b| lower_alnum(b) || b == b'_' || b == b'-', "[a-z0-9][a-z0-9_-]*")
);
validated_string!(
    /// A model name as the provider knows it: 1-256 visible characters.
    ModelName,
    |field, value| check_token(field, &value, 256, |b| b.is_ascii_graphic(), |b| b.is_ascii_graphic(), "visible ASCII")
);
validated_string!(
    /// A capability tag used for routing delegated work: `[a-z0-9][a-z0-9_.:-]*`, ≤ 64.
    CapabilityTag,
    |field, value| check_token(field, &value, 64, lower_alnum, |b| lower_alnum(b) || matches!(b, b'_' | b'.' | b':' | b'-'), "[a-z0-9][a-z0-9_.:-]*")
);
validated_string!(
    /// A pool endpoint slug (`/api/v1/ask/{slug}`): `[a-z0-9][a-z0-9-]*`, ≤ 63.
    EndpointSlug,
    |field, value| check_token(field, &value, 63, lower_alnum, |b| lower_alnum(b) || b == b'-', "[a-z0-9][a-z0-9-]*")
);
validated_string!(
    /// A tool-name pattern in an approval rule; `*` matches any run of characters.
    ToolPattern,
    |field, value| check_token(field, &value, 64, |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*'), |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*'), "[A-Za-z0-9_*-]+")
);

impl ToolPattern {
    /// Glob match where `*` matches any (possibly empty) run of characters.
    pub fn matches(&self, tool: &str) -> bool {
        glob_match(self.0.as_bytes(), tool.as_bytes())
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Arbitrary caller data attached to an object: a JSON object of at most 16 KiB serialized.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Metadata(serde_json::Map<String, serde_json::Value>);

impl Metadata {
    pub const MAX_BYTES: usize = 16 * 1024;

    pub fn parse(field: &str, value: serde_json::Value) -> Result<Self, ValidationError> {
        let serde_json::Value::Object(map) = value else {
            return Err(ValidationError::new(field, "must be a JSON object"));
        };
        let size = serde_json::to_vec(&map)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > Self::MAX_BYTES {
            return Err(ValidationError::new(
                field,
                format!(
                    "must be at most {} bytes serialized (got {size})",
                    Self::MAX_BYTES
                ),
            ));
        }
        Ok(Self(map))
    }

    pub fn empty() -> Self {
        Self(serde_json::Map::new())
    }

    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }

    pub fn into_value(self) -> serde_json::Value {
        serde_json::Value::Object(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_json::Value::deserialize(d)?;
        Self::parse("metadata", raw).map_err(serde::de::Error::custom)
    }
}

/// Validates a list of raw strings with `parse`, rejecting duplicates and more than `max` items.
pub fn parse_list<T: PartialEq>(
    field: &str,
    raw: Vec<String>,
    max: usize,
    parse: impl Fn(&str, String) -> Result<T, ValidationError>,
) -> Result<Vec<T>, ValidationError> {
    if raw.len() > max {
        return Err(ValidationError::new(
            field,
            format!("must have at most {max} items (got {})", raw.len()),
        ));
    }
    let mut out: Vec<T> = Vec::with_capacity(raw.len());
    for (i, item) in raw.into_iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let value = parse(&item_field, item)?;
        if out.contains(&value) {
            return Err(ValidationError::new(item_field, "is a duplicate"));
        }
        out.push(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_their_rules() {
        assert!(SubjectType::parse("subject_type", "user").is_ok());
        assert!(SubjectType::parse("subject_type", "service_account2").is_ok());
        let err = SubjectType::parse("subject_type", "User").unwrap_err();
        assert_eq!(err.field, "subject_type");
        assert!(SubjectType::parse("subject_type", "").is_err());
        assert!(SubjectType::parse("subject_type", "a".repeat(33)).is_err());
        assert!(EndpointSlug::parse("endpoint_slug", "support-bot").is_ok());
        assert!(EndpointSlug::parse("endpoint_slug", "-x").is_err());
        assert!(CapabilityTag::parse("t", "data-validation").is_ok());
        assert!(CapabilityTag::parse("t", "Data").is_err());
        assert!(ModelName::parse("m", "gpt-4o-mini").is_ok());
        assert!(ModelName::parse("m", "has space").is_err());
    }

    #[test]
    fn text_limits_count_characters_and_refuse_controls() {
        assert!(ExternalKey::parse("k", "é".repeat(256)).is_ok());
        let err = ExternalKey::parse("k", "é".repeat(257)).unwrap_err();
        assert!(err.message.contains("at most 256"));
        assert!(ExternalKey::parse("k", "a\u{0}b").is_err());
        assert!(Label::parse("name", "").is_err());
        assert!(Description::parse("d", "").is_ok());
    }

    #[test]
    fn globs_match() {
        let p = ToolPattern::parse("p", "send_*").unwrap();
        assert!(p.matches("send_email"));
        assert!(p.matches("send_"));
        assert!(!p.matches("resend_email"));
        let all = ToolPattern::parse("p", "*").unwrap();
        assert!(all.matches("anything"));
        let mid = ToolPattern::parse("p", "a*b*c").unwrap();
        assert!(mid.matches("axxbyyc"));
        assert!(!mid.matches("axxbyy"));
    }

    #[test]
    fn lists_reject_duplicates_and_name_the_index() {
        let err = parse_list(
            "capability_tags",
            vec!["a".into(), "b".into(), "a".into()],
            10,
            CapabilityTag::parse,
        )
        .unwrap_err();
        assert_eq!(err.field, "capability_tags[2]");
        let err = parse_list(
            "capability_tags",
            vec!["ok".into(), "BAD".into()],
            10,
            CapabilityTag::parse,
        )
        .unwrap_err();
        assert_eq!(err.field, "capability_tags[1]");
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert!(Metadata::parse("metadata", serde_json::json!({"a": 1})).is_ok());
        assert!(Metadata::parse("metadata", serde_json::json!([1])).is_err());
        let big = serde_json::json!({ "a": "x".repeat(Metadata::MAX_BYTES) });
        assert!(Metadata::parse("metadata", big).is_err());
    }

    #[test]
    fn errors_reroot_under_parents() {
        let e = ValidationError::new("temperature", "bad").under("model");
        assert_eq!(e.field, "model.temperature");
        let e = ValidationError::new("[2]", "bad").under("tags");
        assert_eq!(e.field, "tags[2]");
    }
}
