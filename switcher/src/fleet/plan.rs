//! Batches: how a strategy like `["1", "50%", "100%"]` splits a fleet.

use std::ops::Range;

/// One step of a strategy: how many hosts are flipped once it is done,
/// counted from the start of the push (so `["1", "50%", "100%"]` flips one
/// canary, then up to half the fleet, then the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Hosts(usize),
    Percent(u32),
}

impl std::str::FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a batch size: use a host count like \"1\" or a share like \"50%\"");
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Step::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Step::Hosts(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl Step {
    /// How many of `n` hosts are flipped once this step is done, before
    /// capping at `n`. A share rounds up, so 50% of 5 hosts is 3.
    pub fn reach(self, n: usize) -> usize {
        match self {
            Step::Hosts(k) => k,
            Step::Percent(p) => (n * p as usize).div_ceil(100),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Hosts(k) => write!(f, "{k}"),
            Step::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Splits `n` hosts into the strategy's batches, as index ranges. A share
/// rounds up, so 50% of 5 hosts is 3. Steps that add no host are dropped;
/// hosts a strategy does not reach form a last batch.
pub fn batches(n: usize, strategy: &[Step]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut done = 0;
    for step in strategy {
        let upto = step.reach(n).min(n);
        if upto > done {
            out.push(done..upto);
            done = upto;
        }
    }
    if done < n {
        out.push(done..n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Vec<Step> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn canary_then_halves() {
        let s = parse(&["1", "50%", "100%"]);
        assert_eq!(batches(4, &s), vec![0..1, 1..2, 2..4]);
        assert_eq!(batches(6, &s), vec![0..1, 1..3, 3..6]);
        assert_eq!(batches(5, &s), vec![0..1, 1..3, 3..5]);
        assert_eq!(batches(1, &s), vec![0..1]);
        assert_eq!(batches(2, &s), vec![0..1, 1..2]);
    }

    #[test]
    fn hosts_a_strategy_misses_form_a_last_batch() {
        assert_eq!(batches(5, &parse(&["2"])), vec![0..2, 2..5]);
        assert_eq!(batches(3, &[]), vec![0..3]);
    }

    #[test]
    fn a_step_reaches_its_count_or_its_share_rounded_up() {
        let s = parse(&["3", "50%", "100%"]);
        assert_eq!(s.iter().map(|s| s.reach(5)).collect::<Vec<_>>(), [3, 3, 5]);
        assert_eq!(s.iter().map(ToString::to_string).collect::<Vec<_>>(), ["3", "50%", "100%"]);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["0", "0%", "101%", "half", "-1", ""] {
            assert!(bad.parse::<Step>().is_err(), "{bad}");
        }
    }
}
