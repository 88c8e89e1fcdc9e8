//! How hard each frame of a delta is compressed.
//!
//! A delta is encoded once and shipped to every host, so its frames are worth
//! more CPU than a bundle's; but not level 19 on every op. On a dependency
//! bump that changes a thousand files, level 19 everywhere is most of the
//! encoding time. Measured on the delta benchmark's Django 4.2.10 → 5.0.14
//! bump (1,113 ops, 16 MB of content; CPU time of one core, the ops only):
//!
//! | ops compressed at | bytes | CPU |
//! |---|---|---|
//! | 19 | 815,257 | 2.18 s |
//! | 16 | 818,336 | 1.75 s |
//! | 9 | 899,365 | 0.21 s |
//! | a level-3 probe, then 16 or 9 ([`Levels::ByGain`]) | 846,119 | 0.71 s |
//!
//! What the optimal parser of levels 16 to 19 saves over level 9 is about a
//! tenth of the frame, wherever it runs, while its cost follows the bytes it
//! reads (the content and its reference). So it pays on the ops whose patch
//! is large for their size (many small changes: translation catalogs,
//! bytecode) and not on those that are nearly a copy of their reference. A
//! level-3 probe of each op tells which is which, for 2% of the work; ranking
//! the ops by their real gain for the CPU spent does no better than 840 KB at
//! 0.70 s.
//!
//! A delta whose ops hold little content (at most [`SMALL_DELTA`] bytes) is
//! level 19 throughout, as before: that costs a fraction of a second, and a
//! hot fix's or a patch release's delta keeps every byte it saved.
//!
//! The head (the target's manifest against the base's, 1.8 MB on the
//! benchmark release whatever changed) is level 16 with a search depth of 2
//! instead of 32: the same bytes within 0.5%, at half the CPU (0.09 s instead
//! of 0.19 s), since nearly every match is a whole run of manifest lines.

use std::io;

use ferry_formats::delta::{Compressor, Effort};

/// zstd level of every op of a small delta, where the CPU is affordable.
pub const LEVEL: i32 = 19;

/// The most content a delta's ops may hold for all of them to be compressed at [`LEVEL`].
pub const SMALL_DELTA: u64 = 1 << 20;

/// The probe: fast, and its size for the content's tells what a slower level would gain.
pub const PROBE_LEVEL: i32 = 3;

/// An op whose probe is at least this many thousandths of its content is
/// compressed at [`RICH_LEVEL`], any other at [`LEAN_LEVEL`].
pub const RICH_PER_MILLE: usize = 80;

/// The optimal parser's first level: within 0.4% of level 19's bytes on the
/// benchmark's bump, at 80% of its time.
pub const RICH_LEVEL: i32 = 16;

/// The last level before the binary-tree match finders: an eighth of level
/// 16's time, a tenth more bytes.
pub const LEAN_LEVEL: i32 = 9;

/// How the head frame is compressed.
pub const HEAD: Effort = Effort { level: 16, search_log: Some(1) };

/// How a delta's ops are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Levels {
    /// Every op at [`LEVEL`].
    Best,
    /// Each op at [`RICH_LEVEL`] or [`LEAN_LEVEL`], by its probe.
    ByGain,
}

impl Levels {
    /// The levels for a delta whose ops hold `content` bytes in all.
    pub fn for_content(content: u64) -> Self {
        if content <= SMALL_DELTA {
            Self::Best
        } else {
            Self::ByGain
        }
    }

    /// One op's frame: `content` with `reference` as zstd's prefix (empty for
    /// none), with a thread's compressor. The same input gives the same bytes,
    /// on any thread.
    pub fn compress<'p>(self, z: &mut Compressor<'p>, content: &[u8], reference: &'p [u8]) -> io::Result<Vec<u8>> {
        match self {
            Self::Best => z.compress(content, reference, LEVEL),
            Self::ByGain => {
                let probe = z.compress(content, reference, PROBE_LEVEL)?;
                let level = rich_or_lean(probe.len(), content.len());
                let frame = z.compress(content, reference, level)?;
                // A slower level is nearly always smaller; where it is not, keep the probe.
                Ok(if frame.len() <= probe.len() { frame } else { probe })
            }
        }
    }
}

