//! The element types the solvers read and write. Every solver accumulates in f64; float32
//! input is only widened on read and narrowed on write.

pub trait Real: Copy + Send + Sync + PartialOrd + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    /// Elements k..k + 4 widened to f64 (exactly, as `to_f64` does), for the AVX2 kernels.
    ///
    /// # Safety
    /// The processor supports AVX2, and k + 4 <= values.len().
    #[cfg(target_arch = "x86_64")]
    unsafe fn load4(values: &[Self], k: usize) -> std::arch::x86_64::__m256d;
}

impl Real for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(values: &[Self], k: usize) -> std::arch::x86_64::__m256d {
        std::arch::x86_64::_mm256_loadu_pd(values.as_ptr().add(k))
    }
}

impl Real for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load4(values: &[Self], k: usize) -> std::arch::x86_64::__m256d {
        use std::arch::x86_64::*;
        _mm256_cvtps_pd(_mm_loadu_ps(values.as_ptr().add(k)))
    }
}
