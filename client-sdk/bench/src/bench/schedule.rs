//! Who sends what and when: splitting a message count among senders, and the
//! open-loop schedule of a fixed offered rate.

use std::time::Duration;

/// How many of `total` messages sender `index` of `senders` sends: an even share,
/// the first `total % senders` senders one more, so the shares add up to `total`.
pub(crate) fn share(total: usize, senders: usize, index: usize) -> usize {
    if senders == 0 || index >= senders {
        return 0;
    }
    total / senders + usize::from(index < total % senders)
}

/// A fixed offered rate: message `i` is due `i / rate` seconds after the start,
/// whenever the answers to earlier ones come (open loop), so a slow server cannot
/// slow the load down and hide its own latency.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateSchedule {
    per_sec: f64,
}

impl RateSchedule {
    /// `per_sec` messages per second; at least one per second.
    pub(crate) fn new(per_sec: f64) -> Self {
        Self {
            per_sec: per_sec.max(1.0),
        }
    }

    /// When message `i` (from 0) is due, from the start.
    pub(crate) fn due(&self, i: usize) -> Duration {
        Duration::from_secs_f64(i as f64 / self.per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, senders) in [(10, 3), (64, 64), (5, 16), (100_000, 7), (0, 4)] {
            let shares: Vec<usize> = (0..senders).map(|i| share(total, senders, i)).collect();
            assert_eq!(shares.iter().sum::<usize>(), total);
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1));
        }
        assert_eq!(share(10, 3, 0), 4);
        assert_eq!(share(10, 3, 2), 3);
        assert_eq!(share(10, 0, 0), 0);
        assert_eq!(share(10, 3, 3), 0);
    }

    #[test]
    fn messages_are_due_evenly_from_the_start() {
        let s = RateSchedule::new(5000.0);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_micros(200));
        assert_eq!(s.due(5000), Duration::from_secs(1));
        assert_eq!(s.due(24_999), Duration::from_micros(4_999_800));
    }

    #[test]
    fn a_rate_below_one_per_second_is_taken_as_one() {
        assert_eq!(RateSchedule::new(0.0).due(3), Duration::from_secs(3));
    }
}
