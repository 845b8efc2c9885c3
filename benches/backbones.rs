//! Backbone forward cost on the CPU backend: time and peak memory for one 16-frame clip, at
//! 224x224 and 112x112, for the presets that fit on a CPU (and tiny test configs).
//!
//! `cargo bench --bench backbones` prints a table; `-- --quick` runs 112x112 only.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use e2e_tal::backbone::resnet3d::{ResNet3dConfig, ResNetKind};
use e2e_tal::backbone::swin::SwinConfig;
use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::backbone::{Backbone, BackbonePreset, VideoBackbone};
use e2e_tal::memory::{self, CountingAllocator, mib};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn tiny(name: &str) -> Backbone {
    let d = e2e_tal::backend::device_from_args().expect("--backend");
    match name {
        "vit-tiny" => Backbone::Vit(
            VitConfig::new()
                .with_embed_dim(96)
                .with_depth(4)
                .with_num_heads(3)
                .with_mlp_dim(384)
                .init(&d),
        ),
        "swin-tiny" => Backbone::Swin(
            SwinConfig::new()
                .with_embed_dim(24)
                .with_depths(vec![2, 2, 2, 2])
                .with_num_heads(vec![1, 2, 4, 8])
                .init(&d),
        ),
        _ => Backbone::ResNet(
            ResNet3dConfig::new()
                .with_kind(ResNetKind::R3d)
                .with_widths(vec![16, 32, 64, 128])
                .with_layers(vec![1, 1, 1, 1])
                .init(&d),
        ),
    }
}

fn main() {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[112] } else { &[112, 224] };
    let device = e2e_tal::backend::device_from_args().expect("--backend");
    let mut rows: Vec<(String, Backbone)> = ["vit-tiny", "swin-tiny", "r3d-tiny"]
        .iter()
        .map(|n| (n.to_string(), tiny(n)))
        .collect();
    for p in [
        BackbonePreset::VitS,
        BackbonePreset::SwinT,
        BackbonePreset::R3d18,
        BackbonePreset::R2Plus1d18,
    ] {
        rows.push((p.name().to_string(), p.init(&device)));
    }
    println!(
        "\nBackbone forward, one clip of 16 frames, {}, f32, inference (no autodiff)\n",
        e2e_tal::backend::kind_from_args().map_or("?".into(), |k| k.to_string())
    );
    println!("| backbone | params (M) | input | forward (s) | peak activation memory (MiB) |");
    println!("|---|---|---|---|---|");
    for (name, model) in &rows {
        let params = model.num_params() as f64 / 1e6;
        // Untimed warm-up: first calls allocate thread pools and caches that then persist.
        let warm = Tensor::<5>::random([1, 3, 16, 112, 112], Distribution::Default, &device);
        let _ = model
            .forward(warm, &[])
            .expect("forward")
            .features
            .into_data();
        for &s in sizes {
            let x = Tensor::<5>::random([1, 3, 16, s, s], Distribution::Default, &device);
            let t = Instant::now();
            let (out, peak) = memory::measure_on(&device, || {
                let out = model.forward(x.clone(), &[]).expect("forward");
                // Read back so the (lazy) computation really runs inside the measurement.
                out.features.into_data()
            });
            let secs = t.elapsed().as_secs_f64();
            assert!(!out.as_slice::<f32>().unwrap().is_empty());
            let peak = peak.map_or("n/a".into(), mib);
            println!("| {name} | {params:.1} | 16x{s}x{s} | {secs:.2} | {peak} |");
        }
    }
}
