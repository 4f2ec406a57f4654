//! `digit3d eval`: accuracy, per-class accuracy and the confusion matrix of a checkpoint, or of
//! the average of several.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use digit3d::dataset::{CloudSet, Dataset, LoadOptions, LoadReport, Role, TEST_H5};
use digit3d::train::data::stratified_split;
use digit3d::train::eval::Confusion;

use super::predict::Scoring;

/// Arguments of `digit3d eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint; repeat it to average the cosines of several models.
    #[arg(long, value_name = "CKPT", required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// The dataset folder. Without --labels, the checkpoints' validation split of their
    /// training clouds is scored (the same seed and fraction give the same split).
    #[arg(long)]
    pub data: PathBuf,
    /// Score the folder's test.h5 against these labels (an ID,label CSV) instead.
    #[arg(long, value_name = "CSV")]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub scoring: Scoring,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ensemble = args.scoring.load(&args.checkpoint)?;
    let checkpoints = &ensemble.checkpoints;
    let config = &checkpoints[0].meta.train;

    let (set, indices, what) = match &args.labels {
        Some(labels) => {
            let h5 = if args.data.is_dir() { args.data.join(TEST_H5) } else { args.data.clone() };
            let mut report = LoadReport::default();
            let set = CloudSet::load(
                Role::Test,
                &h5,
                Some((labels, true)),
                LoadOptions::default(),
                &mut report,
            )?;
            super::warn_skipped(&report);
            let all: Vec<usize> = (0..set.len()).collect();
            (set, all, format!("{} against {}", h5.display(), labels.display()))
        }
        None => {
            let (dataset, report) = Dataset::open(&args.data, LoadOptions::default())
                .with_context(|| format!("cannot load {}", args.data.display()))?;
            super::warn_skipped(&report);
            let set =
                dataset.train.with_context(|| format!("{}: no train.h5", args.data.display()))?;
            let labels = set
                .labels()
                .with_context(|| format!("{}: no train.csv labels", args.data.display()))?;
            // The split is the first checkpoint's; the others must have held out the same.
            for (path, other) in args.checkpoint.iter().zip(checkpoints).skip(1) {
                let theirs = &other.meta.train;
                anyhow::ensure!(
                    (theirs.seed, theirs.val_fraction) == (config.seed, config.val_fraction),
                    "{} held out another validation split (seed {}, fraction {}) than {} (seed \
                     {}, fraction {}): score them on a labelled test set with --labels",
                    path.display(),
                    theirs.seed,
                    theirs.val_fraction,
                    args.checkpoint[0].display(),
                    config.seed,
                    config.val_fraction
                );
            }
            let (_, val) = stratified_split(labels, config.val_fraction, config.seed);
            anyhow::ensure!(
                !val.is_empty(),
                "the checkpoint's validation split of this set is empty"
            );
            (
                set,
                val,
                format!(
                    "the validation split ({:.0}% of each class, seed {})",
                    100.0 * config.val_fraction,
                    config.seed
                ),
            )
        }
    };

    digit3d::tune_allocator();
    let set = Arc::new(set);
    let evaluation = args.scoring.evaluate(&ensemble, &set, &indices)?;
    let confusion = evaluation.confusion.context("the samples have no labels to score against")?;
    println!("{} samples of {what}", indices.len());
    print_confusion(&confusion);
    Ok(())
}

/// Accuracy, per-class accuracy and the matrix (rows: true digit, columns: predicted).
pub fn print_confusion(confusion: &Confusion) {
    println!("accuracy {:.4}", confusion.accuracy());
    let per_class: Vec<String> = confusion
        .per_class()
        .iter()
        .enumerate()
        .map(|(d, a)| format!("{d}: {}", a.map_or("-".into(), |a| format!("{a:.3}"))))
        .collect();
    println!("per class {}", per_class.join("  "));
    println!("\ntrue \\ predicted");
    println!("      {}", (0..10).map(|d| format!("{d:>6}")).collect::<String>());
    for (truth, row) in confusion.counts.iter().enumerate() {
        println!("{truth:>5} {}", row.iter().map(|n| format!("{n:>6}")).collect::<String>());
    }
}
