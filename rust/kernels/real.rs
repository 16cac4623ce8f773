//! The element types the solvers read and write. Every solver accumulates in f64; float32
//! input is only widened on read and narrowed on write.

/// f64 or f32, and no other: the AVX2 kernels (`cpu::avx2`) load a `Real` as one of the two.
pub trait Real: sealed::Sealed + Copy + Send + Sync + PartialOrd + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f64 {}
    impl Sealed for f32 {}
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
}
