//! Formatting readings as SSE events: the work the live fan-out does once
//! per committed reading, on the publisher thread, for every subscriber.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hub::live::format;

fn sse(c: &mut Criterion) {
    let prefix = format::reading_prefix("plant-3.line-2", "temperature", "°C");
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("format_1000_readings", |b| {
        let mut out = String::with_capacity(160_000);
        b.iter(|| {
            out.clear();
            for i in 0..1_000i64 {
                format::reading(
                    &mut out,
                    black_box(1_000_000 + i),
                    &prefix,
                    1_700_000_000_000 + i,
                    Some(21.5 + i as f64 * 0.01),
                );
            }
            black_box(out.len())
        });
    });
    group.bench_function("prefix", |b| {
        b.iter(|| {
            format::reading_prefix(
                black_box("plant-3.line-2"),
                black_box("temperature"),
                black_box("°C"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
