//! Order statistics of measured samples, shared by the benches. Each sorts its input in place.

/// The median of `v` (0 for an empty slice).
pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `p`-th quantile of `v` (`p` in 0..=1), the nearest sample; 0 for an empty slice.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_sample() {
        let mut v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(median(&mut v), 3.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(percentile(&mut v, 1.0), 5.0);
        assert_eq!(percentile(&mut v, 0.99), 5.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
