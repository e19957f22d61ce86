//! Process figures from `/proc`: CPU time, resident memory, the PID that
//! listens on a port, and the open-file limit.

use std::time::Instant;

/// CPU time (user + system) of a process, and when it was read.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of `/proc/<pid>/stat` (or `self`), in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after the last ')' start with field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl CpuSample {
    /// Reads the CPU time of `pid` (`None`: this process).
    pub fn take(pid: Option<u32>) -> Option<CpuSample> {
        Some(CpuSample {
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU used between `self` and `later`, in percent of one core.
    pub fn pct_until(&self, later: &CpuSample) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let cpu = later.ticks.saturating_sub(self.ticks) as f64 / clock_ticks_per_sec();
        100.0 * cpu / wall
    }
}

/// `VmRSS` of `pid` (`None`: this process), KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The `host:port` of a server base URL (`http://127.0.0.1:7400` → port 7400).
pub fn port_of(server: &str) -> Option<u16> {
    let s = server
        .split("://")
        .nth(1)
        .unwrap_or(server)
        .split('/')
        .next()?;
    let port = s.rsplit(':').next()?;
    port.parse().ok()
}

/// The PID of the process listening on TCP `port` (IPv4 or IPv6), found
/// through `/proc/net/tcp*` and the socket links in `/proc/*/fd`. Only
/// processes this user may inspect are found.
pub fn find_listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (index 9)
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let Some(p) = local.rsplit(':').next() else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(p, 16).ok() == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(t) = target.to_str()
                && inodes.iter().any(|i| i == t)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Raises this process's open-file soft limit to its hard limit. Returns
/// the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The open-file soft limit of `pid`, from `/proc/<pid>/limits`.
pub fn nofile_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_parsing() {
        assert_eq!(port_of("http://127.0.0.1:7400"), Some(7400));
        assert_eq!(port_of("ws://127.0.0.1:81/ws"), Some(81));
        assert_eq!(port_of("127.0.0.1:9"), Some(9));
        assert_eq!(port_of("http://host"), None);
    }

    #[test]
    fn own_figures() {
        assert!(rss_kib(None).unwrap_or(0) > 0);
        let a = CpuSample::take(None);
        assert!(a.is_some());
        assert!(nofile_of(std::process::id()).is_some());
    }
}
