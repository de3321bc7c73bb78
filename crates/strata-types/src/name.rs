use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MAX_NAME_LEN: usize = 64;

/// Checks the naming rule shared by datasets, tags and columns:
/// 1–64 characters, ASCII letters, digits, `_` and `-`, starting with a letter or `_`.
///
/// Names end up in storage keys and blob paths, so the rule keeps them free of
/// separators, dots and anything a shell or CQL would need to quote.
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidName {
        kind,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("must be at most 64 characters"));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return Err(invalid("must start with a letter or '_'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "may contain only ASCII letters, digits, '_' and '-'",
        ));
    }
    Ok(())
}

/// A validated dataset name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatasetName(String);

impl DatasetName {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        validate_name("dataset", &name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DatasetName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl From<DatasetName> for String {
    fn from(value: DatasetName) -> Self {
        value.0
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_names() {
        for ok in ["weather", "_x", "raw_data-2", &"a".repeat(64)] {
            DatasetName::new(ok).unwrap();
        }
        for bad in ["", "1abc", "a/b", "a.b", "..", "a b", &"a".repeat(65), "é"] {
            let err = DatasetName::new(bad).unwrap_err().to_string();
            assert!(err.contains("invalid dataset name"), "{err}");
        }
    }
}
