//! CPU time and peak memory of the processes under test, from `/proc` (Linux).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// `/proc/<pid>/stat` reports times in USER_HZ ticks, which Linux fixes at 100.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process to watch: `name=pid` on the command line (`self` = this process).
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: String,
}

impl std::str::FromStr for Watched {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pid) = s
            .split_once('=')
            .ok_or_else(|| format!("expected name=pid, got {s:?}"))?;
        if name.is_empty() || !(pid == "self" || pid.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("expected name=pid, got {s:?}"));
        }
        Ok(Self {
            name: name.to_owned(),
            pid: pid.to_owned(),
        })
    }
}

/// User + system CPU seconds of a process so far (`None` if it is gone).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Peak resident memory (VmHWM) in MiB.
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

/// CPU readings of every watched process at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    cpu: BTreeMap<String, Option<f64>>,
}

pub fn snapshot(watched: &[Watched]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        cpu: watched
            .iter()
            .map(|w| (w.name.clone(), cpu_seconds(&w.pid)))
            .collect(),
    }
}

/// CPU used by one process between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub cpu_s: f64,
    /// `cpu_s` over the wall time: how many cores the process kept busy.
    pub cores: f64,
}

pub fn between(from: &Snapshot, to: &Snapshot) -> BTreeMap<String, CpuUse> {
    let wall = to.at.duration_since(from.at).as_secs_f64().max(1e-9);
    from.cpu
        .iter()
        .filter_map(|(name, start)| {
            let end = to.cpu.get(name).copied().flatten()?;
            let used = (end - (*start)?).max(0.0);
            Some((
                name.clone(),
                CpuUse {
                    cpu_s: (used * 100.0).round() / 100.0,
                    cores: (used / wall * 100.0).round() / 100.0,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        assert!(cpu_seconds("self").is_some());
        assert!(peak_rss_mib("self").is_some_and(|m| m > 0.0));
        assert!("gw=123".parse::<Watched>().is_ok());
        assert!("gw=abc".parse::<Watched>().is_err());
        assert!("123".parse::<Watched>().is_err());
    }
}
