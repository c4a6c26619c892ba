//! Rate-limit settings: the gateway nests them under `rate_limits`
//! (`EM_GATEWAY__RATE_LIMITS__*`, standalone `EM_STANDALONE__RATE_LIMITS__*`).

use std::num::NonZeroU32;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::{Endpoint, Tier};

/// Where buckets live, how long to wait for Redis, and the limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// `redis://[:password@]host:6379[/db]` or `rediss://…` (TLS): buckets shared by every
    /// replica. Unset: each process limits on its own (standalone, a single gateway).
    pub redis_url: Option<SecretString>,
    /// Keys are `<key_prefix>:rl:<tenant>:<endpoint>`.
    pub key_prefix: String,
    /// Bound on each Redis call; past it the request is decided by the local limiter.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The period every limit counts over (whole seconds).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Requests per `window` for every tier, unless `tiers` says otherwise.
    pub limits: EndpointLimits,
    /// Per-tier overrides (`tiers.pro.search = 2000`).
    pub tiers: TierOverrides,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "episodic".to_owned(),
            timeout: Duration::from_millis(50),
            window: Duration::from_secs(60),
            limits: EndpointLimits::default(),
            tiers: TierOverrides::default(),
        }
    }
}

const fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero default")
}

/// Requests per window for each endpoint (zero is not a valid limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointLimits {
    pub capture: NonZeroU32,
    pub search: NonZeroU32,
    pub reflect: NonZeroU32,
    pub episodes: NonZeroU32,
    pub admin: NonZeroU32,
    pub account: NonZeroU32,
}

impl Default for EndpointLimits {
    /// capture 100, search 500, reflect 300, episodes 300, admin 50, account 10.
    fn default() -> Self {
        Self {
            capture: nz(100),
            search: nz(500),
            reflect: nz(300),
            episodes: nz(300),
            admin: nz(50),
            account: nz(10),
        }
    }
}

impl EndpointLimits {
    pub fn get(&self, endpoint: Endpoint) -> NonZeroU32 {
        match endpoint {
            Endpoint::Capture => self.capture,
            Endpoint::Search => self.search,
            Endpoint::Reflect => self.reflect,
            Endpoint::Episodes => self.episodes,
            Endpoint::Admin => self.admin,
            Endpoint::Account => self.account,
        }
    }
}

/// Limits of one tier that differ from [`EndpointLimits`]; unset ones inherit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointOverrides {
    pub capture: Option<NonZeroU32>,
    pub search: Option<NonZeroU32>,
    pub reflect: Option<NonZeroU32>,
    pub episodes: Option<NonZeroU32>,
    pub admin: Option<NonZeroU32>,
    pub account: Option<NonZeroU32>,
}

impl EndpointOverrides {
    pub fn get(&self, endpoint: Endpoint) -> Option<NonZeroU32> {
        match endpoint {
            Endpoint::Capture => self.capture,
            Endpoint::Search => self.search,
            Endpoint::Reflect => self.reflect,
            Endpoint::Episodes => self.episodes,
            Endpoint::Admin => self.admin,
            Endpoint::Account => self.account,
        }
    }
}

/// Overrides per tier; by default every tier has the base limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierOverrides {
    pub free: EndpointOverrides,
    pub pro: EndpointOverrides,
    pub enterprise: EndpointOverrides,
}

impl TierOverrides {
    pub fn get(&self, tier: Tier) -> &EndpointOverrides {
        match tier {
            Tier::Free => &self.free,
            Tier::Pro => &self.pro,
            Tier::Enterprise => &self.enterprise,
        }
    }
}

impl RateLimitSettings {
    /// The limit of `tier` on `endpoint`, per [`window`](Self::window).
    pub fn limit(&self, tier: Tier, endpoint: Endpoint) -> NonZeroU32 {
        self.tiers
            .get(tier)
            .get(endpoint)
            .unwrap_or_else(|| self.limits.get(endpoint))
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Env, Format, Toml};
    use secrecy::ExposeSecret;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Gateway {
        #[serde(default)]
        rate_limits: RateLimitSettings,
    }

    #[allow(clippy::result_large_err)] // figment's error is large; tests only
    fn load() -> Result<RateLimitSettings, figment::Error> {
        Figment::new()
            .merge(Toml::file("gateway.toml"))
            .merge(Env::prefixed("EM_GATEWAY__").split("__"))
            .extract::<Gateway>()
            .map(|g| g.rate_limits)
    }

    #[test]
    fn defaults() {
        let s = RateLimitSettings::default();
        assert!(s.redis_url.is_none());
        assert_eq!(s.timeout, Duration::from_millis(50));
        let per_minute: Vec<u32> = Endpoint::ALL
            .iter()
            .map(|&e| s.limit(Tier::Free, e).get())
            .collect();
        assert_eq!(per_minute, [100, 500, 300, 300, 50, 10]);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn env_vars_and_file_as_documented() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gateway.toml",
                "[rate_limits]\ntimeout = \"80ms\"\n[rate_limits.tiers.enterprise]\nsearch = 5000\n",
            )?;
            jail.set_env(
                "EM_GATEWAY__RATE_LIMITS__REDIS_URL",
                "redis://127.0.0.1:6379/0",
            );
            jail.set_env("EM_GATEWAY__RATE_LIMITS__KEY_PREFIX", "prod");
            jail.set_env("EM_GATEWAY__RATE_LIMITS__WINDOW", "1h");
            jail.set_env("EM_GATEWAY__RATE_LIMITS__LIMITS__CAPTURE", "120");
            jail.set_env("EM_GATEWAY__RATE_LIMITS__TIERS__PRO__CAPTURE", "1000");
            let s = load()?;
            assert_eq!(
                s.redis_url.as_ref().map(|u| u.expose_secret().to_owned()),
                Some("redis://127.0.0.1:6379/0".to_owned())
            );
            assert_eq!(s.key_prefix, "prod");
            assert_eq!(s.timeout, Duration::from_millis(80));
            assert_eq!(s.window, Duration::from_secs(3600));
            assert_eq!(s.limit(Tier::Free, Endpoint::Capture).get(), 120);
            assert_eq!(s.limit(Tier::Pro, Endpoint::Capture).get(), 1000);
            assert_eq!(s.limit(Tier::Pro, Endpoint::Search).get(), 500);
            assert_eq!(s.limit(Tier::Enterprise, Endpoint::Search).get(), 5000);

            jail.set_env("EM_GATEWAY__RATE_LIMITS__TIERS__GOLD__CAPTURE", "1");
            assert!(load().is_err(), "unknown tier");
            jail.clear_env();
            jail.set_env("EM_GATEWAY__RATE_LIMITS__LIMITS__SEARCH", "0");
            assert!(load().is_err(), "zero is not a limit");
            jail.clear_env();
            jail.set_env("EM_GATEWAY__RATE_LIMITS__LIMITS__UPLOAD", "5");
            assert!(load().is_err(), "unknown endpoint");
            Ok(())
        });
    }
}
