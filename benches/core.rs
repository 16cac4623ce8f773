//! The Rust core alone, without Python: one solve per set at n = 64, 16384 and 1048576 (the
//! Wasserstein set, whose cost is n^2, at n = 256, 1024 and 4096 with 16-d features;
//! `cargo bench --bench core`, add `-- --quick` for a short run). The Python-side comparison
//! with the numpy baseline lives in benches/test_bench_core.py.

use std::hint::black_box;

use _core::{solve, Ambiguity, Budget, Geometry, Options};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::losses;

const SIZES: [usize; 3] = [64, 16384, 1 << 20];

fn sets() -> [(&'static str, Ambiguity, Budget); 6] {
    [
        ("kl radius", Ambiguity::Kl, Budget::Radius(0.1)),
        ("chi2 radius", Ambiguity::Chi2, Budget::Radius(0.5)),
        ("cvar alpha", Ambiguity::Cvar, Budget::Alpha(0.1)),
        ("tv radius", Ambiguity::Tv, Budget::Radius(0.1)),
        ("chi2 penalty", Ambiguity::Chi2, Budget::Penalty(1.0)),
        ("kl penalty", Ambiguity::Kl, Budget::Penalty(1.0)),
    ]
}

fn bench_sets(c: &mut Criterion) {
    for (name, ambiguity, budget) in sets() {
        let mut group = c.benchmark_group(name);
        for n in SIZES {
            let values = losses(n);
            let mut out = vec![0.0; n];
            let options = Options::new(ambiguity, budget);
            group.throughput(Throughput::Elements(n as u64));
            if n >= 1 << 20 {
                group.sample_size(10);
            }
            group.bench_with_input(BenchmarkId::from_parameter(n), &values, |b, values| {
                b.iter(|| solve(black_box(values.as_slice()), &options, &mut out).expect("valid problem"))
            });
        }
        group.finish();
    }
}

/// Wasserstein with features= in 16 dimensions: the n^2 costs, not the losses, set the pace.
fn bench_wasserstein(c: &mut Criterion) {
    let mut group = c.benchmark_group("wasserstein radius, features in 16-d");
    group.sample_size(10);
    for n in [256, 1024, 4096] {
        let stream = losses(17 * n);
        let (values, features) = stream.split_at(n);
        let mut options = Options::new(Ambiguity::Wasserstein, Budget::Radius(0.5));
        options.geometry = Some(Geometry::Features { data: features, dim: 16 });
        let mut out = vec![0.0; n];
        group.throughput(Throughput::Elements((n * n) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &values, |b, values| {
            b.iter(|| solve(black_box(*values), &options, &mut out).expect("valid problem"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sets, bench_wasserstein);
criterion_main!(benches);
