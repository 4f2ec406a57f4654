//! `digit3d bench accuracy`: trains several configurations on the same split of one dataset,
//! each for the same time, and scores them on its test clouds, as one table.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use digit3d::align::Alignment;
use digit3d::atomic::write_atomically;
use digit3d::dataset::{CloudSet, DataError, Dataset, LoadOptions, LoadReport, Role, TEST_H5};
use digit3d::nn::model::Architecture;
use digit3d::rotation::RotationDistribution;
use digit3d::train::checkpoint::Checkpoint;
use digit3d::train::data::stratified_split;
use digit3d::train::eval::{Tta, TtaTurns, evaluate};
use digit3d::train::{DeviceChoice, Event, TrainConfig, Trainer};

/// The labels of the test clouds, beside `test.h5`, as `digit3d lift` writes them.
const TEST_LABELS: &str = "test_labels.csv";

/// Arguments of `digit3d bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Train and score the configurations on one split: accuracy, training and prediction time.
    Accuracy(AccuracyArgs),
}

/// Arguments of `digit3d bench accuracy`.
#[derive(Debug, clap::Args)]
pub struct AccuracyArgs {
    /// The dataset folder. Its test.h5 is scored against test_labels.csv beside it (as `digit3d
    /// lift` writes it); without those, the validation split is scored instead.
    #[arg(long)]
    pub data: PathBuf,
    /// Minutes of training for each configuration (the epochs are fitted to it).
    #[arg(long, value_name = "MINUTES")]
    pub time_limit: f64,
    /// The configurations, as MODEL:ALIGNMENT (compact:learned, xception:none, ...).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "compact:none,compact:pca,compact:plane,compact:upright,compact:learned"
    )]
    pub configs: Vec<Setup>,
    /// Test-time augmentation: the passes averaged in the TTA column.
    #[arg(long, default_value_t = 8)]
    pub tta: usize,
    /// The turned copies of each pass in the TTA column (see `predict --tta-turns`).
    #[arg(long, value_enum, default_value = "none")]
    pub tta_turns: TtaTurns,
    /// Seed of the split, the initial weights and every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training (and test-time) rotations, as `train --augment`: match them to the set's.
    #[arg(long, default_value = "pi-over-k:32")]
    pub augment: RotationDistribution,
    /// Where to write each configuration's run folder.
    #[arg(long, default_value = "runs/bench-accuracy")]
    pub out: PathBuf,
    /// Also write the table, as Markdown, to this file.
    #[arg(long, value_name = "FILE")]
    pub table: Option<PathBuf>,
    /// Where to train.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
}

/// One configuration: a model and the pose it sees clouds in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    architecture: Architecture,
    alignment: Alignment,
}

impl std::str::FromStr for Setup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use clap::ValueEnum;
        let (model, alignment) =
            s.split_once(':').ok_or_else(|| format!("{s:?} is not MODEL:ALIGNMENT"))?;
        Ok(Setup {
            architecture: Architecture::from_str(model, true)?,
            alignment: Alignment::from_str(alignment, true)?,
        })
    }
}

impl Setup {
    /// As the table shows it: `compact, learned`.
    fn name(&self) -> String {
        format!("{}, {}", architecture_name(self.architecture), self.alignment.name())
    }

    /// As the command line takes it: `compact:learned`.
    fn arg(&self) -> String {
        format!("{}:{}", architecture_name(self.architecture), self.alignment.name())
    }
}

/// One line of the table.
struct Row {
    name: String,
    epochs: usize,
    train_minutes: f64,
    val_accuracy: f64,
    test: Score,
    tta: Score,
}

/// An accuracy and how fast it was scored.
struct Score {
    accuracy: f64,
    clouds_per_second: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Accuracy(args) => accuracy(args),
    }
}

