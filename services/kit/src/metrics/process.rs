//! Process memory and CPU in the names Prometheus's own client libraries use
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read from `/proc` at
//! each scrape; elsewhere than on Linux they stay at zero.

use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Counter, Gauge, IntGauge};

use super::register;

/// Clock ticks per second of `/proc/self/stat`'s CPU times (USER_HZ, 100 on Linux's
/// supported architectures).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

pub(super) struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_memory: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    threads: IntGauge,
    /// CPU seconds already added to the counter.
    cpu_reported: Mutex<f64>,
}

pub(super) fn metrics() -> &'static ProcessMetrics {
    static METRICS: LazyLock<ProcessMetrics> = LazyLock::new(|| {
        let gauge = |name: &str, help: &str| {
            register(IntGauge::new(name, help).expect("valid metric name"))
        };
        let start_time = register(
            Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
            )
            .expect("valid metric name"),
        );
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
        );
        ProcessMetrics {
            cpu_seconds: register(
                Counter::new(
                    "process_cpu_seconds_total",
                    "User and system CPU time spent, in seconds.",
                )
                .expect("valid metric name"),
            ),
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory, in bytes.",
            ),
            virtual_memory: gauge("process_virtual_memory_bytes", "Virtual memory, in bytes."),
            open_fds: gauge("process_open_fds", "Open file descriptors."),
            threads: gauge("process_threads", "Operating system threads."),
            cpu_reported: Mutex::new(0.0),
        }
    });
    &METRICS
}

/// What `/proc/self/stat` says, in the fields read here.
#[derive(Debug, PartialEq)]
struct ProcStat {
    cpu_seconds: f64,
    threads: i64,
    virtual_bytes: i64,
    resident_pages: i64,
}

/// Parses `/proc/self/stat`: fields after the command name (which may hold spaces and
/// parentheses, so the text is split after its last `)`).
fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field numbers of proc(5), minus 3: state is fields[0].
    let number = |index: usize| fields.get(index)?.parse::<i64>().ok();
    let user_ticks = number(11)?;
    let system_ticks = number(12)?;
    Some(ProcStat {
        cpu_seconds: (user_ticks + system_ticks) as f64 / CLOCK_TICKS_PER_SECOND,
        threads: number(17)?,
        virtual_bytes: number(20)?,
        resident_pages: number(21)?,
    })
}

/// The page size, from the kernel's own statement of the resident set in `/proc/self/status`
/// when the two can be compared; 4 KiB otherwise.
fn resident_bytes(resident_pages: i64) -> i64 {
    let from_status = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            let kilobytes: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kilobytes * 1024)
        });
    from_status.unwrap_or(resident_pages * 4096)
}

/// Reads `/proc` into the process metrics (called before each scrape).
pub(super) fn refresh() {
    let metrics = metrics();
    let Some(stat) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| parse_stat(&text))
    else {
        return;
    };
    metrics.threads.set(stat.threads);
    metrics.virtual_memory.set(stat.virtual_bytes);
    metrics
        .resident_memory
        .set(resident_bytes(stat.resident_pages));
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        metrics.open_fds.set(entries.count() as i64);
    }
    let mut reported = metrics
        .cpu_reported
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if stat.cpu_seconds > *reported {
        metrics.cpu_seconds.inc_by(stat.cpu_seconds - *reported);
        *reported = stat.cpu_seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let text = "4242 (quarry (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    7 0 12345 104857600 2560 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                cpu_seconds: 3.0,
                threads: 7,
                virtual_bytes: 104_857_600,
                resident_pages: 2560,
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
