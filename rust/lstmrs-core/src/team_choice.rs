//! Choosing between one thread and a team for the sweeps the static cost model cannot call.
//!
//! `packed_gemm::team_size` keeps every sweep below `TEAM_MIN_SWEEP_WORK` multiply-adds on one
//! thread. In that band a team of two is 1.3-1.6x faster when both cores are free (LSTM H=64,
//! B=32 on the idle 2-core VM: 7.6 against 11.9 us per step) and up to 3x slower when the
//! partner thread is preempted (the same shapes at a load average of 2-10), so no static table
//! fits both. Here each shape class measures instead: its first calls alternate between one
//! thread and the team, later calls take the size whose recent calls were faster per step, and
//! now and then a call runs the other size so that a change of load is noticed (after
//! [`REPROBE_EVERY`] calls, twice as long after each probe that confirms the choice).
//! Results are the same bits for every team size (`tests/determinism.rs`), so the choice only
//! changes speed.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Sweeps below this many multiply-adds keep one thread without measuring: forming a team whose
/// partner is busy costs up to the team's join wait (300 us), which a re-probe of a sweep this
/// small (about 90 us on one core) would not earn back.
pub(crate) const PROBE_MIN_SWEEP_WORK: usize = 1 << 24;

/// How long the first member of a measured sweep's team waits for its partner: a tenth of the
/// sweep's time on one thread (at about 95 multiply-adds per nanosecond, the AVX-512 step
/// product's speed), at least [`MIN_JOIN_WAIT`], at most the usual `threads::JOIN_WAIT`. A partner
/// that is running joins within microseconds (`examples/barrier_cost.rs`: 5-13 us from a
/// sleeping pool, calls 200 us apart, load 6); one that is preempted takes a scheduler time slice
/// (milliseconds), and waiting for it longer would only add to what a probe under load costs.
pub(crate) fn join_wait(sweep_work: usize) -> Duration {
    Duration::from_nanos((sweep_work / 950) as u64).clamp(MIN_JOIN_WAIT, crate::threads::JOIN_WAIT)
}

/// The shortest join wait of a measured sweep (see [`join_wait`]).
const MIN_JOIN_WAIT: Duration = Duration::from_micros(30);

/// Calls per shape class between two runs of the size not chosen, at first and after the choice
/// changes; every re-probe that confirms the choice doubles the interval, up to
/// [`MAX_REPROBE_EVERY`]. Under a load average of 8 a team whose partner is preempted took 240
/// instead of 9 us per step (`examples/team_cost.rs`, (32,100,8,64) LSTM): a probe that costs
/// 25 calls' time is worth making rarely while it keeps losing.
pub(crate) const REPROBE_EVERY: usize = 32;

/// The longest interval between re-probes (see [`REPROBE_EVERY`]).
pub(crate) const MAX_REPROBE_EVERY: usize = 1024;

/// Recent calls per size whose median decides.
const WINDOW: usize = 3;

/// Samples of each size the first calls collect (alternating) before a choice is made.
const FIRST_PROBES: usize = 2;

/// How much faster (per step, recent medians) than one thread a team must be to be chosen; one
/// thread takes over again as soon as it is faster at all. A team whose partner is busy
/// elsewhere forms short and runs alone, at one thread's speed plus its join wait (about 6% of a
/// (32,100,8,64) LSTM call), so with no margin the choice flipped on noise, every flip
/// re-probing sooner (`examples/call_spread.rs` at a load of 5: a team asked for in a third of
/// the calls, nearly all short); a team that works wins by 1.3-1.6x, far outside the margin.
const SWITCH_MARGIN: f64 = 0.85;

/// What a shape class has measured, and which team size its next call runs. Pure bookkeeping
/// (times are given to it), so the policy is tested with made-up timings.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// The team size tried against one thread.
    team: usize,
    /// Seconds per step of the latest calls, per size (index 0: one thread, 1: the team), oldest
    /// first.
    recent: [Vec<f64>; 2],
    /// Calls handed out so far.
    calls: usize,
    /// Calls between re-probes now, and the call of the next one.
    interval: usize,
    next_probe: usize,
    /// The preferred size when the re-probe in flight was handed out.
    probing: Option<usize>,
    /// The size chosen (1 until the team has been measured faster by [`SWITCH_MARGIN`]).
    chosen: usize,
}

/// The size a call runs, and whether its time is to be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pick {
    pub size: usize,
    /// False for a shape class's first call, which also pays for first touches of its buffers.
    pub record: bool,
}

impl Choice {
    pub(crate) fn new(team: usize) -> Self {
        Choice {
            team: team.max(2),
            recent: [Vec::new(), Vec::new()],
            calls: 0,
            interval: REPROBE_EVERY,
            next_probe: REPROBE_EVERY,
            probing: None,
            chosen: 1,
        }
    }

    fn size_of(&self, slot: usize) -> usize {
        if slot == 0 {
            1
        } else {
            self.team
        }
    }

