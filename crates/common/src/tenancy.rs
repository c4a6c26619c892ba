//! Customers, their tiers and status, API-key scopes and usage months. Plain data.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time};

/// A customer's plan; it sets the monthly quota and rate-limit overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Pro, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

/// Whether a customer may use the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustomerStatus {
    Active,
    /// Every request with the customer's keys is answered 403.
    Suspended,
}

impl CustomerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CustomerStatus::Active => "active",
            CustomerStatus::Suspended => "suspended",
        }
    }
}

/// A value that is not one of the documented names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl FromStr for Tier {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownName {
                what: "tier",
                value: s.to_owned(),
                expected: "free, pro, enterprise",
            })
    }
}

impl FromStr for CustomerStatus {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [CustomerStatus::Active, CustomerStatus::Suspended]
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownName {
                what: "status",
                value: s.to_owned(),
                expected: "active, suspended",
            })
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for CustomerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// `POST /capture`.
    #[serde(rename = "capture")]
    Capture,
    /// `POST /search`.
    #[serde(rename = "search")]
    Search,
    /// `POST /reflect`.
    #[serde(rename = "reflect")]
    Reflect,
    /// Listing and reading episodes.
    #[serde(rename = "episodes:read")]
    EpisodesRead,
    /// Deleting episodes and giving feedback.
    #[serde(rename = "episodes:write")]
    EpisodesWrite,
    /// Exporting and erasing the whole account.
    #[serde(rename = "account")]
    Account,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Capture,
        Scope::Search,
        Scope::Reflect,
        Scope::EpisodesRead,
        Scope::EpisodesWrite,
        Scope::Account,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Capture => "capture",
            Scope::Search => "search",
            Scope::Reflect => "reflect",
            Scope::EpisodesRead => "episodes:read",
            Scope::EpisodesWrite => "episodes:write",
            Scope::Account => "account",
        }
    }
}

impl FromStr for Scope {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s.trim())
            .ok_or_else(|| UnknownName {
                what: "scope",
                value: s.to_owned(),
                expected: "capture, search, reflect, episodes:read, episodes:write, account, *",
            })
    }
}

/// A set of scopes, stored space-separated; `*` is every scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(0b11_1111);

    fn bit(s: Scope) -> u8 {
        1 << (s as u8)
    }

    pub fn from_scopes(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Scopes(scopes.into_iter().fold(0, |acc, s| acc | Self::bit(s)))
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & Self::bit(s) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The stored form: `*` for all, else the names space-separated.
    pub fn to_stored(self) -> String {
        if self == Self::ALL {
            "*".to_owned()
        } else {
            self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
        }
    }

    /// Parses the stored form (or a list of names); empty is an error.
    pub fn parse_stored(s: &str) -> Result<Self, UnknownName> {
        let mut out = Scopes(0);
        for word in s.split([' ', ',']).filter(|w| !w.is_empty()) {
            if word == "*" {
                return Ok(Self::ALL);
            }
            out = Scopes(out.0 | Self::bit(word.parse()?));
        }
        if out.is_empty() {
            return Err(UnknownName {
                what: "scope list",
                value: s.to_owned(),
                expected: "at least one scope",
            });
        }
        Ok(out)
    }
}

/// A calendar month in UTC, the period of quotas and usage (`2026-11`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageMonth {
    pub year: i32,
    pub month: Month,
}

impl UsageMonth {
    pub fn of(t: OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        UsageMonth {
            year: t.year(),
            month: t.month(),
        }
    }

    /// The first instant of the month.
    pub fn start(self) -> OffsetDateTime {
        Date::from_calendar_date(self.year, self.month, 1)
            .map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// When the next month (and a fresh quota) starts.
    pub fn next_start(self) -> OffsetDateTime {
        let (year, month) = match self.month {
            Month::December => (self.year + 1, Month::January),
            m => (self.year, m.next()),
        };
        UsageMonth { year, month }.start()
    }
}

impl fmt::Display for UsageMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month as u8)
    }
}

impl FromStr for UsageMonth {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnknownName {
            what: "month",
            value: s.to_owned(),
            expected: "YYYY-MM",
        };
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        let month = Month::try_from(month).map_err(|_| bad())?;
        if !(1970..=9999).contains(&year) || y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        Ok(UsageMonth { year, month })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
        }
        assert_eq!("FREE".parse::<Tier>(), Ok(Tier::Free));
        assert!("gold".parse::<Tier>().is_err());
        assert_eq!(
            "suspended".parse::<CustomerStatus>(),
            Ok(CustomerStatus::Suspended)
        );
    }

    #[test]
    fn scopes_parse_and_store() {
        assert_eq!(Scopes::parse_stored("*"), Ok(Scopes::ALL));
        let s = Scopes::parse_stored("search reflect").expect("valid");
        assert!(s.contains(Scope::Search) && !s.contains(Scope::Capture));
        assert_eq!(s.to_stored(), "search reflect");
        assert_eq!(Scopes::ALL.to_stored(), "*");
        assert!(Scopes::parse_stored("").is_err());
        assert!(Scopes::parse_stored("search admin").is_err());
    }

    #[test]
    fn months() {
        let t = OffsetDateTime::from_unix_timestamp(1_796_000_000).expect("valid"); // 2026-11
        let m = UsageMonth::of(t);
        assert_eq!(m.to_string(), "2026-11");
        assert_eq!("2026-11".parse::<UsageMonth>(), Ok(m));
        assert_eq!(m.next_start().to_string().get(..10), Some("2026-12-01"));
        let dec: UsageMonth = "2026-12".parse().expect("valid");
        assert_eq!(dec.next_start().year(), 2027);
        assert!("2026-13".parse::<UsageMonth>().is_err());
        assert!("26-1".parse::<UsageMonth>().is_err());
    }
}
