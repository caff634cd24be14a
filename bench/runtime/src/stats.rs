//! Percentiles over turn durations.

use std::time::Duration;

/// Nearest-rank percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Distribution {
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
    pub max: Duration,
}

impl Distribution {
    pub fn of(mut values: Vec<Duration>) -> Self {
        if values.is_empty() {
            return Distribution::default();
        }
        values.sort_unstable();
        let total: Duration = values.iter().sum();
        Distribution {
            p50: nearest_rank(&values, 50.0),
            p99: nearest_rank(&values, 99.0),
            mean: total / u32::try_from(values.len()).unwrap_or(u32::MAX),
            max: values[values.len() - 1],
        }
    }
}

/// The smallest value with at least `p` percent of the values at or below it. `sorted` is
/// non-empty and ascending.
fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals, for the tables.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let d = Distribution::of(values);
        assert_eq!(d.p50, Duration::from_millis(50));
        assert_eq!(d.p99, Duration::from_millis(99));
        assert_eq!(d.max, Duration::from_millis(100));
        let one = Distribution::of(vec![Duration::from_millis(7)]);
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
    }
}