    /// The median of a slot's recent samples (the mean of the middle two for an even count).
    fn typical(&self, slot: usize) -> Option<f64> {
        let mut v = self.recent[slot].clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if !n.is_multiple_of(2) {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    /// The size chosen: the team once its recent calls were faster than one thread's by
    /// [`SWITCH_MARGIN`], one thread again once its were faster at all (one thread until both
    /// were measured, and on a tie).
    pub(crate) fn preferred(&self) -> usize {
        self.chosen
    }

    /// [`Self::preferred`] after the latest samples.
    fn choose(&self) -> usize {
        let (Some(one), Some(team)) = (self.typical(0), self.typical(1)) else {
            return 1;
        };
        if self.chosen == 1 && team < SWITCH_MARGIN * one {
            self.team
        } else if self.chosen != 1 && one < team {
            1
        } else {
            self.chosen
        }
    }

    /// The team size of the next call.
    pub(crate) fn next(&mut self) -> Pick {
        self.calls += 1;
        if self.calls == 1 {
            return Pick {
                size: 1,
                record: false,
            };
        }
        let [one, team] = [self.recent[0].len(), self.recent[1].len()];
        let size = if one < FIRST_PROBES || team < FIRST_PROBES {
            // Alternate, the size with fewer samples first.
            self.size_of(usize::from(team < one))
        } else if self.calls >= self.next_probe && self.probing.is_none() {
            let chosen = self.preferred();
            self.probing = Some(chosen);
            if chosen == 1 {
                self.team
            } else {
                1
            }
        } else {
            self.preferred()
        };
        Pick { size, record: true }
    }

    /// Records a call that asked for `size` threads and took `per_step` seconds per step. It
    /// counts for the size asked for even when fewer threads joined: waiting for a partner that
    /// never came is part of what asking for a team costs.
    pub(crate) fn record(&mut self, size: usize, per_step: f64) {
        let before = self.preferred();
        let slot = &mut self.recent[usize::from(size > 1)];
        if slot.len() == WINDOW {
            slot.remove(0);
        }
        slot.push(per_step);
        self.chosen = self.choose();
        let after = self.preferred();
        let probed = self.probing.filter(|&chosen| chosen != size).is_some();
        if probed {
            self.probing = None;
        }
        if after != before {
            self.interval = REPROBE_EVERY;
        } else if probed {
            self.interval = (2 * self.interval).min(MAX_REPROBE_EVERY);
        } else {
            return;
        }
        self.next_probe = self.calls + self.interval;
    }
}

/// A shape class: which sweep (`site`), its sizes, and the team the cost model would form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ShapeClass {
    pub site: &'static str,
    pub gates: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
    /// `log2` of the step count: per-step times of much shorter sweeps carry more of the team's
    /// forming cost.
    pub steps_log2: u32,
    pub team: usize,
}

/// Shape classes kept at most; past it the table starts over (a process that keeps making new
/// shapes gains nothing from old ones).
const MAX_CLASSES: usize = 256;

static CHOICES: Mutex<Option<HashMap<ShapeClass, Choice>>> = Mutex::new(None);

/// The team size a sweep of `class` runs now (a probe or the choice).
pub(crate) fn pick(class: ShapeClass) -> Pick {
    let mut table = CHOICES.lock().unwrap_or_else(|e| e.into_inner());
    let table = table.get_or_insert_with(HashMap::new);
    if table.len() >= MAX_CLASSES && !table.contains_key(&class) {
        table.clear();
    }
    table
        .entry(class)
        .or_insert_with(|| Choice::new(class.team))
        .next()
}

/// Records how long a sweep of `class` that asked for `size` threads took for `steps` steps.
pub(crate) fn record(class: ShapeClass, size: usize, elapsed: Duration, steps: usize) {
    let mut table = CHOICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = table.as_mut().and_then(|t| t.get_mut(&class)) {
        c.record(size, elapsed.as_secs_f64() / steps.max(1) as f64);
    }
}

/// Whether sweeps in the band measure (`LSTMRS_TEAM_CHOICE=static` turns it off, leaving them
/// on one thread as the cost model says: for A/B timing of the two in one build).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LSTMRS_TEAM_CHOICE").map_or(true, |v| v != "static"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `calls` calls where one thread takes `one` and the team `team` seconds per step;
    /// returns the sizes run.
    fn drive(c: &mut Choice, calls: usize, one: f64, team: f64) -> Vec<usize> {
        (0..calls)
            .map(|_| {
                let p = c.next();
                if p.record {
                    c.record(p.size, if p.size == 1 { one } else { team });
                }
                p.size
            })
            .collect()
    }

    /// A two-thread choice after its first (unrecorded) call and 40 calls at these per-step
    /// times: settled on the faster size.
    fn settled(one: f64, team: f64) -> Choice {
        let mut c = Choice::new(2);
        c.next();
        drive(&mut c, 40, one, team);
        c
    }

