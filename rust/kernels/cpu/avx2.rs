//! The kernels written with AVX2 intrinsics, reached through `cpu::avx2()` only. Each does the
//! operations of its portable twin in the same order, so it gives the same bits: the scaled
//! losses four at a time (`load4`, `u4`; `Scale::u`), the active-set sums of the chi-square
//! solve (`sum_above`; `passes::sum_above`) and the scatter of the binned start (`scatter`;
//! `binned::scatter`).
//!
//! Every function here is `unsafe` for one reason the caller must vouch for, the processor's
//! AVX2 (a `cpu::Avx2` exists); the lengths they need are stated beside each and checked with
//! `debug_assert!`.

use std::any::TypeId;
use std::arch::x86_64::*;

use crate::kernels::batch::Scale;
use crate::kernels::binned::Moments;
use crate::kernels::passes::sum_in_order;
use crate::kernels::real::Real;

/// Losses a vector.
const LANES: usize = 4;

/// Elements k..k + 4 of `values` widened to f64, exactly as `Real::to_f64` widens them.
///
/// # Safety
/// The processor has AVX2, and k + 4 <= values.len().
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load4<T: Real>(values: &[T], k: usize) -> __m256d {
    debug_assert!(k + LANES <= values.len());
    let at = values.as_ptr().wrapping_add(k);
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32, and k + 4 <= values.len(): four f32 in bounds (unaligned load).
        unsafe { _mm256_cvtps_pd(_mm_loadu_ps(at.cast::<f32>())) }
    } else {
        // SAFETY: Real is sealed to f32 and f64, so T is f64; four f64 in bounds as above.
        unsafe { _mm256_loadu_pd(at.cast::<f64>()) }
    }
}

/// `Scale::u` of four losses, with the same operations in the same order: the same bits.
///
/// # Safety
/// The processor has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn u4(scale: &Scale, l: __m256d) -> __m256d {
    let (pre, max_pre, inv_range) = scale.parts();
    let shifted = _mm256_sub_pd(_mm256_mul_pd(l, _mm256_set1_pd(pre)), _mm256_set1_pd(max_pre));
    let u = _mm256_mul_pd(shifted, _mm256_set1_pd(inv_range));
    // f64::clamp(-1, 0): max_pd(a, b) is `if a > b { a } else { b }` (min_pd likewise), so with
    // the bound first, u passes through where it is within, -0 included.
    _mm256_min_pd(_mm256_setzero_pd(), _mm256_max_pd(_mm256_set1_pd(-1.0), u))
}

/// `passes::sum_above` on one chunk: element k to lane k mod 4 and the lanes added in order at
/// the end, as `passes::sum`'s columns do, and the terms by the same operations (float32 losses
/// widened first); the last losses of a chunk that are not a whole vector go through `term`
/// itself.
///
/// # Safety
/// The processor has AVX2. `weights`, where given, has at least `losses.len()` entries.
#[target_feature(enable = "avx2")]
pub unsafe fn sum_above<T: Real>(
    losses: &[T],
    weights: Option<&[f64]>,
    p_scale: f64,
    (scale, threshold, shift): (&Scale, f64, f64),
    term: &impl Fn(f64, f64) -> [f64; 5],
) -> [f64; 5] {
    debug_assert!(weights.map_or(true, |w| w.len() >= losses.len()));
    let (zero, one) = (_mm256_setzero_pd(), _mm256_set1_pd(1.0));
    let (threshold4, shift4, p_scale4) = (_mm256_set1_pd(threshold), _mm256_set1_pd(shift), _mm256_set1_pd(p_scale));
    let mut acc = [zero; 5];
    let whole = losses.len() - losses.len() % LANES;
    for k in (0..whole).step_by(LANES) {
        // SAFETY: AVX2 (this function's contract), and k + 4 <= whole <= losses.len().
        let u = unsafe { u4(scale, load4(losses, k)) };
        let p = match weights {
            None => p_scale4,
            // SAFETY: k + 4 <= losses.len() <= w.len() (this function's contract).
            Some(w) => _mm256_mul_pd(unsafe { _mm256_loadu_pd(w.as_ptr().add(k)) }, p_scale4),
        };
        let on = _mm256_and_pd(_mm256_cmp_pd(u, threshold4, _CMP_GT_OQ), _mm256_cmp_pd(p, zero, _CMP_GT_OQ));
        let (m, d) = (_mm256_and_pd(on, p), _mm256_sub_pd(u, shift4));
        let md = _mm256_mul_pd(m, d);
        let terms = [_mm256_and_pd(on, one), m, md, _mm256_mul_pd(md, d), _mm256_sub_pd(p, m)];
        for (a, t) in acc.iter_mut().zip(terms) {
            *a = _mm256_add_pd(*a, t);
        }
    }
    let mut lanes = [[0.0; LANES]; 5];
    for (lane, a) in lanes.iter_mut().zip(acc) {
        // SAFETY: a lane is four f64, the width of the unaligned store.
        unsafe { _mm256_storeu_pd(lane.as_mut_ptr(), a) };
    }
    for (j, k) in (whole..losses.len()).enumerate() {
        let p = weights.map_or(p_scale, |w| w[k] * p_scale);
        for (lane, t) in lanes.iter_mut().zip(term(losses[k].to_f64(), p)) {
            lane[j] += t;
        }
    }
    lanes.map(|lane| sum_in_order(&lane))
}