fn accuracy(args: AccuracyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.time_limit > 0.0, "--time-limit must be positive");
    anyhow::ensure!(args.tta >= 1, "--tta must be at least 1");
    let (dataset, report) = Dataset::open(&args.data, LoadOptions::default())
        .with_context(|| format!("cannot load {}", args.data.display()))?;
    super::warn_skipped(&report);
    let train =
        Arc::new(dataset.train.with_context(|| format!("{}: no train.h5", args.data.display()))?);
    let (test, test_indices, scored) = test_part(&args, &train)?;
    digit3d::tune_allocator();
    let device = args.device.device().map_err(anyhow::Error::msg)?;

    let mut rows = Vec::new();
    for setup in &args.configs {
        let mut config = TrainConfig::new(setup.architecture);
        config.model.alignment = setup.alignment;
        config.augment = args.augment;
        config.seed = args.seed;
        config.device = args.device;
        config.time_limit_minutes = Some(args.time_limit);
        config.fit_epochs = true;
        let out = args.out.join(setup.arg().replace(':', "-"));
        tracing::info!(
            "{}: training for {} minutes into {}",
            setup.name(),
            args.time_limit,
            out.display()
        );

        let started = Instant::now();
        let handle = Trainer::new(config, Arc::clone(&train), Some(out.clone()), None)?.spawn();
        let (mut epochs, mut best) = (0, f64::NAN);
        while let Some(event) = handle.next_event() {
            match event {
                // The trainer logs each epoch itself.
                Event::Epoch(report) => epochs = report.record.epoch,
                Event::Finished { best_val_accuracy, .. } => {
                    best = best_val_accuracy.unwrap_or(f64::NAN);
                }
                Event::Failed(e) => anyhow::bail!("{}: training failed: {e}", setup.name()),
                _ => {}
            }
        }
        handle.join();
        let train_minutes = started.elapsed().as_secs_f64() / 60.0;

        let checkpoint = Checkpoint::read(&out.join("best.safetensors"))?;
        let model = checkpoint.model(&device)?;
        let meta = &checkpoint.meta.train;
        let score = |tta: Tta| -> anyhow::Result<Score> {
            let passes = tta.passes(meta.augment, meta.seed);
            let started = Instant::now();
            let evaluation = evaluate(&model, &test, &test_indices, 64, &passes, None, &device)?;
            let seconds = started.elapsed().as_secs_f64();
            Ok(Score {
                accuracy: evaluation
                    .confusion
                    .context("the scored clouds have no labels")?
                    .accuracy(),
                clouds_per_second: test_indices.len() as f64 / seconds,
            })
        };
        let (plain, tta) =
            (score(Tta::NONE)?, score(Tta { rotations: args.tta, turns: args.tta_turns })?);
        tracing::info!(
            "{}: {scored} accuracy {:.4}, with {} TTA passes {:.4}",
            setup.name(),
            plain.accuracy,
            args.tta * args.tta_turns.turns().len(),
            tta.accuracy
        );
        rows.push(Row {
            name: setup.name(),
            epochs,
            train_minutes,
            val_accuracy: best,
            test: plain,
            tta,
        });
    }

    let table = table(&rows, &args, &scored);
    println!("{table}");
    if let Some(path) = &args.table {
        write_atomically(path, |tmp| {
            std::fs::write(tmp, &table).map_err(|e| DataError::io(path, e))
        })?;
    }
    Ok(())
}

/// The clouds to score and what they are: the labelled test set when the folder has its labels,
/// else the validation split of the training clouds.
fn test_part(
    args: &AccuracyArgs,
    train: &Arc<CloudSet>,
) -> anyhow::Result<(Arc<CloudSet>, Vec<usize>, String)> {
    let (h5, labels) = (args.data.join(TEST_H5), args.data.join(TEST_LABELS));
    if h5.exists() && labels.exists() {
        let mut report = LoadReport::default();
        let set = CloudSet::load(
            Role::Test,
            &h5,
            Some((&labels, true)),
            LoadOptions::default(),
            &mut report,
        )?;
        super::warn_skipped(&report);
        let all = (0..set.len()).collect();
        return Ok((Arc::new(set), all, "test".into()));
    }
    tracing::warn!(
        "{} has no {TEST_H5} with {TEST_LABELS}: scoring the validation split instead",
        args.data.display()
    );
    let labels = train.labels().context("the training clouds have no labels")?;
    let (_, val) =
        stratified_split(labels, TrainConfig::new(Architecture::Compact).val_fraction, args.seed);
    Ok((Arc::clone(train), val, "validation".into()))
}

/// The results as a Markdown table, with the command that made them.
fn table(rows: &[Row], args: &AccuracyArgs, scored: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| configuration | epochs | training (min) | best validation | {scored} | {scored}, TTA x{} | prediction (clouds/s) | with TTA (clouds/s) |",
        args.tta * args.tta_turns.turns().len()
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.4} | {:.4} | {:.4} | {:.0} | {:.0} |",
            r.name,
            r.epochs,
            r.train_minutes,
            r.val_accuracy,
            r.test.accuracy,
            r.tta.accuracy,
            r.test.clouds_per_second,
            r.tta.clouds_per_second
        );
    }
    let configs: Vec<String> = args.configs.iter().map(Setup::arg).collect();
    let _ = write!(
        out,
        "\n`digit3d bench accuracy --data {} --time-limit {} --configs {} --tta {} --tta-turns {} \
         --augment {} --seed {}`",
        args.data.display(),
        args.time_limit,
        configs.join(","),
        args.tta,
        args.tta_turns.name(),
        args.augment,
        args.seed
    );
    out
}

fn architecture_name(architecture: Architecture) -> &'static str {
    match architecture {
        Architecture::Xception => "xception",
        Architecture::Compact => "compact",
    }
}
