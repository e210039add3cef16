//! A parent's progress computed from its children (SPEC §3).
//!
//! Each child covers a phase of the parent, `phase_start..phase_end` percent;
//! children without a range share what the ranged children leave equally.
//! When every child has a range, the part before the earliest child's phase
//! (the pipeline's 0-5 % setup, say) follows the parent's own progress, and
//! the part after the ranges counts as not done: it belongs to phases whose
//! children do not exist yet (the pipeline's 80-100 % backtest while it is
//! still training). Counting that part as done made a pipeline read 57 %
//! while its only child, training at 43 %, stood for 5 + 0.43 × 75 ≈ 37 %.

use crate::model::Status;

/// One child's contribution: its percent done and its phase range, if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChildProgress {
    /// The child's percentage, 0-100.
    pub percentage: f64,
    /// Its phase range in percent of the parent.
    pub phase: Option<(f64, f64)>,
}

impl ChildProgress {
    /// A child's contribution from what is known of it: a completed child
    /// counts as 100 % whatever it last reported (its final progress write
    /// may say less).
    pub fn of(status: Status, percentage: f64, phase: Option<(f64, f64)>) -> ChildProgress {
        ChildProgress {
            percentage: if status == Status::Completed {
                100.0
            } else {
                percentage
            },
            phase,
        }
    }
}

/// A running parent's percentage from its children, `None` while it has
/// none (then its own progress stands). Once it has children its own part
/// (setup) counts as done. The one rule both the stored aggregate and the
/// live view use.
pub fn running_parent(children: &[ChildProgress]) -> Option<f64> {
    (!children.is_empty()).then(|| parent_percentage(100.0, children))
}

/// The parent's percentage from its own progress and its children's.
///
/// `own` is the progress of the parent's own part, the stretch before its
/// earliest ranged child (callers pass 100: a parent that has children has
/// finished its setup). Parts that no child covers after that count as 0
/// until the children for them are submitted.
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
        // Only what lies before the earliest phase is the parent's own part.
        let before = children
            .iter()
            .filter_map(|c| c.phase)
            .map(|(s, _)| s)
            .fold(f64::INFINITY, f64::min)
            .clamp(0.0, rest.max(0.0));
        total += before * own.clamp(0.0, 100.0) / 100.0;
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

    fn unranged(p: f64) -> ChildProgress {
        ChildProgress {
            percentage: p,
            phase: None,
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

    /// Issue 8 item 18a: while the pipeline trains (its backtest child does
    /// not exist yet), the parent is setup + the training's share, not
    /// setup + the training's share + the whole backtest phase.
    #[test]
    fn a_phase_without_its_child_yet_is_not_done() {
        let training = [ranged(43.0, 5.0, 80.0)];
        let got = parent_percentage(100.0, &training);
        assert!((got - (5.0 + 0.43 * 75.0)).abs() < 1e-9, "{got}");
        // Setup done, nothing trained yet.
        assert!((parent_percentage(100.0, &[ranged(0.0, 5.0, 80.0)]) - 5.0).abs() < 1e-9);
        // Training done, the backtest just submitted.
        let both = [ranged(100.0, 5.0, 80.0), ranged(0.0, 80.0, 100.0)];
        assert!((parent_percentage(100.0, &both) - 80.0).abs() < 1e-9);
        // A gap after the earliest phase is not the parent's own part.
        let gap = [ranged(100.0, 0.0, 40.0), ranged(0.0, 60.0, 100.0)];
        assert!((parent_percentage(100.0, &gap) - 40.0).abs() < 1e-9);
    }

    #[test]
    fn unranged_children_share_equally() {
        let kids = [unranged(100.0), unranged(50.0), unranged(0.0)];
        assert!((parent_percentage(0.0, &kids) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn a_completed_child_counts_whole_and_no_children_leave_the_parent_alone() {
        let done = ChildProgress::of(Status::Completed, 80.0, Some((0.0, 50.0)));
        assert_eq!(done.percentage, 100.0);
        assert_eq!(
            ChildProgress::of(Status::Running, 80.0, None).percentage,
            80.0
        );
        assert_eq!(running_parent(&[]), None);
        assert_eq!(
            running_parent(&[done, ranged(0.0, 50.0, 100.0)]),
            Some(50.0)
        );
    }

    #[test]
    fn mixed_ranges() {
        let kids = [ranged(100.0, 0.0, 40.0), unranged(50.0), unranged(0.0)];
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

        /// A pipeline's parent is exactly `phase_start + child% × width`
        /// summed over the children it has so far, plus its 5 % setup.
        #[test]
        fn pipeline_parent_follows_its_children(
            training in 0.0f64..=100.0,
            backtest in proptest::option::of(0.0f64..=100.0),
        ) {
            let mut kids = vec![ranged(training, 5.0, 80.0)];
            let mut want = 5.0 + training / 100.0 * 75.0;
            if let Some(b) = backtest {
                kids[0].percentage = 100.0;
                kids.push(ranged(b, 80.0, 100.0));
                want = 80.0 + b / 100.0 * 20.0;
            }
            let got = parent_percentage(100.0, &kids);
            proptest::prop_assert!((got - want).abs() < 1e-9, "{} vs {}", got, want);
        }
    }
}
