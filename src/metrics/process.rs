//! The `process_*` families, read from `/proc/self` at each scrape.
//!
//! The `prometheus` crate's process collector reports `process_cpu_seconds_total` in whole
//! seconds (it truncates the clock ticks), so a proxy that used 0.8 s of CPU read 0 and a
//! `rate()` over it jumped by whole seconds. This one reads the process CPU clock
//! (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, nanoseconds) and keeps the other families the
//! crate's collector had: memory, file descriptors, threads, start time. That collector is off
//! (the crate's `process` feature), as the default registry would register it by itself.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

/// The families, with their values set at each [`Collector::collect`].
pub struct ProcessCollector {
    cpu: Counter,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

#[allow(clippy::expect_used)] // Names are constants: a bad one is a bug found by any test.
fn opts<T>(make: fn(Opts) -> prometheus::Result<T>, name: &str, help: &str) -> T {
    make(Opts::new(name, help)).expect("valid process metric")
}

impl ProcessCollector {
    /// The collector of this process.
    pub fn new() -> ProcessCollector {
        let cpu = opts(
            Counter::with_opts,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        );
        let gauge = |name, help| opts(Gauge::with_opts, name, help);
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let threads = gauge("process_threads", "Number of OS threads in the process.");
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let descs = [
            &resident,
            &virtual_memory,
            &open_fds,
            &max_fds,
            &threads,
            &start_time,
        ]
        .iter()
        .flat_map(|g| g.desc().into_iter().cloned())
        .chain(cpu.desc().into_iter().cloned())
        .collect();
        ProcessCollector {
            cpu,
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            threads,
            start_time,
            descs,
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// CPU seconds (user + system) of all the process's threads, to the nanosecond.
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Fields of `/proc/self/stat` after the command name: (utime, stime, threads, starttime,
/// vsize, rss) as the kernel writes them (ticks, ticks, count, ticks since boot, bytes, pages).
fn stat() -> Option<[f64; 6]> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: split after the last `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is f[0]: utime is field 14, so f[11].
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some([n(11)?, n(12)?, n(17)?, n(19)?, n(20)?, n(21)?])
}

/// Seconds since the epoch at which the machine booted.
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<f64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current.map(|n| n as f64)
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The CPU clock gives nanoseconds; /proc/self/stat only clock ticks (10 ms).
        let cpu = cpu_seconds();
        let before = self.cpu.get();
        if cpu > before {
            self.cpu.inc_by(cpu - before);
        }
        if let Some(s) = stat() {
            let tck = rustix::param::clock_ticks_per_second() as f64;
            let page = rustix::param::page_size() as f64;
            self.threads.set(s[2]);
            self.virtual_memory.set(s[4]);
            self.resident.set(s[5] * page);
            if let Some(boot) = boot_time() {
                self.start_time.set(boot + s[3] / tck);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor is among those listed.
            self.open_fds.set(dir.count().saturating_sub(1) as f64);
        }
        if let Some(max) = max_fds() {
            self.max_fds.set(max);
        }
        let mut out = self.cpu.collect();
        for g in [
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ] {
            out.extend(g.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_has_sub_second_resolution() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let cpu = cpu_seconds();
        assert!(cpu > 0.0 && cpu.fract() != 0.0, "{cpu}");
    }

    #[test]
    fn every_family_is_collected() {
        let names: Vec<String> = ProcessCollector::new()
            .collect()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }
}
