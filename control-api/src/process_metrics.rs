//! The standard process metrics of Prometheus' client libraries (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), read from `/proc/self` on Linux, and
//! `unitgate_build_info`. The gateway and the control plane both append them to their
//! `/metrics`. Elsewhere than Linux the process metrics are left out.
//!
//! Written here rather than taken from a crate: the `procfs` crate (which the `prometheus`
//! crate's process collector uses) brings a dozen crates to read four files, and the figures
//! are the same ones client_golang reads, from the same files.

use std::fmt::Write as _;
use std::sync::OnceLock;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Start time, in seconds since the epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors (the one reading `/proc/self/fd` included, as client_golang
    /// counts them).
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors; `None` when unlimited.
    pub max_fds: Option<u64>,
}

/// Fields of `/proc/self/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// `utime + stime`, in clock ticks.
    cpu_ticks: u64,
    /// Since boot, in clock ticks.
    start_ticks: u64,
    /// In bytes.
    vsize: u64,
    /// In pages.
    rss_pages: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; field N is at index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The soft `Max open files` limit of `/proc/<pid>/limits`; `None` when unlimited or absent.
fn parse_max_fds(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: boot time, in seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `AT_PAGESZ` and `AT_CLKTCK` of the auxiliary vector (`/proc/self/auxv`: pairs of native
/// words), which the kernel hands every process: sysconf reads them there too.
fn parse_auxv(auxv: &[u8]) -> (Option<u64>, Option<u64>) {
    const AT_PAGESZ: u64 = 6;
    const AT_CLKTCK: u64 = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let (mut page_size, mut ticks) = (None, None);
    for pair in auxv.chunks_exact(2 * WORD) {
        let word = |b: &[u8]| -> u64 {
            let mut buf = [0u8; WORD];
            buf.copy_from_slice(b);
            usize::from_ne_bytes(buf) as u64
        };
        let (key, value) = (word(&pair[..WORD]), word(&pair[WORD..]));
        match key {
            AT_PAGESZ => page_size = Some(value),
            AT_CLKTCK => ticks = Some(value),
            0 => break,
            _ => {}
        }
    }
    (page_size, ticks)
}

/// Page size, clock ticks per second and boot time: fixed for the process's life.
struct Constants {
    page_size: u64,
    ticks_per_second: u64,
    boot_time: Option<u64>,
}

fn constants() -> &'static Constants {
    static CONSTANTS: OnceLock<Constants> = OnceLock::new();
    CONSTANTS.get_or_init(|| {
        let (page_size, ticks) = std::fs::read("/proc/self/auxv")
            .map(|a| parse_auxv(&a))
            .unwrap_or_default();
        Constants {
            // The kernel's USER_HZ is 100 and pages 4 KiB on every common platform: the
            // figures client_golang assumes.
            page_size: page_size.filter(|p| *p > 0).unwrap_or(4096),
            ticks_per_second: ticks.filter(|t| *t > 0).unwrap_or(100),
            boot_time: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_boot_time(&s)),
        }
    })
}

impl ProcessStats {
    /// This process's figures now; `None` where `/proc/self` cannot be read (not Linux).
    pub fn read() -> Option<Self> {
        let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let constants = constants();
        let ticks = constants.ticks_per_second as f64;
        Some(Self {
            cpu_seconds: stat.cpu_ticks as f64 / ticks,
            resident_bytes: stat.rss_pages.saturating_mul(constants.page_size),
            virtual_bytes: stat.vsize,
            start_time_seconds: constants.boot_time? as f64 + stat.start_ticks as f64 / ticks,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|l| parse_max_fds(&l)),
        })
    }
}

/// Append the process metrics to `out` (nothing where `/proc/self` cannot be read).
pub fn render(out: &mut String) {
    let Some(stats) = ProcessStats::read() else {
        return;
    };
    let mut metric = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        &stats.cpu_seconds,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        &stats.resident_bytes,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        &stats.virtual_bytes,
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        &stats.start_time_seconds,
    );
    if let Some(open) = stats.open_fds {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            &open,
        );
    }
    if let Some(max) = stats.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            &max,
        );
    }
}

/// Append `unitgate_build_info{component,version} 1`: which program and release this is
/// (`component` is `gateway` or `control-plane`; `version` the crate's version).
pub fn render_build_info(out: &mut String, component: &str, version: &str) {
    let _ = writeln!(
        out,
        "# HELP unitgate_build_info The program and version running; always 1.\n# TYPE unitgate_build_info gauge\nunitgate_build_info{{component=\"{component}\",version=\"{version}\"}} 1"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis of its own.
        let line = "4242 (un (it) gate) S 1 4242 4242 0 -1 4194560 1200 0 0 0 150 25 0 0 20 0 9 0 12345 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 175,
                start_ticks: 12345,
                vsize: 987_654_321,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut) S 1"), None);
    }

    #[test]
    fn limits_boot_time_and_auxv() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             63321                63321                processes \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        let auxv: Vec<u8> = [33usize, 7, 6, 16384, 17, 250, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        assert_eq!(parse_auxv(&auxv), (Some(16384), Some(250)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_sane_figures() {
        let stats = ProcessStats::read().expect("/proc/self");
        assert!(stats.resident_bytes > 0, "{stats:?}");
        assert!(stats.virtual_bytes >= stats.resident_bytes, "{stats:?}");
        assert!(stats.open_fds.is_some_and(|n| n >= 3), "{stats:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 86_400.0,
            "{stats:?}"
        );
        let mut text = String::new();
        render(&mut text);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{text}");
        }
    }
}
