//! The views and the grid of one 5,000-point cloud, digit3d against a numpy twin of the method,
//! side by side in one run; then a batch of clouds on one core and on all of them.
//!
//! Run with `cargo bench --bench views` (the comparison needs python3 with numpy).

mod common;

use std::hint::black_box;

use digit3d::Point;
use digit3d::lift::{DIGIT_SIDE, Digit, LiftConfig, lift_digit};
use digit3d::rotation::{Angles, RotationDistribution};
use digit3d::views::{Boards, VIEW_SIZE, grid_side, write_grids};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const POINTS: usize = 5_000;
const BATCH: usize = 2_000;

/// A handwritten-like zero: a ring of lit pixels, about as many as a typical MNIST digit.
fn ring_digit() -> Digit {
    let centre = (DIGIT_SIDE as f32 - 1.0) / 2.0;
    let pixels = (0..DIGIT_SIDE * DIGIT_SIDE)
        .map(|i| {
            let (r, c) = ((i / DIGIT_SIDE) as f32 - centre, (i % DIGIT_SIDE) as f32 - centre);
            let d = ((r / 1.3).powi(2) + c.powi(2)).sqrt();
            if (5.0..8.0).contains(&d) { 1.0 } else { 0.0 }
        })
        .collect();
    Digit { label: 0, pixels }
}

/// The ring lifted densely enough for `POINTS` points, cut to exactly that many, and rotated.
fn bench_cloud(seed: u64) -> Vec<Point> {
    let config =
        LiftConfig { density: 16.0, rotation: RotationDistribution::None, ..LiftConfig::default() };
    let (mut cloud, _) = lift_digit(&ring_digit(), &config, &mut ChaCha8Rng::seed_from_u64(seed));
    assert!(cloud.len() >= POINTS, "the ring gave only {} points", cloud.len());
    // Drop points spread evenly over the cloud rather than its tail.
    let keep = cloud.len();
    cloud = (0..POINTS).map(|k| cloud[k * keep / POINTS]).collect();
    Angles::new(0.3 + seed as f64 * 0.01, -0.5, 1.1).rotation().rotate(&cloud)
}

fn compare_with_numpy(cloud: &[Point], rust_seconds: f64) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let cloud_path = dir.path().join("cloud.f32");
    let grid_path = dir.path().join("grid.u8");
    let bytes: Vec<u8> = cloud.as_flattened().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&cloud_path, bytes).expect("writing the cloud");

    match common::run_python("views_numpy.py", &[&cloud_path, &grid_path]) {
        Ok(result) => {
            let numpy = result["seconds_per_call"].as_f64().expect("seconds_per_call");
            let same = std::fs::read(&grid_path).ok().as_deref()
                == Some(Boards::from_cloud(cloud, VIEW_SIZE).grid().as_slice());
            println!(
                "  numpy {:<8}          {:>9.1} µs",
                result["numpy"].as_str().unwrap_or("?"),
                numpy * 1e6
            );
            println!(
                "  digit3d is {:.0}x faster (target: at least 50x); grids identical: {same}",
                numpy / rust_seconds
            );
        }
        Err(e) => println!("  numpy comparison skipped: {e}"),
    }
}

fn bench_batch() {
    let clouds: Vec<Vec<Point>> = (0..BATCH as u64).map(bench_cloud).collect();
    let refs: Vec<&[Point]> = clouds.iter().map(Vec::as_slice).collect();
    let area = grid_side(VIEW_SIZE).pow(2);
    let mut out = vec![0.0f32; BATCH * area];

    let serial = common::best_seconds(|| {
        let mut boards = Boards::new(VIEW_SIZE);
        for (cloud, grid) in refs.iter().zip(out.chunks_mut(area)) {
            boards.fill(cloud);
            boards.write_grid(grid, 1.0);
        }
        black_box(&out);
    });
    let parallel = common::best_seconds(|| {
        write_grids(black_box(&refs), VIEW_SIZE, &mut out);
        black_box(&out);
    });
    println!("\ngrids of {BATCH} clouds of {POINTS} points, as f32 network input");
    println!("  one core                {:>9.0} clouds/s", BATCH as f64 / serial);
    println!(
        "  {} threads (rayon)       {:>9.0} clouds/s  ({:.2}x)",
        rayon::current_num_threads(),
        BATCH as f64 / parallel,
        serial / parallel
    );
}

fn main() {
    let cloud = bench_cloud(0);
    let rust = common::best_seconds(|| {
        black_box(Boards::from_cloud(black_box(&cloud), VIEW_SIZE).grid());
    });
    let boards = Boards::from_cloud(&cloud, VIEW_SIZE);
    println!(
        "views + grid of one {POINTS}-point cloud ({}, {}, {} lit board pixels), one core",
        boards.lit_count(0),
        boards.lit_count(1),
        boards.lit_count(2)
    );
    println!("  digit3d                 {:>9.1} µs", rust * 1e6);
    let fill = common::best_seconds(|| {
        black_box(Boards::from_cloud(black_box(&cloud), VIEW_SIZE));
    });
    let grid = common::best_seconds(|| {
        black_box(black_box(&boards).grid());
    });
    println!("    of which boards       {:>9.1} µs", fill * 1e6);
    println!("    and grid from boards  {:>9.1} µs", grid * 1e6);
    compare_with_numpy(&cloud, rust);
    bench_batch();
}
