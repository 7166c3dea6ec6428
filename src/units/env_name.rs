//! `EnvName`: an environment variable name, checked once where it enters
//! (a unit file's `Environment=`, an instance's environment in the API) by
//! the one rule, [`is_valid_env_name`](super::quote::is_valid_env_name).

use super::quote::is_valid_env_name;

/// A valid environment variable name (the portable shell alphabet).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvName(String);

impl EnvName {
    pub fn parse(name: &str) -> Result<EnvName, String> {
        if is_valid_env_name(name) {
            Ok(EnvName(name.to_string()))
        } else {
            Err(format!(
                "environment name {name:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EnvName {
    type Error = String;
    fn try_from(name: String) -> Result<EnvName, String> {
        EnvName::parse(&name)
    }
}

impl From<EnvName> for String {
    fn from(name: EnvName) -> String {
        name.0
    }
}

impl std::fmt::Display for EnvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked_when_parsed_and_deserialized() {
        assert_eq!(EnvName::parse("CUDA_VISIBLE_DEVICES").unwrap().as_str(), "CUDA_VISIBLE_DEVICES");
        assert!(EnvName::parse("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let map: std::collections::BTreeMap<EnvName, String> = serde_json::from_str(r#"{"A_1":"x"}"#).unwrap();
        assert_eq!(map.keys().next().unwrap().as_str(), "A_1");
        let err = serde_json::from_str::<std::collections::BTreeMap<EnvName, String>>(r#"{"A-1":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("not a valid variable name"), "{err}");
    }
}
