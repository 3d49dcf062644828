//! The processes of a run: starting each service (upstream, proxy, gateway) with its own log and
//! waiting for its `READY` line, pinning to cores with `taskset`, raising RLIMIT_NOFILE, and
//! reading a process's CPU time (`/proc/PID/stat` utime + stime) and resident memory
//! (`/proc/PID/status` VmRSS).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use crate::Error;

/// Which cores the run uses: the proxy and the gateway on one, the upstream and the load
/// generator on the other. Disabled on a machine with one core or without `taskset`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Pinning {
    pub enabled: bool,
    pub gateway_core: usize,
    pub load_core: usize,
}

impl Pinning {
    /// Pins when there are at least two cores and `taskset` runs.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = std::process::Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let allowed = allowed_cores();
        let (gateway_core, load_core) = match allowed.as_slice() {
            [a, b, ..] => (*a, *b),
            _ => (0, 0),
        };
        Pinning {
            enabled: cores >= 2 && taskset && allowed.len() >= 2,
            gateway_core,
            load_core,
        }
    }

    /// Off: every process runs where the scheduler puts it.
    pub fn disabled() -> Self {
        Pinning {
            enabled: false,
            gateway_core: 0,
            load_core: 0,
        }
    }

    /// Pins the calling thread (and the threads it starts afterwards) to the load core.
    pub fn pin_self_to_load_core(&self) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let mut set = rustix::thread::CpuSet::new();
        set.set(self.load_core);
        rustix::thread::sched_setaffinity(None, &set).map_err(|e| {
            format!(
                "cannot pin the load generator to core {}: {e}",
                self.load_core
            )
        })?;
        Ok(())
    }
}

/// The cores this process may run on, lowest first.
fn allowed_cores() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Raises the open-file limit to at least `wanted` (the hard limit too, when allowed) and
/// returns the soft limit now in force. Children started afterwards inherit it.
pub fn raise_nofile(wanted: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= wanted {
        return soft;
    }
    let hard = current.maximum.unwrap_or(u64::MAX);
    let raised = Rlimit {
        current: Some(wanted),
        maximum: Some(hard.max(wanted)),
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        return wanted;
    }
    // Not allowed above the hard limit: take what there is.
    let capped = Rlimit {
        current: Some(hard.min(wanted)),
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, capped) {
        Ok(()) => hard.min(wanted),
        Err(_) => soft,
    }
}

/// A started service. Dropping it kills the process.
pub struct Service {
    name: String,
    child: Child,
    pid: u32,
    ready: String,
    log: PathBuf,
    // Kept open so the service never writes to a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
}

/// How to start one service.
pub struct Launch<'a> {
    pub name: &'a str,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Pinned to this core with `taskset`, if any.
    pub core: Option<usize>,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// Run under this wrapper (e.g. valgrind and its options) instead of directly.
    pub wrapper: Vec<String>,
    pub ready_timeout: Duration,
}

impl Launch<'_> {
    /// Starts the process and waits for its `READY ...` line on stdout.
    pub async fn start(self) -> Result<Service, Error> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(core) = self.core {
            argv.extend(["taskset".into(), "-c".into(), core.to_string()]);
        }
        argv.extend(self.wrapper.iter().cloned());
        argv.push(self.program.display().to_string());
        argv.extend(self.args.iter().cloned());
        let log = std::fs::File::create(&self.log)
            .map_err(|e| format!("cannot create {}: {e}", self.log.display()))?;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {} ({}): {e}", self.name, argv.join(" ")))?;
        let pid = child
            .id()
            .ok_or_else(|| format!("{} exited at once", self.name))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{}: no stdout", self.name))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(self.ready_timeout, async {
            // Bounded: the timeout above, or the end of stdout.
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("READY ") {
                    return Ok(Some(rest.to_owned()));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let ready = match ready {
            Ok(Ok(Some(ready))) => ready,
            Ok(Ok(None)) | Ok(Err(_)) => {
                return Err(format!(
                    "{} stopped before it was ready; its log: {}",
                    self.name,
                    self.log.display()
                )
                .into());
            }
            Err(_) => {
                return Err(format!(
                    "{} was not ready within {:?}; its log: {}",
                    self.name,
                    self.ready_timeout,
                    self.log.display()
                )
                .into());
            }
        };
        Ok(Service {
            name: self.name.to_owned(),
            child,
            pid,
            ready,
            log: self.log,
            _stdout: lines,
        })
    }
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// A `key=value` field of the READY line, e.g. `http`.
    pub fn ready_field(&self, key: &str) -> Result<String, Error> {
        self.ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: no {key}= in its READY line", self.name).into())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) -> Result<(), Error> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.child
                .kill()
                .await
                .map_err(|e| format!("cannot kill {}: {e}", self.name))?;
        }
        Ok(())
    }
}

/// CPU seconds (user + system, all threads) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at indices 11 and 12.
    let ticks = |i: usize| -> Result<u64, Error> {
        Ok(fields
            .get(i)
            .ok_or("short /proc/PID/stat")?
            .parse::<u64>()
            .map_err(|e| format!("bad /proc/PID/stat: {e}"))?)
    };
    let per_second = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_second)
}

/// Resident memory of the process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_memory_are_readable() {
        let pid = std::process::id();
        let spin: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(rss_kib(pid).unwrap() > 100);
    }
}
