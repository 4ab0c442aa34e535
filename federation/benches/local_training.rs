//! Local DP-SGD training of one bank on each device: the per-example reference loop
//! (`cpu`), batched matrix products on the CPU's cores (`cpu-batched`), and an NVIDIA
//! GPU (`cuda:N`, in a build with the `gpu` feature).
//!
//! ```text
//! cargo bench -p quiver-federation --bench local_training
//! cargo bench -p quiver-federation --bench local_training --features gpu -- --devices cpu,cpu-batched,cuda:0
//! ```
//!
//! Each case trains with DP-SGD (per-example clipping, Gaussian noise, Poisson
//! sampling) on synthetic standardized rows. The time of one step is
//! `(T(k steps) − T(1 step)) / (k − 1)`, so the one-off costs of a round (uploading
//! nothing, the loss of the global model over every row) cancel out; `k` grows until
//! the run takes `--seconds`. The one-off cost of putting the rows on the device is
//! `setup`. Output: a table and one JSON line.

use std::time::Instant;

use quiver_federation::train::{Architecture, Dataset, Device, DpSgd, LocalConfig, LocalTrainer};
use rand::{Rng, SeedableRng};

mod common;
use common::arg;

/// Rows whose label depends on the features, so clipping and learning are realistic.
fn data(rows: usize, dim: usize, seed: u64) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut x = Vec::with_capacity(rows * dim);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let row: Vec<f32> = (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect();
        let z: f32 = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() / (dim as f32).sqrt();
        y.push(f32::from(u8::from(z + rng.random_range(-0.5..0.5) > 1.0)));
        x.extend(row);
    }
    Dataset::new((0..dim).map(|i| format!("f{i}")).collect(), x, y).expect("valid data")
}

fn seconds(t: &LocalTrainer, global: &[f32], cfg: &LocalConfig) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = Instant::now();
    t.train(global, cfg, &mut rng).expect("training runs");
    start.elapsed().as_secs_f64()
}

fn main() {
    let budget: f64 = arg("--seconds", "1.5").parse().expect("--seconds");
    let default_devices = if Device::GPU_BUILD {
        "cpu,cpu-batched,cuda:0"
    } else {
        "cpu,cpu-batched"
    };
    let devices: Vec<Device> = arg("--devices", default_devices)
        .split(',')
        .map(|d| d.parse().expect("--devices: cpu, cpu-batched, cuda:N"))
        .collect();
    // (model, features, expected batch). The first is the fraud example's model.
    let cases = [
        (Architecture::LogisticRegression, 12, 256),
        (Architecture::Mlp { hidden: 16 }, 12, 256),
        (Architecture::Mlp { hidden: 128 }, 64, 1024),
        (Architecture::Mlp { hidden: 1024 }, 256, 4096),
    ];
    println!(
        "{:<10} {:>5} {:>6} {:>9} {:>12} {:>9} {:>11} {:>12} {:>8}",
        "model", "dim", "batch", "params", "device", "setup_s", "ms/step", "examples/s", "speedup"
    );
    let mut rows = Vec::new();
    for (arch, dim, batch) in cases {
        let data = data(batch * 8, dim, 1);
        let global = arch.init(dim, 3);
        let mut cfg = {
            let mut c = LocalConfig::default();
            c.learning_rate = 0.1;
            c.local_steps = 1;
            c.batch_size = batch;
            c.prox_mu = 0.0;
            c.dp = Some(DpSgd {
                noise_multiplier: 1.0,
                clip_norm: 1.0,
            });
            c
        };
        let mut reference = None;
        for &device in &devices {
            let start = Instant::now();
            let t = match LocalTrainer::new(device, arch, data.clone()) {
                Ok(t) => t,
                Err(e) => {
                    println!("{device}: {e}");
                    continue;
                }
            };
            let setup = start.elapsed().as_secs_f64();
            cfg.local_steps = 1;
            let one = seconds(&t, &global, &cfg).max(seconds(&t, &global, &cfg));
            // Grow k until k steps take the time budget.
            let mut k = 2u64;
            let per_step = loop {
                cfg.local_steps = k;
                let tk = seconds(&t, &global, &cfg);
                let per = ((tk - one) / (k - 1) as f64).max(1e-7);
                if tk >= budget || k >= 100_000 {
                    break per;
                }
                k = (k * 2).max((budget / per) as u64).min(100_000);
            };
            let speedup = *reference.get_or_insert(per_step) / per_step;
            let name = match arch {
                Architecture::LogisticRegression => "lr".to_string(),
                Architecture::Mlp { hidden } => format!("mlp{hidden}"),
            };
            let params = arch.num_params(dim);
            println!(
                "{:<10} {:>5} {:>6} {:>9} {:>12} {:>9.3} {:>11.3} {:>12.0} {:>8.1}",
                name,
                dim,
                batch,
                params,
                device.to_string(),
                setup,
                per_step * 1e3,
                batch as f64 / per_step,
                speedup
            );
            rows.push(format!(
                "{{\"model\":\"{name}\",\"dim\":{dim},\"batch\":{batch},\"params\":{params},\"device\":\"{device}\",\"setup_s\":{setup:.4},\"step_ms\":{:.4},\"examples_per_s\":{:.0},\"speedup_vs_first\":{speedup:.2}}}",
                per_step * 1e3,
                batch as f64 / per_step
            ));
        }
    }
    println!(
        "{{\"bench\":\"local_training\",\"cores\":{},\"gpu_build\":{},\"rows\":[{}]}}",
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        Device::GPU_BUILD,
        rows.join(",")
    );
}
