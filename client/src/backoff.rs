//! Exponential backoff with jitter between retries.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `first` up to `max`. Each delay is drawn from [delay/2, delay] so
/// that clients that failed together do not retry in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            current: first.max(Duration::from_millis(1)),
            max: max.max(first),
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = delay / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_max() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let bounds = [100, 200, 350, 350];
        for bound in bounds {
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_millis(bound), "{delay:?} > {bound}ms");
            assert!(delay >= Duration::from_millis(bound / 2), "{delay:?} < {bound}/2 ms");
        }
    }
}
