//! Holds idle-priority conversions while the rest of the machine keeps the
//! cores busy.
//!
//! `SCHED_IDLE` alone does not: on a machine whose producers keep both cores
//! nearly busy, a conversion still ran in every short gap and took 36% of
//! produce throughput (BENCHMARKS.md, tiering). So a conversion asks the
//! tierer's [`CpuGate`] between MiBs (and before its first). The gate reads
//! the machine's idle CPU time (Linux `/proc/stat`) at most every
//! [`GATE_SAMPLE`], adds the CPU time the conversions themselves used in
//! that window (they report their own threads' time, so tiering never holds
//! itself back), and while the sum is under [`GATE_MIN_IDLE_CORES`] it holds
//! every conversion. A held gate opens only after [`GATE_RESUME_SAMPLES`]
//! spare samples in a row: bursty producers leave single idle windows often.
//!
//! One gate serves all of a tierer's conversions, so back-to-back
//! conversions reuse its last sample and only the first after a quiet
//! spell ([`GATE_STALE`]) waits one window for a fresh one. Each conversion
//! waits at most its own budget in all, so a machine that is never idle
//! slows tiering down without stopping it (and a partition whose backlog
//! passes the idle limit converts at low priority, ungated).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often the gate looks at the machine's CPU time.
pub(crate) const GATE_SAMPLE: Duration = Duration::from_millis(100);
/// Idle CPU, in cores, that the rest of the machine must leave for an
/// idle-priority conversion to go on.
pub(crate) const GATE_MIN_IDLE_CORES: f64 = 0.5;
/// Spare samples in a row that a held gate needs before it opens.
pub(crate) const GATE_RESUME_SAMPLES: u32 = 3;
/// A last sample older than this says nothing about now: take a new one
/// before letting a conversion start.
pub(crate) const GATE_STALE: Duration = Duration::from_millis(500);

/// Machine-wide CPU time, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MachineTicks {
    /// Idle + iowait, every CPU.
    pub idle: u64,
    /// Every state, every CPU.
    pub total: u64,
}

impl MachineTicks {
    /// The first line of `/proc/stat`, and how many CPUs it covers.
    fn read() -> Option<(MachineTicks, usize)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        let v: Vec<u64> = lines
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8) // user nice system idle iowait irq softirq steal
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 5 {
            return None;
        }
        let cores = lines.filter(|l| l.starts_with("cpu")).count().max(1);
        Some((
            MachineTicks {
                idle: v[3] + v[4],
                total: v.iter().sum(),
            },
            cores,
        ))
    }
}

/// Fields `ns` (1-based, as in proc(5), ascending, from 3 on) of the
/// calling thread's `/proc/thread-self/stat`, as numbers, from one read.
pub(crate) fn thread_stat_fields<const N: usize>(ns: [usize; N]) -> Option<[u64; N]> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields 1-2 are the id and "(name)", and the name may hold spaces.
    let mut rest = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let mut at = 3;
    let mut out = [0; N];
    for (slot, n) in out.iter_mut().zip(ns) {
        *slot = rest.nth(n.checked_sub(at)?)?.parse().ok()?;
        at = n + 1;
    }
    Some(out)
}

/// CPU ticks (user + system) the calling thread has used.
fn own_ticks() -> Option<u64> {
    // utime and stime: fields 14 and 15.
    thread_stat_fields([14, 15]).map(|[u, s]| u + s)
}

/// What the gate tells a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Go,
    /// Ask again after this long.
    Wait(Duration),
}

/// The gate's decisions, apart from where its numbers come from (so that
/// tests can feed it).
#[derive(Debug, Default)]
pub(crate) struct GateState {
    /// The last sample: when, the machine's ticks, and `tier` then.
    last: Option<(Instant, MachineTicks, u64)>,
    /// Ticks the conversions have reported using, in all.
    tier: u64,
    /// The last sample was a new baseline: no decision until the next.
    baseline: bool,
    held: bool,
    spare_in_a_row: u32,
}

impl GateState {
    /// Counts CPU ticks a conversion thread used.
    pub(crate) fn report(&mut self, ticks: u64) {
        self.tier += ticks;
    }

