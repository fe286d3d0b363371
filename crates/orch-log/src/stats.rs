//! Statistics, value truncation and top-k over a host slice.

use crate::host::HostSlice;
use crate::line::Stats;

/// One pass over all values: min, max, mean, l2 and argmax of the finite values, plus NaN and
/// infinity counts. Accumulates in f64 so a 151,936-wide logits vector keeps its precision.
pub(crate) fn compute_stats(data: &HostSlice<'_>) -> Stats {
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    let mut argmax = None;
    let mut sum = 0.0f64;
    let mut sum_sq = 0.0f64;
    let mut finite = 0u64;
    let mut nan = 0u64;
    let mut inf = 0u64;
    data.for_each_f64(|i, v| {
        if v.is_nan() {
            nan += 1;
        } else if v.is_infinite() {
            inf += 1;
        } else {
            finite += 1;
            sum += v;
            sum_sq += v * v;
            min = min.min(v);
            // Strictly greater: ties keep the first index, as numpy and torch do.
            if v > max {
                max = v;
                argmax = Some(i as u64);
            }
        }
    });
    let any = finite > 0;
    Stats {
        min: any.then_some(min),
        max: any.then_some(max),
        mean: any.then(|| sum / finite as f64),
        l2: Some(sum_sq.sqrt()),
        argmax,
        nan: Some(nan),
        inf: Some(inf),
    }
}

/// A value as it is written to JSON: `None` (null) for NaN/±inf. Float data is rounded to the
/// shortest decimal that reads back as the same f32, so lines stay short (`0.036255`, not
/// `0.036254998296499252`) and lose nothing.
pub(crate) fn json_value(v: f64, is_float: bool) -> Option<f64> {
    if !v.is_finite() {
        return None;
    }
    if !is_float {
        return Some(v);
    }
    // `v` came from an f32 (or narrower) so the cast is exact; Display gives the shortest
    // round-tripping decimal, and parsing that as f64 keeps it shortest for serde_json's writer.
    let shortest = (v as f32).to_string();
    Some(shortest.parse::<f64>().unwrap_or(v))
}

/// The first `n` values in JSON form.
pub(crate) fn first_values(data: &HostSlice<'_>, n: usize) -> Vec<Option<f64>> {
    let n = n.min(data.len());
    (0..n)
        .filter_map(|i| data.get_f64(i))
        .map(|v| json_value(v, data.is_float()))
        .collect()
}

