//! Helpers shared by the benchmarks: steady timing and running the Python twins.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The seconds per call of `f` in the fastest of 7 rounds of about 0.2 s each: the least
/// disturbed by whatever else the machine is doing.
pub fn best_seconds(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed().as_secs_f64() < 0.2 {
        f();
        calls += 1;
    }
    let rounds: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() / f64::from(calls)
        })
        .collect();
    rounds.into_iter().fold(f64::INFINITY, f64::min)
}

/// The Python interpreter to compare with: `DIGIT3D_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("DIGIT3D_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs `python3 SCRIPT ARGS...` (the script relative to `benches/`) with one thread for the
/// numeric libraries, and parses the JSON line it prints.
pub fn run_python(script: &str, args: &[&Path]) -> Result<serde_json::Value, String> {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    python_json(script, &args, true)
}

/// Runs `python3 SCRIPT ARGS...` with the libraries free to use every core, and parses the JSON
/// line it prints.
pub fn run_python_args(script: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    python_json(script, &args, false)
}

fn python_json(
    script: &str,
    args: &[&OsStr],
    one_thread: bool,
) -> Result<serde_json::Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").join(script);
    let mut command = Command::new(python());
    command.arg(&script).args(args);
    if one_thread {
        for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"] {
            command.env(var, "1");
        }
    }
    let output = command.output().map_err(|e| format!("cannot run {}: {e}", python()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed (install what it imports: pip install numpy h5py tensorflow-cpu): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("unexpected output {line:?}: {e}"))
}
