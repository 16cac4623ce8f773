//! The losses the Rust benchmarks and examples/rust/solve_loop.rs solve (a module, not a bench
//! target: cargo only takes benches/*.rs and benches/*/main.rs as targets).

/// Squared standard normals (REBEL's losses are squared residuals), from a fixed xorshift
/// stream and the Box-Muller transform.
pub fn losses(n: usize) -> Vec<f64> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let z = (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
            z * z
        })
        .collect()
}
