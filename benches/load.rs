//! Loading a full-size training file (50,000 clouds of thousands of points) into memory as f32,
//! digit3d against h5py reading the same file into numpy arrays, side by side in one run, with
//! the peak memory of each.
//!
//! Run with `cargo bench --bench load` (the comparison needs python3 with h5py). The file is
//! made once under `target/bench-data/`; `DIGIT3D_BENCH_CLOUDS` sets how many clouds it holds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use digit3d::Point;
use digit3d::dataset::{CloudSet, LoadOptions, LoadReport, Role, Storage, write_clouds};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Set in the child process that does one timed load.
const CHILD: &str = "DIGIT3D_BENCH_LOAD_CHILD";

/// The bench file: `clouds` clouds of 2,000 to 5,000 points, made once.
fn bench_file(clouds: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-data");
    let path = dir.join(format!("train-{clouds}.h5"));
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("creating target/bench-data");
    println!("making {} ({clouds} clouds), once", path.display());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let data: Vec<Vec<Point>> = (0..clouds)
        .map(|_| {
            let n = rng.random_range(2_000..=5_000);
            (0..n).map(|_| [0, 1, 2].map(|_| rng.random_range(-0.75f32..0.75))).collect()
        })
        .collect();
    write_clouds(
        &path,
        data.iter().enumerate().map(|(id, c)| (id as u32, c.as_slice())),
        Storage::Plain,
    )
    .expect("writing the bench file");
    path
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// In the child: one load, reported as a JSON line.
fn child_load(path: &Path) {
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let set =
        CloudSet::load(Role::Train, path, None, LoadOptions::default(), &mut LoadReport::default())
            .expect("loading the bench file");
    let seconds = start.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "seconds": seconds,
        "clouds": set.len(),
        "points": set.points().len(),
        "base_kib": before,
        "peak_kib": status_kib("VmHWM:"),
    });
    println!("{json}");
}

fn run_child(path: &Path) -> serde_json::Value {
    let exe = std::env::current_exe().expect("the bench's own path");
    let output = Command::new(exe).env(CHILD, path).output().expect("running the load child");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the child's JSON")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if let Ok(path) = std::env::var(CHILD) {
        child_load(Path::new(&path));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let clouds =
        std::env::var("DIGIT3D_BENCH_CLOUDS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let path = bench_file(clouds);
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    // One untimed load of each to warm the page cache, then three alternating rounds.
    let _ = run_child(&path);
    let mut rust_runs = Vec::new();
    let mut python_runs = Vec::new();
    let mut last_rust = serde_json::Value::Null;
    let mut last_python = Err(String::new());
    let _ = common::run_python("load_h5py.py", &[&path]);
    for _ in 0..3 {
        last_rust = run_child(&path);
        rust_runs.push(last_rust["seconds"].as_f64().unwrap_or(f64::NAN));
        last_python = common::run_python("load_h5py.py", &[&path]);
        if let Ok(result) = &last_python {
            python_runs.push(result["seconds"].as_f64().unwrap_or(f64::NAN));
        }
    }

    let points = last_rust["points"].as_u64().unwrap_or(0);
    let payload_mib = (points * 12) as f64 / 1048576.0;
    let kib = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0) as f64 / 1024.0;
    let rust_extra = kib(&last_rust, "peak_kib") - kib(&last_rust, "base_kib");
    let rust_seconds = median(rust_runs);
    println!(
        "loading {} clouds, {points} points ({payload_mib:.0} MiB as f32, file {:.0} MiB), median of 3",
        last_rust["clouds"],
        file_bytes as f64 / 1048576.0
    );
    println!(
        "  digit3d   {rust_seconds:>7.2} s   peak memory above start {rust_extra:>6.0} MiB = {:.2}x the f32 payload (target: at most 1.5x)",
        rust_extra / payload_mib
    );
    match last_python {
        Ok(result) => {
            let python_seconds = median(python_runs);
            println!(
                "  h5py {:<5}{python_seconds:>7.2} s   peak memory of the process {:>6.0} MiB",
                result["h5py"].as_str().unwrap_or("?"),
                kib(&result, "peak_kib")
            );
            println!(
                "  digit3d is {:.2}x as fast as h5py (target: at least 1x)",
                python_seconds / rust_seconds
            );
        }
        Err(e) => println!("  h5py comparison skipped: {e}"),
    }
}