    #[test]
    fn first_call_is_not_recorded_then_both_sizes_are_probed() {
        let mut c = Choice::new(2);
        assert_eq!(
            c.next(),
            Pick {
                size: 1,
                record: false
            }
        );
        let sizes = drive(&mut c, 2 * FIRST_PROBES, 1.0, 1.0);
        assert_eq!(sizes.iter().filter(|&&s| s == 1).count(), FIRST_PROBES);
        assert_eq!(sizes.iter().filter(|&&s| s == 2).count(), FIRST_PROBES);
    }

    #[test]
    fn keeps_the_faster_size_and_reprobes_the_other_rarely() {
        for (one, team, want) in [(11.9, 7.6, 2), (4.2, 5.7, 1)] {
            let mut c = Choice::new(2);
            c.next();
            drive(&mut c, 2 * FIRST_PROBES, one, team);
            let later = drive(&mut c, 16 * REPROBE_EVERY, one, team);
            // Each re-probe that confirms the choice doubles the interval to the next.
            let probes: Vec<usize> = (0..later.len()).filter(|&k| later[k] != want).collect();
            let gaps: Vec<usize> = probes.windows(2).map(|w| w[1] - w[0]).collect();
            assert_eq!(
                gaps,
                [2, 4, 8].map(|k| k * REPROBE_EVERY),
                "probes {probes:?}"
            );
            assert_eq!(c.preferred(), want);
            // ... up to its maximum.
            drive(&mut c, 20 * MAX_REPROBE_EVERY, one, team);
            assert_eq!(c.interval, MAX_REPROBE_EVERY);
        }
    }

    #[test]
    fn a_tie_keeps_one_thread() {
        let mut c = Choice::new(2);
        c.next();
        drive(&mut c, 20, 3.0, 3.0);
        assert_eq!(c.preferred(), 1);
    }

    #[test]
    fn follows_a_change_of_load_both_ways() {
        // Idle: the team wins.
        let mut c = settled(11.9, 7.6);
        assert_eq!(c.preferred(), 2);
        // The partner core gets busy: the team's calls slow down 3x; within a window of calls
        // the team's median passes one thread's and the choice falls back.
        let loaded = drive(&mut c, WINDOW + 1, 11.9, 23.0);
        assert_eq!(c.preferred(), 1);
        assert_eq!(*loaded.last().unwrap(), 1);
        // Idle again: only the re-probes see the team, WINDOW of them bring it back.
        drive(&mut c, (WINDOW + 1) * REPROBE_EVERY, 11.9, 7.6);
        assert_eq!(c.preferred(), 2);
    }

    #[test]
    fn sizes_within_the_margin_do_not_flip_the_choice() {
        // A team between the margin and one thread's speed, its median moved by noise: the
        // choice stays where it is, both ways.
        for (start_one, start_team, want) in [(11.9, 7.6, 2), (7.6, 11.9, 1)] {
            let mut c = settled(start_one, start_team);
            assert_eq!(c.preferred(), want);
            let mut sizes = Vec::new();
            for k in 0..400 {
                let wobble = if k % 2 == 0 { 0.96 } else { 0.88 };
                let p = c.next();
                sizes.push(p.size);
                c.record(p.size, if p.size == 1 { 10.0 } else { 10.0 * wobble });
            }
            assert_eq!(c.preferred(), want);
            // Only re-probes run the other size, and confirming ones stretch the interval.
            let other = sizes.iter().filter(|&&s| s != want).count();
            assert!(
                other <= 400 / REPROBE_EVERY,
                "{other} calls of the other size"
            );
        }
    }

    #[test]
    fn a_team_no_faster_than_one_thread_is_left_at_once() {
        let mut c = settled(11.9, 7.6);
        assert_eq!(c.preferred(), 2);
        // The partner stops joining: the team runs alone, a little slower than one thread.
        drive(&mut c, WINDOW - 1, 11.9, 12.5);
        assert_eq!(c.preferred(), 1);
    }

    #[test]
    fn one_slow_outlier_does_not_flip_the_choice() {
        let mut c = settled(11.9, 7.6);
        // A single preempted team call (a median of three ignores it).
        let p = c.next();
        assert_eq!(p.size, 2);
        c.record(2, 100.0);
        assert_eq!(c.preferred(), 2);
    }

    #[test]
    fn join_wait_is_a_tenth_of_the_sweep_within_bounds() {
        // (32,100,8,64) LSTM: 52M multiply-adds, about 0.55 ms on one thread.
        let w = join_wait(32 * 256 * 64 * 100);
        assert!(w > Duration::from_micros(50) && w < Duration::from_micros(60));
        assert_eq!(join_wait(PROBE_MIN_SWEEP_WORK / 16), MIN_JOIN_WAIT);
        assert_eq!(join_wait(usize::MAX), crate::threads::JOIN_WAIT);
    }

    #[test]
    fn a_team_size_above_two_is_kept() {
        let mut c = Choice::new(4);
        c.next();
        let sizes = drive(&mut c, 30, 10.0, 4.0);
        assert!(sizes.contains(&4) && !sizes.contains(&2));
        assert_eq!(c.preferred(), 4);
    }
}
