//! Encoding and decoding a full-size and a typical batch.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use protocol::{Batch, DeviceFrame, Reading};

fn batch(readings: usize) -> DeviceFrame {
    DeviceFrame::Batch(Batch {
        seq: 123_456,
        base_ms: 1_700_000_000_000,
        readings: (0..readings)
            .map(|i| Reading {
                metric: (i % 5) as u16,
                offset_ms: i as u32 * 100,
                value: 20.0 + i as f64 / 7.0,
            })
            .collect(),
    })
}

fn frames(c: &mut Criterion) {
    for readings in [10, 100, 4_096] {
        let frame = batch(readings);
        let bytes = frame.encode();
        let mut group = c.benchmark_group(format!("batch_{readings}"));
        group.throughput(Throughput::Elements(readings as u64));
        group.bench_function("encode", |b| b.iter(|| black_box(&frame).encode()));
        group.bench_function("decode", |b| {
            b.iter(|| DeviceFrame::decode(black_box(&bytes)))
        });
        group.finish();
    }
}

criterion_group!(benches, frames);
criterion_main!(benches);