/// `binned::scatter` four losses at a time: their terms computed across the four (one vector a
/// term), transposed into one vector a loss, and each added to its bin with one load-add-store.
/// The same products and the same sums in the same order as `scatter`, so the same bits. Left
/// to the compiler, every loss's vector was assembled from scalars. Takes the whole vectors
/// only and returns how many losses that is: the caller scatters the rest.
///
/// # Safety
/// The processor has AVX2. `index` and `offset` have the same length, `weights` (where given)
/// at least that many entries, and every index is below histogram.len().
#[target_feature(enable = "avx2")]
pub unsafe fn scatter(
    histogram: &mut [Moments],
    index: &[u32],
    offset: &[f64],
    weights: Option<&[f64]>,
    p_scale: f64,
) -> usize {
    debug_assert_eq!(index.len(), offset.len());
    debug_assert!(weights.map_or(true, |w| w.len() >= offset.len()));
    debug_assert!(index.iter().all(|&i| (i as usize) < histogram.len()));
    let whole = offset.len() - offset.len() % LANES;
    let bins = histogram.as_mut_ptr().cast::<f64>();
    for k in (0..whole).step_by(LANES) {
        // SAFETY: k + 4 <= whole <= offset.len().
        let d = unsafe { _mm256_loadu_pd(offset.as_ptr().add(k)) };
        let p = match weights {
            None => _mm256_set1_pd(p_scale),
            // SAFETY: k + 4 <= offset.len() <= w.len() (this function's contract).
            Some(w) => _mm256_mul_pd(unsafe { _mm256_loadu_pd(w.as_ptr().add(k)) }, _mm256_set1_pd(p_scale)),
        };
        let pd = _mm256_mul_pd(p, d);
        let pd2 = _mm256_mul_pd(pd, d);
        let pd3 = _mm256_mul_pd(pd2, d);
        // Rows (p, pd, pd2, pd3) of four losses a, b, c, e into one vector a loss.
        let (low, high) = (_mm256_unpacklo_pd(p, pd), _mm256_unpackhi_pd(p, pd)); // [pa pda pc pdc], [pb pdb pe pde]
        let (low2, high2) = (_mm256_unpacklo_pd(pd2, pd3), _mm256_unpackhi_pd(pd2, pd3));
        let losses = [
            _mm256_permute2f128_pd(low, low2, 0x20),
            _mm256_permute2f128_pd(high, high2, 0x20),
            _mm256_permute2f128_pd(low, low2, 0x31),
            _mm256_permute2f128_pd(high, high2, 0x31),
        ];
        for (j, terms) in losses.into_iter().enumerate() {
            // SAFETY: k + j < whole <= index.len(); the index is below histogram.len() (this
            // function's contract), so the bin's four f64 are in bounds, and Moments is
            // 32-byte aligned, as the aligned load and store need.
            unsafe {
                let bin = bins.add(4 * *index.get_unchecked(k + j) as usize);
                _mm256_store_pd(bin, _mm256_add_pd(_mm256_load_pd(bin), terms));
            }
        }
    }
    whole
}
