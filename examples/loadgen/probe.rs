//! Reads the server's CPU time and memory from `/proc`, so its cost per message can be
//! measured at the exact edges of the load generator's window. Several processes (one
//! port shared with `--reuse-port`) are watched as one: their figures are added up.

/// The server processes to watch.
pub struct Probe {
    pids: Vec<u32>,
    ticks_per_second: f64,
}

impl Probe {
    pub fn new(pids: &[u32]) -> Result<Probe, String> {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let probe = Probe {
            pids: pids.to_vec(),
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        };
        probe.cpu_seconds()?; // fail early on a wrong PID
        Ok(probe)
    }

    /// User plus system CPU time the processes have used so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64, String> {
        self.pids.iter().map(|&pid| self.cpu_seconds_of(pid)).sum()
    }

    /// Resident memory (VmRSS) of the processes together, in KiB.
    pub fn rss_kib(&self) -> Result<u64, String> {
        self.pids.iter().map(|&pid| self.rss_kib_of(pid)).sum()
    }

    fn cpu_seconds_of(&self, pid: u32) -> Result<f64, String> {
        let stat = read(pid, "stat")?;
        // utime and stime are fields 14 and 15; the command name (field 2) may contain
        // spaces, so count from the closing parenthesis.
        let after_name = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        match (tick(11), tick(12)) {
            (Some(user), Some(system)) => Ok((user + system) as f64 / self.ticks_per_second),
            _ => Err(format!("cannot parse /proc/{pid}/stat")),
        }
    }

    fn rss_kib_of(&self, pid: u32) -> Result<u64, String> {
        let status = read(pid, "status")?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
    }
}

/// How many times the calling thread has gone to sleep so far (voluntary context switches):
/// the generator's own, to show whether its replies had to wake it (`--busy-poll`: none).
pub fn thread_sleeps() -> u64 {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_nvcsw as u64
}

fn read(pid: u32, file: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|err| format!("cannot read /proc/{pid}/{file}: {err}"))
}
