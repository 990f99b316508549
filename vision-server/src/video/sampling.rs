//! Which frames of a video the model sees: the InternVL3.5 model card's `get_index`, with its
//! rounding (halves to even, as Python's `round` and `np.round` do) and its truncation.

/// The part of a clip to sample, in seconds (the card's `bound`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// Start, seconds.
    pub start_s: f64,
    /// End, seconds.
    pub end_s: f64,
}

impl Bound {
    /// The whole clip, as the card writes it (`-100000` to `100000` seconds).
    pub const WHOLE: Self = Self {
        start_s: -100_000.0,
        end_s: 100_000.0,
    };
}

/// The `segments` frame numbers (0-based, in decode order) the card picks from a clip of
/// `frames` frames at `fps` frames per second within `bound`: each segment's middle frame.
/// Empty when the clip has no frames or `segments` is 0.
pub fn frame_indices(frames: u64, fps: f64, segments: u32, bound: Bound) -> Vec<u64> {
    if frames == 0 || segments == 0 {
        return Vec::new();
    }
    let max_frame = (frames - 1) as f64;
    let start = (bound.start_s * fps).round_ties_even().max(0.0);
    let end = (bound.end_s * fps).round_ties_even().min(max_frame);
    let seg_size = (end - start) / f64::from(segments);
    (0..segments)
        .map(|i| {
            let index = start + seg_size / 2.0 + (seg_size * f64::from(i)).round_ties_even();
            // `int()` truncates toward zero; a bound past the clip's end could make it negative.
            index.trunc().clamp(0.0, max_frame) as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cards_example_picks_64_not_65() {
        // 96 frames, 8 segments: seg_size 11.875; np.round(59.375) = 59, so frame 64.
        assert_eq!(
            frame_indices(96, 30.0, 8, Bound::WHOLE),
            [5, 17, 29, 41, 53, 64, 76, 88]
        );
    }

    #[test]
    fn halves_round_to_even_and_int_truncates() {
        // 10 frames, 4 segments: seg_size 2.25; seg_size * i = 0, 2.25, 4.5, 6.75 -> 0, 2, 4, 7
        // (4.5 rounds to 4); + 1.125, truncated: 1, 3, 5, 8.
        assert_eq!(frame_indices(10, 25.0, 4, Bound::WHOLE), [1, 3, 5, 8]);
        // 6 frames, 4 segments: seg_size 1.25; 0, 1.25, 2.5, 3.75 -> 0, 1, 2, 4 (2.5 rounds
        // to 2); + 0.625: 0, 1, 2, 4.
        assert_eq!(frame_indices(6, 25.0, 4, Bound::WHOLE), [0, 1, 2, 4]);
    }

    #[test]
    fn fewer_frames_than_segments_repeat_frames() {
        // Checked against the card's code: 1.5 rounds to 2.
        assert_eq!(
            frame_indices(3, 30.0, 8, Bound::WHOLE),
            [0, 0, 0, 1, 1, 1, 2, 2]
        );
        assert_eq!(frame_indices(1, 30.0, 4, Bound::WHOLE), [0, 0, 0, 0]);
    }

    #[test]
    fn a_bound_samples_within_it() {
        // 10 s at 10 fps, seconds 2.05 to 4.05: round(20.5) = 20, round(40.5) = 40 (both even);
        // seg_size 5: 22.5 + 0, 5, 10, 15 -> 22, 27, 32, 37.
        let bound = Bound {
            start_s: 2.05,
            end_s: 4.05,
        };
        assert_eq!(frame_indices(100, 10.0, 4, bound), [22, 27, 32, 37]);
    }

    #[test]
    fn nothing_to_pick_from_gives_nothing() {
        assert!(frame_indices(0, 30.0, 8, Bound::WHOLE).is_empty());
        assert!(frame_indices(50, 30.0, 0, Bound::WHOLE).is_empty());
    }
}
