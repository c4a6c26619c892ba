//! Layered, typed settings shared by every service.
//!
//! Precedence (lowest first): the struct's serde defaults (`#[serde(default)]`), an optional TOML file, then environment
//! variables `EM_<SERVICE>__<SECTION>__<KEY>` (double underscore separates nesting levels;
//! keys are lower-cased). Settings structs use `#[serde(deny_unknown_fields)]`, so a typo
//! in a file or an env var fails start-up instead of being ignored.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

/// Settings could not be loaded; the message names the offending key and source.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(String);

/// The env-var prefix of a service, e.g. `EM_GATEWAY__`.
pub fn env_prefix(service: &str) -> String {
    format!("EM_{}__", service.to_ascii_uppercase().replace('-', "_"))
}

/// Loads `T` for `service` from defaults, an optional TOML file and the environment.
pub fn load<T>(service: &str, file: Option<&Path>) -> Result<T, SettingsError>
where
    T: DeserializeOwned,
{
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(SettingsError(format!(
                "settings file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed(&env_prefix(service)).split("__"));
    figment.extract().map_err(|e| SettingsError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        port: u16,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        name: String,
        http: Inner,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn env_overrides_defaults_and_unknown_keys_fail() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EM_DEMO_SVC__HTTP__PORT", "8081");
            jail.set_env("EM_DEMO_SVC__NAME", "x");
            let s: Demo = load("demo-svc", None).map_err(|e| e.to_string())?;
            assert_eq!(s.http.port, 8081);
            assert_eq!(s.name, "x");
            jail.set_env("EM_DEMO_SVC__HTTP__PROT", "1");
            assert!(load::<Demo>("demo-svc", None).is_err());
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(load::<Demo>("demo", Some(Path::new("/nonexistent.toml"))).is_err());
    }
}
