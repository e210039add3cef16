//! A parent's progress computed from its children (SPEC §3).
//!
//! Each child covers a phase of the parent, `phase_start..phase_end` percent;
//! children without a range share what the ranged children leave equally.
//! When every child has a range, the part of the parent no child covers
//! (the pipeline's 0-5 % setup, say) follows the parent's own progress.

/// One child's contribution: its percent done and its phase range, if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChildProgress {
    /// The child's percentage, 0-100.
    pub percentage: f64,
    /// Its phase range in percent of the parent.
    pub phase: Option<(f64, f64)>,
}

/// The parent's percentage from its own progress and its children's.
pub fn parent_percentage(own: f64, children: &[ChildProgress]) -> f64 {
    if children.is_empty() {
        return own.clamp(0.0, 100.0);
    }
    let ranged: f64 = children
        .iter()
        .filter_map(|c| c.phase)
        .map(|(s, e)| (e - s).max(0.0))
        .sum::<f64>()
        .min(100.0);
    let unranged = children.iter().filter(|c| c.phase.is_none()).count();
    let rest = 100.0 - ranged;
    let mut total = 0.0;
    for c in children {
        let done = c.percentage.clamp(0.0, 100.0) / 100.0;
        total += match c.phase {
            Some((s, e)) => (e - s).max(0.0) * done,
            None => rest / unranged as f64 * done,
        };
    }
    if unranged == 0 {
        total += rest * own.clamp(0.0, 100.0) / 100.0;
    }
    total.clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranged(p: f64, s: f64, e: f64) -> ChildProgress {
        ChildProgress {
            percentage: p,
            phase: Some((s, e)),
        }
    }

    #[test]
    fn pipeline_weights() {
        // Setup done (own 100 %), training half done, backtest not started.
        let kids = [ranged(50.0, 5.0, 80.0), ranged(0.0, 80.0, 100.0)];
        assert!((parent_percentage(100.0, &kids) - (5.0 + 37.5)).abs() < 1e-9);
        let done = [ranged(100.0, 5.0, 80.0), ranged(100.0, 80.0, 100.0)];
        assert_eq!(parent_percentage(100.0, &done), 100.0);
    }

    #[test]
    fn unranged_children_share_equally() {
        let kids = [
            ChildProgress {
                percentage: 100.0,
                phase: None,
            },
            ChildProgress {
                percentage: 50.0,
                phase: None,
            },
            ChildProgress {
                percentage: 0.0,
                phase: None,
            },
        ];
        assert!((parent_percentage(0.0, &kids) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn mixed_ranges() {
        let kids = [
            ranged(100.0, 0.0, 40.0),
            ChildProgress {
                percentage: 50.0,
                phase: None,
            },
            ChildProgress {
                percentage: 0.0,
                phase: None,
            },
        ];
        // 40 + 30 * 0.5 + 30 * 0.
        assert!((parent_percentage(0.0, &kids) - 55.0).abs() < 1e-9);
        assert_eq!(parent_percentage(42.0, &[]), 42.0);
    }

    proptest::proptest! {
        /// Whatever the children report, the parent stays within 0-100,
        /// and a child making progress never moves the parent backwards.
        #[test]
        fn aggregate_is_bounded_and_monotone(
            own in 0.0f64..=100.0,
            kids in proptest::collection::vec((0.0f64..=100.0, proptest::option::of((0.0f64..=50.0, 0.0f64..=50.0))), 1..6),
            which in 0usize..6,
            bump in 0.0f64..=100.0,
        ) {
            let children: Vec<ChildProgress> = kids
                .iter()
                .map(|(p, r)| ChildProgress { percentage: *p, phase: r.map(|(a, w)| (a, a + w)) })
                .collect();
            let before = parent_percentage(own, &children);
            proptest::prop_assert!((0.0..=100.0).contains(&before));
            let mut more = children.clone();
            let i = which % more.len();
            more[i].percentage = (more[i].percentage + bump).min(100.0);
            let after = parent_percentage(own, &more);
            proptest::prop_assert!(after + 1e-9 >= before, "{} -> {}", before, after);
        }
    }
}