/// The level for an op whose probe came to `probe` bytes of `content`.
fn rich_or_lean(probe: usize, content: usize) -> i32 {
    if probe.saturating_mul(1000) >= content.saturating_mul(RICH_PER_MILLE) {
        RICH_LEVEL
    } else {
        LEAN_LEVEL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_formats::delta;

    /// Deterministic pseudo-random bytes (xorshift), `n` of them.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Text-like content of `n` bytes: lines drawn from a small vocabulary.
    fn text(seed: u64, n: usize) -> Vec<u8> {
        let words = ["def ", "return ", "self", ".value", "(x)", " = ", "import ", "django", "\n", "    "];
        let picks = noise(seed, n);
        let mut out = Vec::with_capacity(n + 16);
        for p in picks {
            if out.len() >= n {
                break;
            }
            out.extend_from_slice(words[usize::from(p) % words.len()].as_bytes());
        }
        out.truncate(n);
        out
    }

    /// `old` with one byte in every `every` changed.
    fn edited(old: &[u8], every: usize) -> Vec<u8> {
        old.iter().enumerate().map(|(i, &b)| if i % every == every / 2 { b ^ 0x5a } else { b }).collect()
    }

    #[test]
    fn small_deltas_are_level_19_and_large_ones_by_gain() {
        assert_eq!(Levels::for_content(0), Levels::Best);
        assert_eq!(Levels::for_content(SMALL_DELTA), Levels::Best);
        assert_eq!(Levels::for_content(SMALL_DELTA + 1), Levels::ByGain);
        let (old, new) = (text(1, 20_000), edited(&text(1, 20_000), 997));
        assert_eq!(
            Levels::Best.compress(&mut Compressor::new(), &new, &old).unwrap(),
            delta::compress(&new, &old, LEVEL).unwrap()
        );
    }

    #[test]
    fn the_probe_picks_the_level_by_what_it_would_gain() {
        // Nearly a copy of its reference: a small probe, so the lean level.
        let old = text(2, 50_000);
        let copy = edited(&old, 5_000);
        let probe = delta::compress(&copy, &old, PROBE_LEVEL).unwrap();
        assert!(probe.len() * 1000 < copy.len() * RICH_PER_MILLE, "{} of {}", probe.len(), copy.len());
        assert_eq!(rich_or_lean(probe.len(), copy.len()), LEAN_LEVEL);
        let lean = delta::compress(&copy, &old, LEAN_LEVEL).unwrap();
        assert_eq!(Levels::ByGain.compress(&mut Compressor::new(), &copy, &old).unwrap(), lean);
        // Much changed: the rich level.
        let fresh = text(3, 50_000);
        let probe = delta::compress(&fresh, &[], PROBE_LEVEL).unwrap();
        assert_eq!(rich_or_lean(probe.len(), fresh.len()), RICH_LEVEL);
        let rich = delta::compress(&fresh, &[], RICH_LEVEL).unwrap();
        assert_eq!(Levels::ByGain.compress(&mut Compressor::new(), &fresh, &[]).unwrap(), rich);
        // The threshold itself.
        assert_eq!(rich_or_lean(80, 1000), RICH_LEVEL);
        assert_eq!(rich_or_lean(79, 1000), LEAN_LEVEL);
        assert_eq!(rich_or_lean(0, 0), RICH_LEVEL);
    }

    #[test]
    fn by_gain_is_deterministic_and_the_smaller_of_probe_and_picked_level() {
        let old = text(4, 40_000);
        // One compressor for every frame, as a thread of the encoder has.
        let mut z = Compressor::new();
        for (i, new) in [edited(&old, 300), edited(&old, 30), noise(5, 40_000), text(6, 40_000)].iter().enumerate() {
            let a = Levels::ByGain.compress(&mut z, new, &old).unwrap();
            let b = Levels::ByGain.compress(&mut Compressor::new(), new, &old).unwrap();
            assert_eq!(a, b, "case {i}: a fresh compressor and a used one differ");
            let probe = delta::compress(new, &old, PROBE_LEVEL).unwrap();
            assert!(a.len() <= probe.len(), "case {i}: {} > probe {}", a.len(), probe.len());
            // The frame of the level the probe picked, or the probe itself.
            let picked = delta::compress(new, &old, rich_or_lean(probe.len(), new.len())).unwrap();
            assert!(a == picked || a == probe, "case {i}: neither the picked level's frame nor the probe");
        }
    }
}