    /// The verdict at `now`; `read` is called when a sample is due.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        cores: f64,
        read: impl FnOnce() -> Option<MachineTicks>,
    ) -> Option<Verdict> {
        let fresh = |at: Instant| now.saturating_duration_since(at);
        match self.last {
            Some((at, _, _)) if fresh(at) < GATE_SAMPLE => {
                let left = GATE_SAMPLE - fresh(at);
                Some(if self.held || self.baseline {
                    Verdict::Wait(left)
                } else {
                    Verdict::Go
                })
            }
            Some((at, prev, tier_then)) if fresh(at) < GATE_STALE => {
                let ticks = read()?;
                self.last = Some((now, ticks, self.tier));
                self.baseline = false;
                let total = ticks.total.saturating_sub(prev.total);
                if total == 0 {
                    return Some(Verdict::Wait(GATE_SAMPLE));
                }
                let idle = ticks.idle.saturating_sub(prev.idle);
                let spare = (idle + self.tier.saturating_sub(tier_then)).min(total) as f64
                    / total as f64
                    * cores;
                if spare >= GATE_MIN_IDLE_CORES {
                    self.spare_in_a_row += 1;
                    if !self.held || self.spare_in_a_row >= GATE_RESUME_SAMPLES {
                        self.held = false;
                        return Some(Verdict::Go);
                    }
                } else {
                    self.held = true;
                    self.spare_in_a_row = 0;
                }
                Some(Verdict::Wait(GATE_SAMPLE))
            }
            // No sample yet, or a stale one: start a window now and decide
            // at its end. Whether it was held says nothing about now.
            _ => {
                self.last = Some((now, read()?, self.tier));
                self.baseline = true;
                self.held = false;
                self.spare_in_a_row = 0;
                Some(Verdict::Wait(GATE_SAMPLE))
            }
        }
    }
}

/// One gate per tierer; see the module doc.
#[derive(Debug)]
pub(crate) struct CpuGate {
    /// `None` without `/proc/stat`: never gate.
    cores: Option<f64>,
    state: Mutex<GateState>,
}

impl CpuGate {
    pub(crate) fn new() -> Self {
        CpuGate {
            cores: MachineTicks::read().map(|(_, c)| c as f64),
            state: Mutex::new(GateState::default()),
        }
    }

    /// CPUs the machine's idle time is counted over.
    #[cfg(test)]
    pub(crate) fn cores(&self) -> usize {
        self.cores.unwrap_or(1.0) as usize
    }

    /// A conversion's use of the gate, on the conversion's own thread: it
    /// waits at most `max_wait` in all.
    pub(crate) fn pass(&self, max_wait: Duration) -> GatePass<'_> {
        GatePass {
            gate: self,
            own: own_ticks(),
            waited: Duration::ZERO,
            max_wait,
        }
    }
}

/// See [`CpuGate::pass`].
#[derive(Debug)]
pub(crate) struct GatePass<'a> {
    gate: &'a CpuGate,
    /// This thread's CPU ticks when last reported to the gate.
    own: Option<u64>,
    waited: Duration,
    max_wait: Duration,
}

impl GatePass<'_> {
    /// Returns at once while the gate is open; otherwise sleeps until it
    /// opens or this conversion's budget is used up. Returns how long it
    /// slept.
    pub(crate) fn wait(&mut self) -> Duration {
        let Some(cores) = self.gate.cores else {
            return Duration::ZERO;
        };
        let mut slept = Duration::ZERO;
        loop {
            let used = match (self.own, own_ticks()) {
                (Some(before), Some(now)) => {
                    self.own = Some(now);
                    now.saturating_sub(before)
                }
                _ => 0,
            };
            if self.waited >= self.max_wait {
                self.gate.state.lock().report(used);
                return slept;
            }
            let verdict = {
                let mut st = self.gate.state.lock();
                st.report(used);
                st.check(Instant::now(), cores, || {
                    MachineTicks::read().map(|(t, _)| t)
                })
            };
            match verdict {
                None | Some(Verdict::Go) => return slept,
                Some(Verdict::Wait(d)) => {
                    let d = d.min(self.max_wait - self.waited);
                    std::thread::sleep(d);
                    slept += d;
                    self.waited += d;
                }
            }
        }
    }
}

impl Drop for GatePass<'_> {
    /// Reports the CPU this conversion used since it last asked.
    fn drop(&mut self) {
        if let (Some(before), Some(now)) = (self.own, own_ticks()) {
            self.gate.state.lock().report(now.saturating_sub(before));
        }
    }
}
