//! Type-p Wasserstein ball over the batch support (docs/method.md#wasserstein): q is reachable from p by
//! a transport plan pi with sum_ij pi_ij c_ij <= rho^p, c_ij = d_ij^p. Targets are the support
//! of p (points with p_j = 0 never get mass); sources with p_i = 0 carry none.
//!
//! The dual  F(lam) = lam rho^p + sum_i p_i max_j (l_j - lam c_ij)  is convex and piecewise
//! linear in lam >= 0; every assignment sigma (source i -> target sigma(i)) gives a line
//!     h_sigma(lam) = lam (rho^p - C_sigma) + V_sigma,  C = sum_i p_i c_i,sigma(i),  V = sum_i p_i l_sigma(i),
//! below F, and F is their upper envelope. We minimise F exactly by a secant on that envelope:
//! keep an assignment `lo` with C > rho^p (F falls) and one `hi` with C < rho^p (F rises),
//! evaluate F where their lines cross, and stop when both are best there too (the crossing is
//! then the kink lam*: F(lam*) equals both lines); otherwise the new best assignment replaces
//! `lo` or `hi` by the sign of its slope. Each step is one pass over the costs. Once both ends
//! of the bracket are known, one pass also collects for every source the few targets that can
//! still be best between them (`Bracket`), and the later passes read only those: in all two or
//! three passes over the n^2 costs and a handful over the candidates. At the kink, switching sources one by one from `lo`'s target to `hi`'s lowers the
//! cost monotonically (a source's `lo` target is never the cheaper one); the source at which it
//! crosses rho^p splits its mass, so the plan meets the budget with equality, has at most
//! n + 1 entries and, both targets being best at lam*, is optimal (complementary slackness):
//! V* = sum_j q_j l_j = F(lam*).
//!
//! Ties between targets go to the cheapest one, the source itself first, then the lowest
//! index ("stay or nearest"). Hence lam* = 0 (a radius too large to bind) sends every point to
//! its nearest arg-max of the losses rather than sharing tied maxima in proportion to p, and the
//! penalised form (a fixed lam) moves a point only where that strictly pays.
//!
//! Zero distances between distinct points (duplicates) make moves free: even radius 0 then
//! moves mass to the largest loss among a point's duplicates, as the linear program over plans
//! does; without duplicates radius 0 gives q = p. The dual is then reported as infinity.

mod cost;

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::kernels::batch::{Batch, Scale};
use crate::kernels::real::Real;
use crate::{Budget, Outcome};
use cost::GroundCost;

/// Below this many cost entries a pass stays on one thread.
const PARALLEL_MIN_ENTRIES: usize = 1 << 15;

/// Cap on the passes of the secant; it stops at the exact kink after a handful.
const MAX_PASSES: u32 = 64;

/// Lanes of the row maximum: independent accumulators the compiler vectorises.
const LANES: usize = 8;

/// The ground metric between the samples.
#[derive(Clone, Copy, Debug)]
pub enum Geometry<'a> {
    /// Row-major n x dim features; d_ij is the Euclidean distance between rows i and j.
    Features { data: &'a [f64], dim: usize },
    /// Row-major n x n matrix of distances d_ij.
    Cost(&'a [f64]),
}

/// A transport plan in sparse form: mass[k] moves from source[k] to target[k]. Row sums are
/// the reference p, column sums the weights q; a point that stays has an entry (i, i, p_i).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub source: Vec<usize>,
    pub target: Vec<usize>,
    pub mass: Vec<f64>,
}

/// The worst-case weights over the Wasserstein ball (radius) or for a fixed dual variable lam
/// (penalty), and the transport plan from p to them.
pub fn solve<T: Real>(
    batch: &Batch<T>,
    geometry: &Geometry,
    order: f64,
    budget: Budget,
    tol: f64,
    out: &mut [T],
) -> Result<(Outcome, Plan)> {
    if !(order >= 1.0 && order.is_finite()) {
        return Err(CoreError::Budget(format!("the wasserstein type p must be a finite number >= 1, got {order}")));
    }
    let mut dual = Dual::new(batch, GroundCost::new(geometry, batch.len(), order)?);
    let (plan, lam, passes) = match budget {
        Budget::Radius(radius) => {
            let (plan, lam, passes) = dual.constrained(radius, tol);
            (plan, dual.to_loss_units(lam), passes)
        }
        Budget::Penalty(lam) => {
            let (plan, passes) = dual.penalised(lam);
            (plan, lam, passes)
        }
        Budget::Alpha(_) => return Err(CoreError::Budget("wasserstein takes a radius or a penalty, not alpha".into())),
    };
    let mut weights = vec![0.0; batch.len()];
    for (&j, &m) in plan.target.iter().zip(&plan.mass) {
        weights[j] += m;
    }
    let mut value = 0.0;
    for ((o, &q), &l) in out.iter_mut().zip(&weights).zip(batch.losses) {
        *o = T::from_f64(q);
        value += q * l.to_f64();
    }
    Ok((Outcome { value, dual: Some(lam), iterations: passes }, plan))
}