/// The `k` largest finite values as `(index, value)`, highest first; equal values keep the lower
/// index first. Keeps a sorted buffer of at most `k` entries, so it costs one pass over the data
/// and no allocation proportional to the vocabulary.
pub(crate) fn top_k(data: &HostSlice<'_>, k: usize) -> Vec<(u32, f64)> {
    let mut top: Vec<(u32, f64)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    data.for_each_f64(|i, v| {
        if !v.is_finite() {
            return;
        }
        if top.len() == k && top.last().is_some_and(|&(_, low)| v <= low) {
            return;
        }
        // Insert after every entry >= v: ties stay in index order because indices arrive ascending.
        let at = top.partition_point(|&(_, x)| x >= v);
        // Vocabulary indices fit u32; a longer slice would be a caller bug, so saturate rather
        // than wrap.
        top.insert(at, (u32::try_from(i).unwrap_or(u32::MAX), v));
        top.truncate(k);
    });
    let is_float = data.is_float();
    top.into_iter()
        .filter_map(|(id, v)| json_value(v, is_float).map(|v| (id, v)))
        .collect()
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`, without a date-time dependency.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the Unix epoch (days-to-civil algorithm by Howard Hinnant).
pub(crate) fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_by_hand() {
        let v = [1.0f32, -2.0, 3.0, 3.0, 0.5];
        let s = compute_stats(&HostSlice::from(&v));
        assert_eq!(s.min, Some(-2.0));
        assert_eq!(s.max, Some(3.0));
        assert_eq!(s.mean, Some(5.5 / 5.0));
        // 1 + 4 + 9 + 9 + 0.25 = 23.25
        assert_eq!(s.l2, Some(23.25f64.sqrt()));
        assert_eq!(s.argmax, Some(2), "first of the tied maxima");
        assert_eq!((s.nan, s.inf), (Some(0), Some(0)));
    }

    #[test]
    fn stats_skip_non_finite() {
        let v = [
            f32::NAN,
            2.0,
            f32::INFINITY,
            -4.0,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let s = compute_stats(&HostSlice::from(&v));
        assert_eq!((s.min, s.max, s.mean), (Some(-4.0), Some(2.0), Some(-1.0)));
        assert_eq!(s.l2, Some(20f64.sqrt()));
        assert_eq!(s.argmax, Some(1));
        assert_eq!((s.nan, s.inf), (Some(2), Some(2)));
    }

    #[test]
    fn stats_all_non_finite_or_empty() {
        let v = [f32::NAN, f32::INFINITY];
        let s = compute_stats(&HostSlice::from(&v));
        assert_eq!((s.min, s.max, s.mean, s.argmax), (None, None, None, None));
        assert_eq!((s.l2, s.nan, s.inf), (Some(0.0), Some(1), Some(1)));
        let empty: [f32; 0] = [];
        let s = compute_stats(&HostSlice::from(&empty));
        assert_eq!((s.min, s.argmax, s.nan), (None, None, Some(0)));
    }

    #[test]
    fn stats_of_half_types() {
        let v = [half::f16::from_f32(1.5), half::f16::from_f32(-0.25)];
        let s = compute_stats(&HostSlice::from(&v));
        assert_eq!((s.min, s.max, s.argmax), (Some(-0.25), Some(1.5), Some(0)));
        let b = [half::bf16::from_f32(2.0), half::bf16::from_f32(8.0)];
        let s = compute_stats(&HostSlice::from(&b));
        assert_eq!((s.mean, s.argmax), (Some(5.0), Some(1)));
    }

    #[test]
    fn values_are_shortest_f32_and_null_for_non_finite() {
        let v = [0.1f32, f32::NAN, -0.036255, f32::NEG_INFINITY, 7.0];
        let out = first_values(&HostSlice::from(&v), 4);
        assert_eq!(out, vec![Some(0.1), None, Some(-0.036255), None]);
        let ints = [16_777_217i32, -3];
        assert_eq!(
            first_values(&HostSlice::from(&ints), 10),
            vec![Some(16_777_217.0), Some(-3.0)],
            "i32 must not be squeezed through f32"
        );
    }

    #[test]
    fn top_k_order_ties_and_nan() {
        let v = [3.0f32, f32::NAN, 5.0, 3.0, f32::INFINITY, -1.0, 5.0, 4.0];
        let top = top_k(&HostSlice::from(&v), 4);
        assert_eq!(top, vec![(2, 5.0), (6, 5.0), (7, 4.0), (0, 3.0)]);
        assert!(top_k(&HostSlice::from(&v), 0).is_empty());
        let two = [1.0f32, 2.0];
        assert_eq!(top_k(&HostSlice::from(&two), 5), vec![(1, 2.0), (0, 1.0)]);
    }

    #[test]
    fn top_k_matches_full_sort() {
        // A deterministic pseudo-random vector, checked against sorting everything.
        let mut x = 12345u32;
        let v: Vec<f32> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((x >> 8) % 1000) as f32 / 10.0
            })
            .collect();
        let mut all: Vec<(u32, f64)> = v
            .iter()
            .enumerate()
            .map(|(i, &f)| (i as u32, f64::from(f)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<(u32, f64)> = all[..20]
            .iter()
            .map(|&(i, f)| (i, json_value(f, true).unwrap()))
            .collect();
        assert_eq!(top_k(&HostSlice::from(&v), 20), want);
    }

    #[test]
    fn utc_format() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        // 2026-11-27T00:00:00Z, the references' timestamp.
        assert_eq!(format_utc(1_795_737_600), "2026-11-27T00:00:00Z");
        assert_eq!(format_utc(951_825_599), "2000-02-29T11:59:59Z");
    }
}
