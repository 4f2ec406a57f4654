//! `digit3d info`: what a dataset holds.

use std::path::PathBuf;

use anyhow::Context;
use digit3d::dataset::{CloudSet, Dataset, LoadOptions};
use digit3d::views::EXTENT;

/// Arguments of `digit3d info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A dataset folder (train.h5, train.csv, test.h5, sample_submission.csv) or one .h5 file.
    pub path: PathBuf,
    /// Stop at the first bad sample instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (dataset, report) = Dataset::open(&args.path, LoadOptions { strict: args.strict })
        .with_context(|| format!("cannot load {}", args.path.display()))?;
    tracing::debug!("loaded in {:.2?}", started.elapsed());
    super::warn_skipped(&report);
    for set in dataset.sets() {
        print_set(set);
    }
    Ok(())
}

fn print_set(set: &CloudSet) {
    let index = match set.csv_path() {
        Some(csv) if set.labels().is_some() => format!(", labels from {}", file_name(csv)),
        Some(csv) => format!(", in the order of {}", file_name(csv)),
        None => ", unlabelled".to_owned(),
    };
    println!("{} ({}{index}): {} clouds", set.h5_path().display(), set.role(), set.len());

    if let Some(labels) = set.labels() {
        let mut histogram = [0usize; 10];
        for &label in labels {
            histogram[usize::from(label)] += 1;
        }
        let cells: Vec<String> =
            histogram.iter().enumerate().map(|(d, n)| format!("{d}: {n}")).collect();
        println!("  labels       {}", cells.join("  "));
    }

    let mut sizes: Vec<usize> = set.iter().map(|s| s.cloud.len()).collect();
    sizes.sort_unstable();
    println!(
        "  points       min {}  median {}  max {}  (total {})",
        sizes[0],
        sizes[sizes.len() / 2],
        sizes[sizes.len() - 1],
        set.points().len()
    );

    for (axis, name) in ["x", "y", "z"].iter().enumerate() {
        let (lo, hi) =
            set.points().iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p[axis]), hi.max(p[axis]))
            });
        println!("  {name}            {lo:.3} .. {hi:.3}");
    }
    let outside = set.points().iter().filter(|p| p.iter().any(|v| v.abs() > EXTENT)).count();
    let share = 100.0 * outside as f64 / set.points().len() as f64;
    println!("  outside ±{EXTENT}: {outside} points ({share:.3}%), drawn on the view borders");
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}