/// Each source's target and the scaled cost of that move. Sources off the support stay.
struct Assignment {
    target: Vec<usize>,
    cost: Vec<f64>,
}

impl Assignment {
    fn stay(n: usize) -> Self {
        Assignment { target: (0..n).collect(), cost: vec![0.0; n] }
    }
}

/// Per source, the targets that can still be best, ascending, with their costs.
type Candidates = Vec<Vec<(usize, f64)>>;

/// The targets a pass looks at.
#[derive(Clone, Copy)]
enum Scope<'s> {
    All,
    /// All, and collects for every row the targets that can still be best inside the bracket.
    Collect(Bracket<'s>),
    /// Only the targets collected before, per row.
    Among(&'s [Vec<(usize, f64)>]),
}

/// lo is best at lam_lo, hi at lam_hi, and every later pass evaluates F between them (where
/// their lines cross). A target whose line is below that of lo's target at both ends is
/// below it in between, so can never be best again; likewise for hi's. The survivors are
/// few once the bracket is narrow, and later passes look only at them.
#[derive(Clone, Copy)]
struct Bracket<'s> {
    lo: &'s Assignment,
    lam_lo: f64,
    hi: &'s Assignment,
    lam_hi: f64,
}

impl Bracket<'_> {
    /// Appends to `list` the targets of source i that survive; false when there are too many
    /// for the lists to pay (then the list is left incomplete).
    fn collect(&self, u: &[f64], row: &[f64], i: usize, list: &mut Vec<(usize, f64)>) -> bool {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::avx2().is_some() {
            // SAFETY: `cpu::avx2()` is Some: the processor has AVX2.
            return unsafe { self.collect_avx2(u, row, i, list) };
        }
        self.collect_portable(u, row, i, list)
    }

    /// # Safety
    /// The processor has AVX2 (`cpu::avx2()` is Some).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn collect_avx2(&self, u: &[f64], row: &[f64], i: usize, list: &mut Vec<(usize, f64)>) -> bool {
        self.collect_portable(u, row, i, list)
    }

    /// Blocks of `LANES` targets are tested at once (vectorised); only blocks with a survivor
    /// are looked at one by one.
    #[inline(always)]
    fn collect_portable(&self, u: &[f64], row: &[f64], i: usize, list: &mut Vec<(usize, f64)>) -> bool {
        let (a, b) = (self.lam_lo, self.lam_hi);
        let (k, ck) = (self.lo.target[i], self.lo.cost[i]);
        let (h, ch) = (self.hi.target[i], self.hi.cost[i]);
        let (ka, kb) = (u[k] - a * ck, u[k] - b * ck);
        let (ha, hb) = (u[h] - a * ch, u[h] - b * ch);
        let survives = |x: f64, c: f64| {
            let (va, vb) = (x - a * c, x - b * c);
            (va >= ka || vb >= kb) && (va >= ha || vb >= hb)
        };
        let limit = row.len() / 16 + 4;
        for (block, (us, cs)) in u.chunks(LANES).zip(row.chunks(LANES)).enumerate() {
            let mut any = false;
            for (&x, &c) in us.iter().zip(cs) {
                any |= survives(x, c);
            }
            if !any {
                continue;
            }
            for (k, (&x, &c)) in us.iter().zip(cs).enumerate() {
                if survives(x, c) {
                    if list.len() == limit {
                        return false;
                    }
                    list.push((block * LANES + k, c));
                }
            }
        }
        true
    }
}

/// The dual of one problem in scaled units: losses u in [-1, 0], costs c' in [0, 1].
struct Dual<'a> {
    cost: GroundCost<'a>,
    /// u_j on the support of p; -inf elsewhere, so those targets never win.
    u: Vec<f64>,
    /// p_i, normalised.
    mass: Vec<f64>,
    scale: Scale,
}

impl<'a> Dual<'a> {
    fn new<T: Real>(batch: &Batch<T>, cost: GroundCost<'a>) -> Self {
        let scale = batch.scale();
        let mass: Vec<f64> = (0..batch.len()).map(|i| batch.reference.at(i)).collect();
        let u = batch
            .losses
            .iter()
            .zip(&mass)
            .map(|(&l, &p)| if p > 0.0 { scale.u(l.to_f64()) } else { f64::NEG_INFINITY })
            .collect();
        Dual { cost, u, mass, scale }
    }

