//! One training step (forward, CurricularFace loss, backward, AdamW update) of a model on
//! random inputs, in samples per second; for Xception, side by side with Keras' Xception on
//! TensorFlow-CPU in the same run.
//!
//! Run with `cargo bench --bench train_step -- [xception|compact] [BATCH] [STEPS]` (default:
//! xception, batch 16, 4 steps). The comparison needs python3 with tensorflow-cpu.

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use digit3d::nn::curricular::{CurricularConfig, CurricularFace};
use digit3d::nn::layers::Phase;
use digit3d::nn::model::{Architecture, Model, ModelConfig};
use digit3d::train::optim::{AdamW, AdamWConfig};

fn main() {
    digit3d::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let architecture = match args.first().map(String::as_str) {
        Some("compact") => Architecture::Compact,
        _ => Architecture::Xception,
    };
    let batch: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(16);
    let steps: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(4);

    let config = ModelConfig::new(architecture);
    let model = Model::new(&config, 0, &Device::Cpu).expect("building the model");
    let mut optimizer = AdamW::new(model.params(), AdamWConfig::default()).expect("the optimiser");
    let mut loss = CurricularFace::new(CurricularConfig::default());
    let [c, h, w] = config.input.shape();
    let input = Tensor::rand(0f32, 1.0, (batch, c, h, w), &Device::Cpu)
        .and_then(|t| t.ge(0.9))
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .expect("an input");
    let labels = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
        batch,
        &Device::Cpu,
    )
    .expect("labels");

    let mut step = || {
        let cosines = model.cosines(&input, Phase::Train).expect("forward");
        let out = loss.loss(&cosines, &labels).expect("loss");
        optimizer.step(&out.loss.backward().expect("backward"), 1e-3).expect("update");
        loss.update_t(&out);
    };
    step();
    let started = Instant::now();
    for _ in 0..steps {
        step();
    }
    let ours = (batch * steps) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{architecture:?} training step, batch {batch}, input {c} x {h} x {w}, {} threads",
        rayon::current_num_threads()
    );
    println!("  digit3d (candle)        {ours:>8.2} samples/s");

    if architecture == Architecture::Xception {
        let batch_arg = batch.to_string();
        let steps_arg = steps.to_string();
        match common::run_python_args("train_step_tf.py", &[&batch_arg, &steps_arg]) {
            Ok(result) => {
                let theirs = result["samples_per_second"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "  TensorFlow {:<12} {theirs:>8.2} samples/s",
                    result["tensorflow"].as_str().unwrap_or("?")
                );
                println!(
                    "  digit3d runs at {:.2}x TensorFlow's throughput (target: at least 0.5x)",
                    ours / theirs
                );
            }
            Err(e) => println!("  TensorFlow comparison skipped: {e}"),
        }
    }
}
