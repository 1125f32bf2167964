//! What `/proc` says about a process: resident memory and CPU time used.

use std::io;

/// Clock ticks per second in `/proc/PID/stat`: USER_HZ, 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// `VmRSS` of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// `VmRSS` of process `pid` in KiB, when a pid is given and it can be read; the
/// first error reading it is kept in `error`.
pub(crate) fn read_rss(pid: Option<u32>, error: &mut Option<String>) -> Option<u64> {
    match rss_kib(pid?) {
        Ok(kib) => Some(kib),
        Err(e) => {
            error.get_or_insert_with(|| e.to_string());
            None
        }
    }
}

/// User plus system CPU seconds used so far by process `pid` (all its threads), or
/// by this process when `pid` is `None`.
pub(crate) fn cpu_secs(pid: Option<u32>) -> io::Result<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(&path)?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / USER_HZ)
        .ok_or_else(|| io::Error::other(format!("unreadable {path}")))
}

/// CPU time spent by the server and by the bench over one timed phase, to put a
/// CPU cost on each message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMeter {
    server_pid: Option<u32>,
    server_start: Option<f64>,
    own_start: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring now; the server's CPU only when its pid is given.
    pub(crate) fn start(server_pid: Option<u32>) -> Self {
        Self {
            server_pid,
            server_start: server_pid.and_then(|pid| cpu_secs(Some(pid)).ok()),
            own_start: cpu_secs(None).ok(),
        }
    }

    /// `server_cpu_secs`, `server_cpu_us_per_message` and `bench_cpu_secs` since
    /// the start, for `messages` messages; what could not be read is left out.
    pub(crate) fn lines(&self, messages: usize) -> Vec<String> {
        self.phase_lines("", &[(messages, "message")])
    }

    /// The same for one phase of a scenario: `{prefix}server_cpu_secs`, then
    /// `{prefix}server_cpu_us_per_{unit}` for each `(count, unit)` of work done
    /// (none for a count of 0), then `{prefix}bench_cpu_secs`.
    pub(crate) fn phase_lines(&self, prefix: &str, work: &[(usize, &str)]) -> Vec<String> {
        let mut out = Vec::new();
        let server = self
            .server_pid
            .zip(self.server_start)
            .and_then(|(pid, start)| Some(cpu_secs(Some(pid)).ok()? - start));
        if let Some(secs) = server {
            out.push(format!("{prefix}server_cpu_secs={secs:.2}"));
            for &(count, unit) in work.iter().filter(|(count, _)| *count > 0) {
                out.push(format!(
                    "{prefix}server_cpu_us_per_{unit}={:.1}",
                    secs * 1e6 / count as f64
                ));
            }
        }
        if let Some(secs) = self
            .own_start
            .and_then(|start| Some(cpu_secs(None).ok()? - start))
        {
            out.push(format!("{prefix}bench_cpu_secs={secs:.2}"));
        }
        out
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name in
/// field 2 may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn own_process_is_readable() {
        assert!(rss_kib(std::process::id()).expect("rss") > 0);
        assert!(cpu_secs(None).expect("cpu") >= 0.0);
    }
}