    /// The secant on the envelope of F (module docs). It stops when F at the crossing exceeds
    /// both lines by at most `tol` in all (in units of the loss range: the value is then within
    /// tol (max - min) of V*), or at an exact kink. Returns the plan, lam* in scaled units and
    /// the number of passes.
    fn constrained(&mut self, radius: f64, tol: f64) -> (Plan, f64, u32) {
        let budget = self.cost.budget(radius);
        let mut lo = self.assign_at_zero();
        if self.total_cost(&lo) <= budget {
            return (self.plan(&lo), 0.0, 1);
        }
        if budget == 0.0 {
            // Only free moves (between duplicates) remain: lam* = inf.
            return (self.plan(&self.assign(f64::INFINITY)), f64::INFINITY, 2);
        }
        // Several passes follow: computing the costs once pays.
        self.cost.cache();
        let mut hi = Assignment::stay(self.u.len());
        // lo is best at lam_lo; hi at lam_hi once a pass has found it (the first hi, staying
        // put, is best nowhere in particular).
        let (mut lam_lo, mut lam_hi) = (0.0, f64::INFINITY);
        let mut candidates: Option<Candidates> = None;
        let mut lam = 0.0;
        let mut passes = 1;
        while passes < MAX_PASSES {
            let (dv, dc) = self.differences(&lo, &hi);
            if dc.is_nan() || dc <= 0.0 {
                break;
            }
            lam = (dv / dc).clamp(lam_lo, lam_hi);
            let scope = match &candidates {
                Some(lists) => Scope::Among(lists),
                None if lam_hi.is_finite() => Scope::Collect(Bracket { lo: &lo, lam_lo, hi: &hi, lam_hi }),
                None => Scope::All,
            };
            let (x, collected) = self.assign_in(lam, scope);
            candidates = candidates.or(collected);
            passes += 1;
            if self.gap(lam, &x, &lo) + self.gap(lam, &x, &hi) <= tol {
                break;
            }
            let c = self.total_cost(&x);
            let (dv_lo, dc_lo) = self.differences(&x, &lo);
            let (dv_hi, dc_hi) = self.differences(&x, &hi);
            if (dv_lo == 0.0 && dc_lo == 0.0) || (dv_hi == 0.0 && dc_hi == 0.0) {
                // No new line: rounding, not a kink, kept the gap above tol.
                break;
            }
            if c > budget {
                (lo, lam_lo) = (x, lam);
            } else if c < budget {
                (hi, lam_hi) = (x, lam);
            } else {
                return (self.plan(&x), lam, passes);
            }
        }
        (self.split(&lo, &hi, budget), lam, passes)
    }

    /// A fixed lam (loss units per unit of cost): every source to its best target.
    fn penalised(&self, lam: f64) -> (Plan, u32) {
        let scaled = self.scale.to_u_units(lam) / self.cost.factor();
        (self.plan(&self.assign(if scaled.is_nan() { 0.0 } else { scaled })), 1)
    }

    /// lam in scaled units back in loss units per unit of true cost.
    fn to_loss_units(&self, lam: f64) -> f64 {
        if lam == 0.0 || lam.is_infinite() {
            lam
        } else {
            self.scale.to_loss_units(lam * self.cost.factor())
        }
    }

