//! What the kernel knows about a process: CPU time, resident memory, open descriptors and
//! their limit, and when it started. These become the standard `process_*` metrics that
//! every Prometheus client library exports, so dashboards built for them work unchanged.
//!
//! Read from `/proc` on Linux (for any pid: the master sums its workers). Elsewhere only
//! what `getrusage` and `getrlimit` tell about the calling process is known, and the rest
//! stays `None` (left out of the exposition rather than reported as a false zero).

/// One reading of a process's resources.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_bytes: Option<u64>,
    /// Descriptors open now.
    pub open_fds: Option<u64>,
    /// The soft limit on open descriptors.
    pub max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessSample {
    /// The calling process.
    pub fn own() -> ProcessSample {
        let mut sample = ProcessSample::of(std::process::id());
        sample.max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        if sample.cpu_seconds.is_none() {
            sample.cpu_seconds = own_cpu_seconds();
        }
        sample
    }

    /// Process `pid`, from `/proc/PID` (all `None` where there is no `/proc`).
    pub fn of(pid: u32) -> ProcessSample {
        let dir = format!("/proc/{pid}");
        let Ok(stat) = std::fs::read_to_string(format!("{dir}/stat")) else {
            return ProcessSample::default();
        };
        // The command name (field 2) is in parentheses and may hold spaces: the fields
        // worth reading are counted from after its closing parenthesis.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // In proc_pid_stat(5)'s numbering: utime is 14, stime 15, starttime 22, rss 24;
        // the slice starts at field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = clock_ticks_per_second();
        let cpu_seconds = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) as f64 / ticks);
        let resident_bytes = field(24).map(|pages| pages * page_size());
        let start_time_seconds = field(22)
            .zip(boot_time_seconds())
            .map(|(start, boot)| boot as f64 + start as f64 / ticks);
        let open_fds = count_open_fds(&format!("{dir}/fd"));
        let max_fds = std::fs::read_to_string(format!("{dir}/limits"))
            .ok()
            .and_then(|limits| soft_open_files_limit(&limits));
        ProcessSample {
            cpu_seconds,
            resident_bytes,
            open_fds,
            max_fds,
            start_time_seconds,
        }
    }

    /// Several processes as one: times and sizes add up; the limit and the start are the
    /// first one's (the master's, when the master sums itself and its workers).
    pub fn combined(samples: &[ProcessSample]) -> ProcessSample {
        let sum_u64 = |pick: fn(&ProcessSample) -> Option<u64>| {
            samples
                .iter()
                .map(pick)
                .try_fold(0, |total, v| Some(total + v?))
        };
        ProcessSample {
            cpu_seconds: samples
                .iter()
                .map(|s| s.cpu_seconds)
                .try_fold(0.0, |total, v| Some(total + v?)),
            resident_bytes: sum_u64(|s| s.resident_bytes),
            open_fds: sum_u64(|s| s.open_fds),
            max_fds: samples.first().and_then(|s| s.max_fds),
            start_time_seconds: samples.first().and_then(|s| s.start_time_seconds),
        }
    }
}

/// Descriptors open in a `/proc/PID/fd` directory. Since Linux 6.2 the directory's size
/// is that count, one `stat` however many there are; older kernels say 0, and then the
/// entries are counted (10,000 of them cost a few milliseconds per scrape).
fn count_open_fds(dir: &str) -> Option<u64> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.len() > 0 => Some(meta.len()),
        Ok(_) => std::fs::read_dir(dir)
            .ok()
            .map(|entries| entries.count() as u64),
        Err(_) => None,
    }
}

/// `Max open files`' soft limit from a `/proc/PID/limits` table.
fn soft_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` from `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time_seconds() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// The calling process's CPU time from `getrusage`, for systems without `/proc`.
fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn unix_now_seconds() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn the_open_files_limit_is_read_from_its_row() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(soft_open_files_limit(limits), Some(20000));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_is_measured() {
        let sample = ProcessSample::own();
        assert!(sample.resident_bytes.unwrap() > 0);
        assert!(sample.open_fds.unwrap() >= 3);
        assert!(sample.max_fds.unwrap() >= sample.open_fds.unwrap());
        let started = sample.start_time_seconds.unwrap();
        assert!(started <= unix_now_seconds() + 1.0);
        assert!(started > unix_now_seconds() - 24.0 * 3600.0 * 365.0);
    }

    #[test]
    fn combined_adds_sizes_and_keeps_the_first_start() {
        let one = ProcessSample {
            cpu_seconds: Some(1.5),
            resident_bytes: Some(100),
            open_fds: Some(5),
            max_fds: Some(1024),
            start_time_seconds: Some(10.0),
        };
        let two = ProcessSample {
            start_time_seconds: Some(20.0),
            max_fds: Some(9),
            ..one
        };
        let both = ProcessSample::combined(&[one, two]);
        assert_eq!(both.cpu_seconds, Some(3.0));
        assert_eq!(both.resident_bytes, Some(200));
        assert_eq!(both.open_fds, Some(10));
        assert_eq!(
            (both.max_fds, both.start_time_seconds),
            (Some(1024), Some(10.0))
        );
    }
}
