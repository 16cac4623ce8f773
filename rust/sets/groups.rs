//! Ambiguity over groups (docs/method.md#groups): the set applies to the mixture over
//! groups. A group's loss is the p-weighted mean of its samples' losses and its reference mass
//! the sum of their p; the solver runs on the groups, and each sample gets its group's weight
//! shared in proportion to p inside the group.

use crate::error::{CoreError, Result};
use crate::kernels::batch::Reference;
use crate::kernels::real::Real;
use crate::sets::wasserstein::Geometry;

/// The group-level problem and the map back to samples.
pub struct Grouped {
    pub losses: Vec<f64>,
    pub mass: Vec<f64>,
    group_of: Vec<usize>,
}

/// Above this ratio of the largest label to the batch size, labels are looked up in a sorted
/// list instead of a dense table.
const DENSE_LABELS_PER_SAMPLE: usize = 4;

impl Grouped {
    pub fn new<T: Real>(losses: &[T], reference: &Reference, labels: &[i64]) -> Result<Self> {
        let n = losses.len();
        if labels.len() != n {
            return Err(CoreError::Groups(format!("groups has length {} but there are {n} losses", labels.len())));
        }
        let group_of = dense_indices(labels)?;
        let count = group_of.iter().max().map_or(0, |&g| g + 1);
        let mut mass = vec![0.0; count];
        for (i, &g) in group_of.iter().enumerate() {
            mass[g] += reference.at(i);
        }
        // The mean as sum (p / m) l, not (sum p l) / m: p l underflows for a tiny group, whose
        // mean would come out -0 where it is a tiny negative number.
        let mut means = vec![0.0; count];
        for (i, (&g, &l)) in group_of.iter().zip(losses).enumerate() {
            if mass[g] > 0.0 {
                means[g] += reference.at(i) / mass[g] * l.to_f64();
            }
        }
        // A mean of finite losses is finite; three losses at f64::MAX rounded over it.
        for mean in &mut means {
            *mean = mean.clamp(-f64::MAX, f64::MAX);
        }
        Ok(Grouped { losses: means, mass, group_of })
    }

    /// The Wasserstein geometry between groups: each group's features are the p-weighted mean
    /// of its samples' features (its centroid); a cost matrix becomes the p-weighted mean cost
    /// between the samples of two groups, zero on the diagonal (staying is free).
    pub fn geometry(&self, geometry: &Geometry, reference: &Reference) -> Result<GroupGeometry> {
        let (n, count) = (self.group_of.len(), self.mass.len());
        match *geometry {
            Geometry::Features { data, dim } => {
                if dim == 0 || data.len() != n * dim {
                    return Err(CoreError::Geometry(format!(
                        "features have {} values for {n} samples of dimension {dim}",
                        data.len()
                    )));
                }
                let mut centroids = vec![0.0; count * dim];
                for (i, (&g, row)) in self.group_of.iter().zip(data.chunks_exact(dim)).enumerate() {
                    let share = if self.mass[g] > 0.0 { reference.at(i) / self.mass[g] } else { 0.0 };
                    for (c, &x) in centroids[g * dim..(g + 1) * dim].iter_mut().zip(row) {
                        *c += share * x;
                    }
                }
                Ok(GroupGeometry::Features { data: centroids, dim })
            }
            Geometry::Cost(costs) => {
                if costs.len() != n * n {
                    return Err(CoreError::Geometry(format!("cost has {} entries; it needs {n} x {n}", costs.len())));
                }
                let mut between = vec![0.0; count * count];
                for (i, row) in costs.chunks_exact(n).enumerate() {
                    let (g, pi) = (self.group_of[i], reference.at(i));
                    for (j, &d) in row.iter().enumerate() {
                        let h = self.group_of[j];
                        if g != h && self.mass[g] > 0.0 && self.mass[h] > 0.0 {
                            between[g * count + h] += (pi / self.mass[g]) * (reference.at(j) / self.mass[h]) * d;
                        }
                    }
                }
                Ok(GroupGeometry::Cost(between))
            }
        }
    }

