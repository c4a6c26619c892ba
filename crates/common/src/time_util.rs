//! Time helpers: every timestamp crossing a boundary is UTC, RFC 3339 on the wire and
//! microseconds since the Unix epoch in the database.

use time::OffsetDateTime;

/// Now, truncated to whole microseconds so that a value survives a round trip through the
/// database (which stores microseconds) unchanged.
pub fn now_micros() -> OffsetDateTime {
    from_unix_micros(to_unix_micros(OffsetDateTime::now_utc()))
}

/// Microseconds since the Unix epoch.
pub fn to_unix_micros(t: OffsetDateTime) -> i64 {
    let nanos = t.unix_timestamp_nanos() / 1_000;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// The inverse of [`to_unix_micros`]; out-of-range values clamp to the Unix epoch.
pub fn from_unix_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip() {
        let t = now_micros();
        assert_eq!(from_unix_micros(to_unix_micros(t)), t);
    }
}
