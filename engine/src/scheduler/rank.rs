//! Scores of one candidate node, each a small pure function. The final score
//! is the mean of the scores that apply (Nomad's score normalisation).

use crate::model::ComparableResources;

/// Nomad's binpacking ceiling: `20 - (10^0 + 10^0)` for an empty node.
const BINPACK_MAX_FIT_SCORE: f64 = 18.0;

/// 10^x, via `exp`, which is cheaper than `powf` for a constant base.
fn pow10(x: f64) -> f64 {
    (x * std::f64::consts::LN_10).exp()
}

/// Free fraction of one dimension after placing, clamped to [0, 1].
fn free_fraction(used: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        return 0.0;
    }
    (1.0 - used as f64 / capacity as f64).clamp(0.0, 1.0)
}

/// Nomad's bin-packing fit: `20 − (10^freeCpu + 10^freeMem)`, normalised to
/// [0, 1] by 18. Fuller nodes score higher.
pub(super) fn binpack_score(used: &ComparableResources, capacity: &ComparableResources) -> f64 {
    let total =
        pow10(free_fraction(used.cpu_mhz, capacity.cpu_mhz)) + pow10(free_fraction(used.memory_mb, capacity.memory_mb));
    ((20.0 - total) / BINPACK_MAX_FIT_SCORE).clamp(0.0, 1.0)
}

/// Nomad's spread fit: `(10^freeCpu + 10^freeMem) − 2`, normalised by 18.
/// Emptier nodes score higher.
pub(super) fn spread_fit_score(used: &ComparableResources, capacity: &ComparableResources) -> f64 {
    let total =
        pow10(free_fraction(used.cpu_mhz, capacity.cpu_mhz)) + pow10(free_fraction(used.memory_mb, capacity.memory_mb));
    ((total - 2.0) / BINPACK_MAX_FIT_SCORE).clamp(0.0, 1.0)
}

/// Job anti-affinity: `−(collisions + 1) / desired_count` when the node
/// already runs allocations of the same group; `None` (no score) otherwise.
pub(super) fn anti_affinity_score(collisions: u32, desired_count: u32) -> Option<f64> {
    (collisions > 0).then(|| -(f64::from(collisions) + 1.0) / f64::from(desired_count.max(1)))
}

/// Node affinity: sum of the weights of matching affinities over the sum of
/// absolute weights, in [−1, 1]; `None` when nothing matched.
pub(super) fn affinity_score(matched_weight_sum: i32, abs_weight_sum: i32) -> Option<f64> {
    (matched_weight_sum != 0 && abs_weight_sum != 0).then(|| f64::from(matched_weight_sum) / f64::from(abs_weight_sum))
}

/// Spread with targets: how far this value is below its desired share,
/// `(desired − used) / desired`, in [−1, 1]; −1 when the value has no share.
pub(super) fn spread_target_boost(used: u32, desired: f64) -> f64 {
    if desired <= 0.0 {
        return -1.0;
    }
    ((desired - f64::from(used)) / desired).clamp(-1.0, 1.0)
}

/// Even spread: 0 for values at the minimum count, down to −1 for values
/// far above it, so placements go to the least used values first.
pub(super) fn even_spread_boost(used: u32, min_used: u32, max_used: u32) -> f64 {
    if max_used == 0 || used <= min_used {
        return 0.0;
    }
    -(f64::from(used - min_used) / f64::from(max_used)).clamp(0.0, 1.0)
}

/// Mean of the applied scores.
pub(super) fn normalise(scores: &[f64]) -> f64 {
    if scores.is_empty() { 0.0 } else { scores.iter().sum::<f64>() / scores.len() as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn res(cpu: u64, mem: u64) -> ComparableResources {
        ComparableResources { cpu_mhz: cpu, memory_mb: mem, disk_mb: 0, cores: 0 }
    }

    #[test]
    fn binpack_prefers_fuller_nodes() {
        let cap = res(4000, 8192);
        let table: Vec<String> = [(0, 0), (1000, 2048), (2000, 4096), (4000, 8192)]
            .iter()
            .map(|&(c, m)| {
                format!(
                    "{c:>4} {m:>4} binpack={:.3} spread={:.3}",
                    binpack_score(&res(c, m), &cap),
                    spread_fit_score(&res(c, m), &cap)
                )
            })
            .collect();
        expect![[r#"
               0    0 binpack=0.000 spread=1.000
            1000 2048 binpack=0.486 spread=0.514
            2000 4096 binpack=0.760 spread=0.240
            4000 8192 binpack=1.000 spread=0.000"#]]
        .assert_eq(&table.join("\n"));
    }

    #[test]
    fn small_scores() {
        assert_eq!(anti_affinity_score(0, 3), None);
        assert_eq!(anti_affinity_score(2, 3), Some(-1.0));
        assert_eq!(affinity_score(50, 100), Some(0.5));
        assert_eq!(affinity_score(0, 100), None);
        assert_eq!(spread_target_boost(0, 7.0), 1.0);
        assert_eq!(spread_target_boost(7, 7.0), 0.0);
        assert_eq!(spread_target_boost(3, 0.0), -1.0);
        assert_eq!(even_spread_boost(2, 2, 5), 0.0);
        assert_eq!(even_spread_boost(5, 2, 5), -0.6);
        assert_eq!(normalise(&[1.0, 0.0, -0.5]), 0.5 / 3.0);
    }
}
