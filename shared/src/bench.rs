//! What every benchmark prints about the run besides its own figures
//! (README "Benchmarks", docs/benchmarks.md): the machine (cores, CPU
//! model, memory), the date, the load average while it ran, the CPU time
//! it used, and min / median / max of its samples.
//!
//! Benchmarks run on shared machines: a figure means little without the
//! load it was measured under, so [`LoadWatch`] samples `/proc/loadavg`
//! every second from the start of a run to its end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Min, median and max of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// The smallest sample.
    pub min: f64,
    /// The middle sample (the upper one of the two middle ones for an even count).
    pub median: f64,
    /// The largest sample.
    pub max: f64,
}

/// Min / median / max of `samples` (which must not be empty).
pub fn stats(samples: &[f64]) -> Stats {
    assert!(!samples.is_empty(), "no samples");
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Stats {
        min: s[0],
        median: s[s.len() / 2],
        max: s[s.len() - 1],
    }
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The machine, in one line: cores the process may use, CPU model, memory,
/// and the date (UTC).
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let sha_ni = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni"));
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "{cores} cores ({model}{}), {mem_gib:.0} GiB memory, {date}",
        if sha_ni { ", SHA-NI" } else { "" }
    )
}

/// CPU time (user + system) this process has used so far, its threads and
/// the child processes it waited for included.
pub fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // utime, stime, cutime, cstime: fields 14 to 17, the 12th to
            // 15th after the command name (which is in parentheses).
            let rest = stat.get(stat.rfind(')')? + 2..)?.to_string();
            rest.split_whitespace()
                .skip(11)
                .take(4)
                .map(|v| v.parse::<u64>().ok())
                .sum::<Option<u64>>()
        })
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

/// CPU time (user + system) process `pid` has used so far, its threads
/// included; zero when it is gone.
pub fn process_cpu(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // utime and stime: fields 14 and 15, the 12th and 13th after
            // the command name (which is in parentheses).
            let rest = stat.get(stat.rfind(')')? + 2..)?.to_string();
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .map(|v| v.parse::<u64>().ok())
                .sum::<Option<u64>>()
        })
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Samples the 1-minute load average every second until [`LoadWatch::stop`].
pub struct LoadWatch {
    samples: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The load average seen while a benchmark ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// The 1-minute load average when the run started.
    pub start: f64,
    /// Lowest and highest 1-minute load average sampled during the run.
    pub min: f64,
    /// See `min`.
    pub max: f64,
    /// The 1-minute load average when the run ended.
    pub end: f64,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "load average (1 min) {:.2} at the start, {:.2} to {:.2} during the run, {:.2} at the end",
            self.start, self.min, self.max, self.end
        )
    }
}

impl Load {
    /// As a JSON object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "start": self.start,
            "min": self.min,
            "max": self.max,
            "end": self.end,
        })
    }
}

impl LoadWatch {
    /// Starts sampling.
    pub fn start() -> LoadWatch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some([one, _, _]) = loadavg() {
                        samples.lock().unwrap_or_else(|p| p.into_inner()).push(one);
                    }
                    // Wake often enough to stop promptly.
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        };
        LoadWatch {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the load seen from the start until now.
    pub fn stop(mut self) -> Load {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut s = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some([one, _, _]) = loadavg() {
            s.push(one);
        }
        if s.is_empty() {
            s.push(f64::NAN);
        }
        let st = stats(&s);
        Load {
            start: s[0],
            min: st.min,
            max: st.max,
            end: s[s.len() - 1],
        }
    }
}

impl Drop for LoadWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_min_median_max() {
        let s = stats(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        let s = stats(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 4.0));
    }

    #[test]
    fn load_and_machine_are_read_from_proc() {
        let [one, five, fifteen] = loadavg().expect("/proc/loadavg");
        assert!(one >= 0.0 && five >= 0.0 && fifteen >= 0.0);
        let load = LoadWatch::start().stop();
        assert!(load.min <= load.max && load.min >= 0.0, "{load}");
        let m = machine();
        assert!(m.contains(" cores ("), "{m}");
    }
}
