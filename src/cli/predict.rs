//! `digit3d predict`: a submission CSV for a test set, from one checkpoint or the average of
//! several.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use digit3d::dataset::{CloudSet, Dataset, LoadOptions, write_labels};
use digit3d::nn::model::Model;
use digit3d::train::DeviceChoice;
use digit3d::train::checkpoint::Checkpoint;
use digit3d::train::eval::{Evaluation, Tta, TtaTurns, evaluate_ensemble};

/// Arguments of `digit3d predict`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint; repeat it to average the cosines of several models.
    #[arg(long, value_name = "CKPT", required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// The clouds: test.h5 (ordered by sample_submission.csv beside it, if present) or a
    /// dataset folder holding it.
    #[arg(long)]
    pub input: PathBuf,
    /// The submission to write: ID,label rows.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub scoring: Scoring,
}

/// How a model scores samples, for `eval` and `predict` alike.
#[derive(Debug, clap::Args)]
pub struct Scoring {
    /// Average the cosines over K rotations (the first none, the rest drawn as in training).
    #[arg(long, default_value_t = 1)]
    pub tta: usize,
    /// Also average over each posed cloud turned over (`over`), and turned half-way round too
    /// (`all`): the poses a digit with two faces alike may have landed in.
    #[arg(long, value_enum, default_value = "none")]
    pub tta_turns: TtaTurns,
    /// Samples per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
}

impl Scoring {
    pub fn tta(&self) -> Tta {
        Tta { rotations: self.tta, turns: self.tta_turns }
    }

    /// Reads the checkpoints at `paths` and builds their models on the chosen device.
    pub fn load(&self, paths: &[PathBuf]) -> anyhow::Result<Ensemble> {
        anyhow::ensure!(self.tta >= 1, "--tta must be at least 1");
        let device = self.device.device().map_err(anyhow::Error::msg)?;
        let checkpoints =
            paths.iter().map(|p| Checkpoint::read(p)).collect::<Result<Vec<_>, _>>()?;
        let models = checkpoints.iter().map(|c| c.model(&device)).collect::<Result<Vec<_>, _>>()?;
        Ok(Ensemble { checkpoints, models, device })
    }

    /// Scores the samples `indices` of `set` with every model of `ensemble`, each over its own
    /// test-time passes, and averages all their cosines.
    pub fn evaluate(
        &self,
        ensemble: &Ensemble,
        set: &Arc<CloudSet>,
        indices: &[usize],
    ) -> anyhow::Result<Evaluation> {
        let members: Vec<_> = ensemble
            .checkpoints
            .iter()
            .zip(&ensemble.models)
            .map(|(checkpoint, model)| {
                let train = &checkpoint.meta.train;
                (model, self.tta().passes(train.augment, train.seed))
            })
            .collect();
        Ok(evaluate_ensemble(&members, set, indices, self.batch, &ensemble.device)?)
    }
}

/// The models of the `--checkpoint` arguments, in their order.
pub struct Ensemble {
    pub checkpoints: Vec<Checkpoint>,
    models: Vec<Model>,
    device: Device,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ensemble = args.scoring.load(&args.checkpoint)?;

    let (dataset, report) = Dataset::open(&args.input, LoadOptions::default())
        .with_context(|| format!("cannot load {}", args.input.display()))?;
    super::warn_skipped(&report);
    let set = dataset.test.or(dataset.train).context("no clouds to predict")?;
    digit3d::tune_allocator();
    let set = Arc::new(set);
    let indices: Vec<usize> = (0..set.len()).collect();

    let started = Instant::now();
    let evaluation = args.scoring.evaluate(&ensemble, &set, &indices)?;
    let seconds = started.elapsed().as_secs_f64();

    let rows: Vec<(u32, u8)> = set.ids().iter().copied().zip(evaluation.predictions).collect();
    write_labels(&args.out, rows)?;
    let passes_each = args.scoring.tta().count();
    let passes = passes_each * ensemble.checkpoints.len();
    tracing::info!(
        "wrote {} predictions to {} ({} model(s) x {} pass(es)) in {seconds:.1} s: {:.0} clouds/s",
        set.len(),
        args.out.display(),
        ensemble.checkpoints.len(),
        passes_each,
        (set.len() * passes) as f64 / seconds
    );
    Ok(())
}
