//! Latency histograms (HdrHistogram, microsecond resolution) and their JSON summary.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram of durations in microseconds, 1 µs to 1 hour, 3 significant digits.
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        // Bounds are constants within what HdrHistogram accepts.
        #[allow(clippy::unwrap_used)]
        let h = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        Self(h)
    }

    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn summary(&self) -> Summary {
        let ms = |micros: u64| (micros as f64 / 1_000.0 * 1_000.0).round() / 1_000.0;
        let q = |quantile: f64| ms(self.0.value_at_quantile(quantile));
        Summary {
            count: self.0.len(),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: ms(self.0.max()),
            mean_ms: (self.0.mean() / 1_000.0 * 1_000.0).round() / 1_000.0,
        }
    }
}

/// Percentiles in milliseconds (0 when empty).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// `30s`, `500ms`, `2m`, `1h` or plain seconds (`45`, `0.5`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {raw:?} (e.g. 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1_000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        _ => return Err(format!("invalid duration unit in {raw:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("invalid duration {raw:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn summary_reports_percentiles_in_ms() {
        let mut l = Latencies::new();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }
}