    /// q_i = Q_g p_i / P_g for the group weights Q.
    pub fn expand<T: Real>(&self, group_weights: &[f64], reference: &Reference, out: &mut [T]) {
        for (i, (o, &g)) in out.iter_mut().zip(&self.group_of).enumerate() {
            let m = self.mass[g];
            // Q (p / m), not (Q p) / m: Q p underflows for tiny groups.
            *o = T::from_f64(if m > 0.0 { group_weights[g] * (reference.at(i) / m) } else { 0.0 });
        }
    }
}

/// The ground metric between groups, owned (see `Grouped::geometry`).
pub enum GroupGeometry {
    Features { data: Vec<f64>, dim: usize },
    Cost(Vec<f64>),
}

impl GroupGeometry {
    pub fn view(&self) -> Geometry<'_> {
        match self {
            GroupGeometry::Features { data, dim } => Geometry::Features { data, dim: *dim },
            GroupGeometry::Cost(costs) => Geometry::Cost(costs),
        }
    }
}

/// Labels renumbered 0..G in order of their value.
fn dense_indices(labels: &[i64]) -> Result<Vec<usize>> {
    let mut max = 0_i64;
    for (i, &g) in labels.iter().enumerate() {
        if g < 0 {
            return Err(CoreError::Groups(format!("group labels must be non-negative, got {g} at index {i}")));
        }
        max = max.max(g);
    }
    let max = max as usize;
    if max < DENSE_LABELS_PER_SAMPLE * labels.len() + 16 {
        let mut table = vec![usize::MAX; max + 1];
        for &g in labels {
            table[g as usize] = 0;
        }
        for (next, slot) in table.iter_mut().filter(|s| **s == 0).enumerate() {
            *slot = next;
        }
        Ok(labels.iter().map(|&g| table[g as usize]).collect())
    } else {
        let mut distinct = labels.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        Ok(labels.iter().map(|g| distinct.binary_search(g).unwrap_or(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check_invariants, options, solve_f64};
    use crate::{Ambiguity, Budget, Options};

    #[test]
    fn a_group_at_the_largest_float_has_a_finite_mean() {
        let losses = [f64::MAX, f64::MAX, f64::MAX, 0.0];
        let groups = [7, 7, 7, 0];
        let opts = Options { groups: Some(&groups), ..options(Ambiguity::Tv, Budget::Radius(0.1)) };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, None, &q, &solution);
    }

    /// Found by fuzzing: p l underflowed in the tiny group's mean, which came out -0 and beat
    /// the true max -1e-289: all mass went to the smaller loss.
    #[test]
    fn a_tiny_group_keeps_its_mean() {
        let losses = [-1.2199999999999996e-222, -9.999999999999993e-290];
        let reference = [60.0, 1.0000000000000002e105];
        let groups = [5332262138243363469, 0];
        let opts = Options {
            reference: Some(&reference),
            groups: Some(&groups),
            ..options(Ambiguity::Tv, Budget::Radius(1e67))
        };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        assert_eq!(q, vec![0.0, 1.0]);
    }

    /// Found by fuzzing: a group of mass 1e-314 at the max sent kl through its log-space
    /// write, which rounded the sum of q to 1 - 5e-14 and V below the mean.
    #[test]
    fn a_subnormal_group_at_the_max_keeps_the_sum() {
        let losses = [1.0, 1.0000000000000002e104, 1.0000000000000002e104];
        let reference = [0.0, 1.0000000000000002e104, 9.999999999999997e-211];
        let groups = [8091279706313963190, 2021167143483240, 0];
        let opts = Options {
            reference: Some(&reference),
            groups: Some(&groups),
            ..options(Ambiguity::Kl, Budget::Radius(0.822265625))
        };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-15, "{q:?}");
        assert!(solution.value >= 1.0000000000000002e104 * (1.0 - 1e-15), "{solution:?}");
    }

    /// Found by fuzzing: a group of mass 1e-288 got weight 0 at radius 0, as Q p / m underflowed.
    #[test]
    fn a_tiny_group_keeps_its_weight() {
        let losses = [-1e23, -1.0000000000000005e288, 2.599999999999999e-160];
        let reference = [1.0, 1.0000000000000005e288, 0.0];
        let groups = [1903265726780051, 3, 0];
        let opts = Options {
            reference: Some(&reference),
            groups: Some(&groups),
            ..options(Ambiguity::Tv, Budget::Radius(0.0))
        };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        assert!((q[0] / 1e-288 - 1.0).abs() < 1e-12, "{q:?}");
    }
}
