//! The element types the solvers read and write. Every solver accumulates in f64; float32
//! input is only widened on read and narrowed on write.

pub trait Real: Copy + Send + Sync + PartialOrd + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    /// The slice itself where the elements are f64: for the kernels written for f64 alone.
    fn as_f64s(values: &[Self]) -> Option<&[f64]>;
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
    #[inline(always)]
    fn as_f64s(values: &[Self]) -> Option<&[f64]> {
        Some(values)
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
    #[inline(always)]
    fn as_f64s(_: &[Self]) -> Option<&[f64]> {
        None
    }
}