    /// The best assignment at lam = 0 without a pass over all costs: every source to its
    /// nearest arg-max of the losses (itself if it is one), as `best_target` would choose.
    fn assign_at_zero(&self) -> Assignment {
        let n = self.u.len();
        let top = self.u.iter().fold(f64::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        let maxima: Vec<usize> = (0..n).filter(|&j| self.u[j] == top).collect();
        let mut assignment = Assignment::stay(n);
        let nearest = |(i, (target, cost)): (usize, (&mut usize, &mut f64))| {
            if self.mass[i] > 0.0 && self.u[i] != top {
                for &j in &maxima {
                    let c = self.cost.entry(i, j);
                    if *target == i || c < *cost {
                        (*target, *cost) = (j, c);
                    }
                }
            }
        };
        let Assignment { target, cost } = &mut assignment;
        if n.saturating_mul(maxima.len()) >= PARALLEL_MIN_ENTRIES / 16 {
            target.par_iter_mut().zip(cost.par_iter_mut()).enumerate().for_each(nearest);
        } else {
            target.iter_mut().zip(cost.iter_mut()).enumerate().for_each(nearest);
        }
        assignment
    }

    /// One pass over the costs: each source's best target at lam (lam = inf: the best among
    /// the free moves), rows in parallel for large n.
    fn assign(&self, lam: f64) -> Assignment {
        self.assign_in(lam, Scope::All).0
    }

    /// A pass over the targets in `scope`; with `Scope::Collect`, also the candidate lists
    /// (None where they grew too long to pay).
    fn assign_in(&self, lam: f64, scope: Scope) -> (Assignment, Option<Candidates>) {
        let n = self.u.len();
        let mut assignment = Assignment::stay(n);
        let mut lists: Candidates = vec![Vec::new(); n];
        let too_long = AtomicBool::new(false);
        let rows_per_task = (PARALLEL_MIN_ENTRIES / n).max(1);
        type Chunk<'r> = ((&'r mut [usize], &'r mut [f64]), &'r mut [Vec<(usize, f64)>]);
        let work = |(task, ((targets, costs), lists)): (usize, Chunk)| {
            let full = !matches!(scope, Scope::Among(_));
            let mut buffer = vec![0.0; if full && self.cost.needs_buffer() { n } else { 0 }];
            for (k, ((target, cost), list)) in targets.iter_mut().zip(costs).zip(lists).enumerate() {
                let i = task * rows_per_task + k;
                if self.mass[i] == 0.0 {
                    continue;
                }
                if let Scope::Among(candidates) = scope {
                    (*target, *cost) = best_among(&self.u, &candidates[i], lam, i);
                    continue;
                }
                let row = self.cost.row(i, &mut buffer);
                let j =
                    if lam.is_finite() { best_target(&self.u, row, lam, i) } else { best_free_target(&self.u, row, i) };
                (*target, *cost) = (j, row[j]);
                if let Scope::Collect(bracket) = &scope {
                    if !too_long.load(Ordering::Relaxed) && !bracket.collect(&self.u, row, i, list) {
                        too_long.store(true, Ordering::Relaxed);
                    }
                }
            }
        };
        let Assignment { target, cost } = &mut assignment;
        let entries = match scope {
            Scope::Among(candidates) => candidates.iter().map(Vec::len).sum(),
            _ => n.saturating_mul(n),
        };
        if entries >= PARALLEL_MIN_ENTRIES {
            target
                .par_chunks_mut(rows_per_task)
                .zip(cost.par_chunks_mut(rows_per_task))
                .zip(lists.par_chunks_mut(rows_per_task))
                .enumerate()
                .for_each(work);
        } else {
            target
                .chunks_mut(rows_per_task)
                .zip(cost.chunks_mut(rows_per_task))
                .zip(lists.chunks_mut(rows_per_task))
                .enumerate()
                .for_each(work);
        }
        let collected = matches!(scope, Scope::Collect(_)) && !too_long.into_inner();
        (assignment, collected.then_some(lists))
    }

    /// C_sigma = sum_i p_i c_i,sigma(i).
    fn total_cost(&self, a: &Assignment) -> f64 {
        self.mass.iter().zip(&a.cost).map(|(&p, &c)| p * c).sum()
    }

    /// (V_a - V_b, C_a - C_b), summed row by row so that nearly equal assignments lose no
    /// digits to cancellation.
    fn differences(&self, a: &Assignment, b: &Assignment) -> (f64, f64) {
        let (mut dv, mut dc) = (0.0, 0.0);
        for (i, &p) in self.mass.iter().enumerate() {
            if p > 0.0 && a.target[i] != b.target[i] {
                dv += p * (self.u[a.target[i]] - self.u[b.target[i]]);
                dc += p * (a.cost[i] - b.cost[i]);
            }
        }
        (dv, dc)
    }

    /// F(lam) - h_other(lam) = sum_i p_i (best_i - other_i) >= 0 for the best assignment at
    /// lam: zero exactly when `other` is best there too. Each term is computed as in the pass,
    /// so a tie that the pass saw is an exact zero.
    fn gap(&self, lam: f64, best: &Assignment, other: &Assignment) -> f64 {
        let mut gap = 0.0;
        for (i, &p) in self.mass.iter().enumerate() {
            if p > 0.0 && best.target[i] != other.target[i] {
                let b = self.u[best.target[i]] - lam * best.cost[i];
                let o = self.u[other.target[i]] - lam * other.cost[i];
                gap += p * (b - o);
            }
        }
        gap
    }

    /// The plan that sends every source's mass to its target.
    fn plan(&self, a: &Assignment) -> Plan {
        let mut plan = Plan::default();
        for (i, &p) in self.mass.iter().enumerate() {
            if p > 0.0 {
                plan.source.push(i);
                plan.target.push(a.target[i]);
                plan.mass.push(p);
            }
        }
        plan
    }

    /// From `lo` (cost above the budget), switch sources in index order to their `hi` target
    /// (cost below) until the cost reaches the budget; the source where it crosses splits its
    /// mass so that the cost equals the budget.
    fn split(&self, lo: &Assignment, hi: &Assignment, budget: f64) -> Plan {
        let mut running = self.total_cost(lo);
        let mut plan = Plan::default();
        let mut push = |i: usize, j: usize, m: f64| {
            plan.source.push(i);
            plan.target.push(j);
            plan.mass.push(m);
        };
        let mut crossed = false;
        for (i, &p) in self.mass.iter().enumerate() {
            if p == 0.0 {
                continue;
            }
            let (far, near) = (lo.target[i], hi.target[i]);
            if crossed || far == near {
                push(i, if crossed { far } else { near }, p);
                continue;
            }
            let next = running - p * (lo.cost[i] - hi.cost[i]);
            if next <= budget {
                let kept = ((budget - next) / (running - next)).clamp(0.0, 1.0);
                if kept > 0.0 {
                    push(i, far, p * kept);
                }
                if kept < 1.0 {
                    push(i, near, p * (1.0 - kept));
                }
                crossed = true;
            } else {
                push(i, near, p);
                running = next;
            }
        }
        plan
    }
}

/// argmax_j u_j - lam c_j, ties to the cheapest target, the source itself first, then the
/// lowest index. The hot loop of every pass, compiled for AVX2 where the CPU has it (the
/// portable build assumes only SSE2; both round identically).
#[inline]
fn best_target(u: &[f64], costs: &[f64], lam: f64, source: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::avx2().is_some() {
        // SAFETY: `cpu::avx2()` is Some: the processor has AVX2.
        return unsafe { best_target_avx2(u, costs, lam, source) };
    }
    best_target_portable(u, costs, lam, source)
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn best_target_avx2(u: &[f64], costs: &[f64], lam: f64, source: usize) -> usize {
    best_target_portable(u, costs, lam, source)
}

/// A maximum in `LANES` independent lanes, then a second sweep of the row (now in cache) that
/// looks closer only at the blocks holding the maximum.
#[inline(always)]
fn best_target_portable(u: &[f64], costs: &[f64], lam: f64, source: usize) -> usize {
    let n = u.len().min(costs.len());
    let whole = n - n % LANES;
    let (u_blocks, u_tail) = u[..n].split_at(whole);
    let (c_blocks, c_tail) = costs[..n].split_at(whole);
    let mut lanes = [f64::NEG_INFINITY; LANES];
    for (us, cs) in u_blocks.chunks_exact(LANES).zip(c_blocks.chunks_exact(LANES)) {
        for k in 0..LANES {
            let v = us[k] - lam * cs[k];
            lanes[k] = if v > lanes[k] { v } else { lanes[k] };
        }
    }
    let mut best = lanes.iter().fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for (&x, &c) in u_tail.iter().zip(c_tail) {
        let v = x - lam * c;
        best = if v > best { v } else { best };
    }
    if best == f64::NEG_INFINITY {
        // Only targets off the support (u = -inf) match -inf: never move there.
        return source;
    }
    let (mut target, mut cheapest) = (source, f64::INFINITY);
    let mut consider = |j: usize, x: f64, c: f64| {
        if x - lam * c == best && (c < cheapest || (c == cheapest && j == source)) {
            target = j;
            cheapest = c;
        }
    };
    for (block, (us, cs)) in u_blocks.chunks_exact(LANES).zip(c_blocks.chunks_exact(LANES)).enumerate() {
        let mut hit = false;
        for k in 0..LANES {
            hit |= us[k] - lam * cs[k] == best;
        }
        if hit {
            for k in 0..LANES {
                consider(block * LANES + k, us[k], cs[k]);
            }
        }
    }
    for (k, (&x, &c)) in u_tail.iter().zip(c_tail).enumerate() {
        consider(whole + k, x, c);
    }
    target
}

/// `best_target` over a candidate list (ascending targets with their costs).
fn best_among(u: &[f64], list: &[(usize, f64)], lam: f64, source: usize) -> (usize, f64) {
    let best = list.iter().fold(f64::NEG_INFINITY, |m, &(j, c)| {
        let v = u[j] - lam * c;
        if v > m {
            v
        } else {
            m
        }
    });
    if best == f64::NEG_INFINITY {
        return (source, 0.0);
    }
    let (mut target, mut cheapest) = (source, f64::INFINITY);
    for &(j, c) in list {
        if u[j] - lam * c == best && (c < cheapest || (c == cheapest && j == source)) {
            target = j;
            cheapest = c;
        }
    }
    (target, cheapest)
}

/// The best target among the free moves (c = 0), the source itself first, then the lowest
/// index: the limit lam -> inf.
fn best_free_target(u: &[f64], costs: &[f64], source: usize) -> usize {
    let mut target = source;
    for (j, (&x, &c)) in u.iter().zip(costs).enumerate() {
        if c == 0.0 && x > u[target] {
            target = j;
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::cost::GroundCost;
    use super::*;
    use crate::testing::Rng;
    use crate::{Ambiguity, Options, Solution};

    fn solve_with<T: Real>(
        losses: &[T],
        geometry: Geometry,
        order: f64,
        budget: Budget,
        reference: Option<&[f64]>,
    ) -> (Vec<T>, Solution) {
        let mut options = Options::new(Ambiguity::Wasserstein, budget);
        options.geometry = Some(geometry);
        options.order = order;
        options.reference = reference;
        let mut out = vec![T::from_f64(f64::NAN); losses.len()];
        let solution = crate::solve(losses, &options, &mut out).expect("a valid problem");
        (out, solution)
    }

    fn line(points: &[f64]) -> Vec<f64> {
        points.iter().flat_map(|&a| points.iter().map(move |&b| (a - b).abs())).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn three_points_on_a_line_by_hand() {
        // Losses 0, 1, 3 at x = 0, 1, 2, p = 1, rho = 1/2. The best ratio of gain to cost moves
        // point 1 (gain 2 per unit) wholly to point 2 (cost 1/3), then 1/12 of point 0 there
        // (gain 3 for cost 2): q = (1/4, 0, 3/4), V* = 9/4 at lam* = 3/2.
        let features = [0.0, 1.0, 2.0];
        let (q, s) = solve_with(
            &[0.0, 1.0, 3.0],
            Geometry::Features { data: &features, dim: 1 },
            1.0,
            Budget::Radius(0.5),
            None,
        );
        for (a, b) in q.iter().zip([0.25, 0.0, 0.75]) {
            assert!(close(*a, b, 1e-14), "{q:?}");
        }
        assert!(close(s.value, 2.25, 1e-14));
        assert!(close(s.dual.unwrap(), 1.5, 1e-12), "{:?}", s.dual);
        let plan = s.plan.unwrap();
        assert_eq!(plan.source, vec![0, 0, 1, 2]);
        assert_eq!(plan.target, vec![2, 0, 2, 2]);
        // The same problem as a distance matrix, and with p = 2 on half-distances.
        let (q2, _) = solve_with(&[0.0, 1.0, 3.0], Geometry::Cost(&line(&features)), 1.0, Budget::Radius(0.5), None);
        assert!(q.iter().zip(&q2).all(|(a, b)| close(*a, *b, 1e-14)));
    }

    #[test]
    fn penalised_form_moves_only_where_it_pays() {
        // lam = 3/2: point 0 is tied between staying and moving to 2, and stays; point 1 moves.
        let (q, s) =
            solve_with(&[0.0, 1.0, 3.0], Geometry::Cost(&line(&[0.0, 1.0, 2.0])), 1.0, Budget::Penalty(1.5), None);
        assert_eq!(q, vec![1.0 / 3.0, 0.0, 2.0 / 3.0]);
        assert!(close(s.value, 2.0, 1e-15));
        assert_eq!(s.dual, Some(1.5));
        assert!(s.radius.is_none());
    }

    #[test]
    fn radius_zero_gives_the_reference_unless_points_coincide() {
        let losses = [0.3, -1.0, 2.0, 0.5];
        let features = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let (q, s) =
            solve_with(&losses, Geometry::Features { data: &features, dim: 2 }, 2.0, Budget::Radius(0.0), None);
        assert_eq!(q, vec![0.25; 4]);
        assert_eq!(s.dual, Some(f64::INFINITY));
        // Points 1 and 2 coincide: moving between them is free, so mass goes to the larger loss.
        let features = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let (q, s) =
            solve_with(&losses, Geometry::Features { data: &features, dim: 2 }, 1.0, Budget::Radius(0.0), None);
        assert_eq!(q, vec![0.25, 0.0, 0.5, 0.25]);
        assert!(close(s.value, (0.3 + 4.0 + 0.5) / 4.0, 1e-15));
    }

    #[test]
    fn a_radius_beyond_the_diameter_puts_all_mass_on_the_max() {
        let losses = [0.3, -1.0, 2.0, 0.5, 1.9];
        let distances = line(&[0.0, 3.0, 1.0, 7.0, 2.0]);
        for order in [1.0, 2.0, 3.5] {
            let (q, s) = solve_with(&losses, Geometry::Cost(&distances), order, Budget::Radius(7.0), None);
            assert_eq!(q, vec![0.0, 0.0, 1.0, 0.0, 0.0]);
            assert_eq!(s.value, 2.0);
            assert_eq!(s.dual, Some(0.0));
        }
    }

    #[test]
    fn flat_losses_and_a_single_point_stay() {
        let distances = line(&[0.0, 1.0, 5.0]);
        let (q, s) = solve_with(&[2.0; 3], Geometry::Cost(&distances), 1.0, Budget::Radius(1.0), None);
        assert_eq!(q, vec![1.0 / 3.0; 3]);
        assert_eq!(s.value, 2.0);
        let (q, _) = solve_with(&[2.0; 3], Geometry::Cost(&distances), 2.0, Budget::Penalty(1e-300), None);
        assert_eq!(q, vec![1.0 / 3.0; 3]);
        let (q, s) =
            solve_with(&[-7.0], Geometry::Features { data: &[1.0, 2.0], dim: 2 }, 1.0, Budget::Radius(3.0), None);
        assert_eq!(q, vec![1.0]);
        assert_eq!(s.value, -7.0);
    }

    #[test]
    fn points_off_the_support_neither_send_nor_receive() {
        let losses = [5.0, 0.0, 1.0, 9.0];
        let reference = [0.0, 1.0, 1.0, 0.0];
        let distances = line(&[0.0, 1.0, 2.0, 3.0]);
        let (q, s) = solve_with(&losses, Geometry::Cost(&distances), 1.0, Budget::Radius(10.0), Some(&reference));
        assert_eq!(q, vec![0.0, 0.0, 1.0, 0.0]);
        assert_eq!(s.plan.unwrap().source, vec![1, 2]);
    }

    #[test]
    fn float32_losses_agree_with_float64() {
        let mut rng = Rng::new(7);
        let n = 40;
        let losses: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        let features: Vec<f64> = (0..3 * n).map(|_| rng.uniform()).collect();
        let single: Vec<f32> = losses.iter().map(|&l| l as f32).collect();
        let wide: Vec<f64> = single.iter().map(|&l| l as f64).collect();
        let geometry = Geometry::Features { data: &features, dim: 3 };
        let (q32, s32) = solve_with(&single, geometry, 2.0, Budget::Radius(0.2), None);
        let (q64, s64) = solve_with(&wide, geometry, 2.0, Budget::Radius(0.2), None);
        assert_eq!(s32.value, s64.value);
        assert!(q32.iter().zip(&q64).all(|(&a, &b)| a == b as f32));
    }

    #[test]
    fn invalid_geometry_is_a_clear_error() {
        let mut out = [0.0; 2];
        let mut options = Options::new(Ambiguity::Wasserstein, Budget::Radius(1.0));
        let message = |options: &Options, out: &mut [f64]| match crate::solve(&[1.0, 2.0], options, out) {
            Err(CoreError::Geometry(m)) | Err(CoreError::Budget(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        };
        assert!(message(&options, &mut out).contains("features= (n x d) or cost="));
        let cases: [(Geometry, &str); 6] = [
            (Geometry::Features { data: &[0.0, 1.0, 2.0], dim: 2 }, "2 x 2"),
            (Geometry::Features { data: &[], dim: 0 }, "d = 0"),
            (Geometry::Features { data: &[0.0, f64::NAN], dim: 1 }, "finite"),
            (Geometry::Cost(&[0.0, 1.0, 1.0]), "2 x 2"),
            (Geometry::Cost(&[0.0, -1.0, 1.0, 0.0]), "non-negative"),
            (Geometry::Cost(&[0.5, 1.0, 1.0, 0.0]), "zero diagonal"),
        ];
        for (geometry, expected) in cases {
            options.geometry = Some(geometry);
            let m = message(&options, &mut out);
            assert!(m.contains(expected), "{m}");
        }
        options.geometry = Some(Geometry::Cost(&[0.0, 1.0, 1.0, 0.0]));
        for order in [0.5, f64::NAN, f64::INFINITY] {
            options.order = order;
            assert!(message(&options, &mut out).contains("p must be"));
        }
    }

    /// F(lam) = lam B + sum_i p_i max_j (l_j - lam c_ij) over the support, by brute force
    /// (lam = inf: only the free moves).
    fn dual_value(losses: &[f64], p: &[f64], c: &[f64], budget: f64, lam: f64) -> f64 {
        let n = losses.len();
        let mut total = if lam.is_finite() { lam * budget } else { 0.0 };
        for i in (0..n).filter(|&i| p[i] > 0.0) {
            let value = |j: usize| {
                if lam.is_finite() {
                    losses[j] - lam * c[i * n + j]
                } else if c[i * n + j] == 0.0 {
                    losses[j]
                } else {
                    f64::NEG_INFINITY
                }
            };
            total += p[i] * (0..n).filter(|&j| p[j] > 0.0).map(value).fold(f64::NEG_INFINITY, f64::max);
        }
        total
    }

    /// Costs c_ij = ||x_i - x_j||^p from row-major features.
    fn costs_of(features: &[f64], dim: usize, order: f64) -> Vec<f64> {
        let n = features.len() / dim;
        (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                let d2: f64 = (0..dim).map(|a| (features[i * dim + a] - features[j * dim + a]).powi(2)).sum();
                d2.sqrt().powf(order)
            })
            .collect()
    }

    /// A feasible plan whose value equals the dual at the reported lam is optimal (weak
    /// duality), so no reference solver is needed. Checks that, the plan's marginals and
    /// size, and that the budget binds where lam > 0.
    fn certify(losses: &[f64], p: &[f64], c: &[f64], budget: f64, q: &[f64], s: &Solution) {
        let n = losses.len();
        let plan = s.plan.clone().expect("a plan");
        assert!(plan.mass.len() <= n + 1);
        let (mut rows, mut columns, mut spent) = (vec![0.0; n], vec![0.0; n], 0.0);
        for ((&i, &j), &m) in plan.source.iter().zip(&plan.target).zip(&plan.mass) {
            assert!(m > 0.0 && p[i] > 0.0 && p[j] > 0.0);
            rows[i] += m;
            columns[j] += m;
            spent += m * c[i * n + j];
        }
        for i in 0..n {
            assert!((rows[i] - p[i]).abs() < 1e-15 && (columns[i] - q[i]).abs() < 1e-15);
        }
        assert!(spent <= budget * (1.0 + 1e-12) + 1e-300, "{spent} > {budget}");
        let range = losses.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            - losses.iter().cloned().fold(f64::INFINITY, f64::min);
        let lam = s.dual.expect("a dual variable");
        let dual = dual_value(losses, p, c, budget, lam);
        assert!((s.value - dual).abs() <= 1e-11 * (1.0 + range), "value {} dual {dual} lam {lam}", s.value);
        if lam > 0.0 && lam.is_finite() {
            assert!((spent - budget).abs() <= 1e-12 * budget, "the budget binds");
        }
    }

    #[test]
    fn random_problems_carry_an_optimality_certificate() {
        let mut rng = Rng::new(11);
        for case in 0..400 {
            let n = 1 + (rng.uniform() * 14.0) as usize;
            let dim = 1 + (rng.uniform() * 3.0) as usize;
            let order = [1.0, 2.0, 1.5][case % 3];
            let losses = rng.losses(n, 10.0);
            let raw = if case % 2 == 0 { rng.reference(n) } else { vec![1.0; n] };
            let total: f64 = raw.iter().sum();
            let p: Vec<f64> = raw.iter().map(|&w| w / total).collect();
            // Rounded features give duplicate points.
            let coarse = rng.uniform() < 0.3;
            let features: Vec<f64> = (0..n * dim)
                .map(|_| {
                    let x = rng.uniform() * 4.0;
                    if coarse {
                        x.round()
                    } else {
                        x
                    }
                })
                .collect();
            let c = costs_of(&features, dim, order);
            let diameter = c.iter().cloned().fold(0.0, f64::max).powf(1.0 / order);
            let radius = diameter * [0.0, 0.01, 0.1, 0.3, 0.7, 1.2][case % 6] * rng.uniform();
            let geometry = Geometry::Features { data: &features, dim };
            let (q, s) = solve_with(&losses, geometry, order, Budget::Radius(radius), Some(&raw));
            certify(&losses, &p, &c, radius.powf(order), &q, &s);
            assert!(s.iterations <= 20, "case {case}: {} passes", s.iterations);
            // The same value from the distance matrix, and the same costs, bit for bit, from the
            // cache, from rows computed on the fly and one by one.
            let distances: Vec<f64> = c.iter().map(|&x| x.powf(1.0 / order)).collect();
            let (_, from_matrix) =
                solve_with(&losses, Geometry::Cost(&distances), order, Budget::Radius(radius), Some(&raw));
            assert!((from_matrix.value - s.value).abs() <= 1e-11 * (1.0 + (s.value.abs())), "case {case}");
            let mut cached = GroundCost::new(&geometry, n, order).unwrap();
            cached.cache();
            let streamed = GroundCost::with_cache_limit(&geometry, n, order, 0).unwrap();
            let (mut b1, mut b2) = (vec![0.0; n], vec![0.0; n]);
            for i in 0..n {
                let row = streamed.row(i, &mut b2);
                assert_eq!(cached.row(i, &mut b1), row);
                assert!((0..n).all(|j| streamed.entry(i, j) == row[j] && cached.entry(i, j) == row[j]));
            }
            let matrix = Geometry::Cost(&distances);
            let mut cached = GroundCost::new(&matrix, n, order).unwrap();
            cached.cache();
            let streamed = GroundCost::with_cache_limit(&matrix, n, order, 0).unwrap();
            for i in 0..n {
                let row = streamed.row(i, &mut b2);
                assert_eq!(cached.row(i, &mut b1), row);
                assert!((0..n).all(|j| streamed.entry(i, j) == row[j]));
            }
        }
    }

    #[test]
    fn large_problems_use_candidate_lists_and_stay_exact() {
        let mut rng = Rng::new(3);
        let (n, dim) = (300, 16);
        let losses: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        let features: Vec<f64> = (0..n * dim).map(|_| rng.uniform()).collect();
        let p = vec![1.0 / n as f64; n];
        for (order, radius) in [(1.0, 0.05), (2.0, 0.3), (1.0, 0.5), (3.0, 1.0)] {
            let c = costs_of(&features, dim, order);
            let (q, s) =
                solve_with(&losses, Geometry::Features { data: &features, dim }, order, Budget::Radius(radius), None);
            certify(&losses, &p, &c, radius.powf(order), &q, &s);
            assert!(s.iterations <= 24, "{} passes", s.iterations);
        }
    }
}
