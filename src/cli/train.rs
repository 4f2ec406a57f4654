//! `digit3d train`: a training run with progress bars, checkpoints and a metrics file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use digit3d::align::Alignment;
use digit3d::dataset::{Dataset, LoadOptions};
use digit3d::nn::curricular::TRule;
use digit3d::nn::model::{Architecture, InputForm};
use digit3d::rotation::RotationDistribution;
use digit3d::train::checkpoint::Checkpoint;
use digit3d::train::{DeviceChoice, Event, Reason, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// How often a run without a terminal logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Arguments of `digit3d train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dataset folder (train.h5 and train.csv).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write best/last checkpoints and metrics.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// Which model.
    #[arg(long, value_enum, default_value = "compact")]
    pub model: Architecture,
    /// The model's input (default: grid for xception, boards for compact).
    #[arg(long, value_enum)]
    pub input: Option<InputForm>,
    /// How clouds are posed before their views are taken (default: none for xception, plane
    /// for compact).
    #[arg(long, value_enum)]
    pub align: Option<Alignment>,
    /// Epochs in all; the learning-rate schedule spans them. `auto` (with --time-limit): as
    /// many as fit in the time, judged from the pace of the first steps, then of each epoch.
    #[arg(long, default_value = "10", value_name = "N|auto")]
    pub epochs: Epochs,
    /// Stop after this many minutes, then evaluate and save.
    #[arg(long, value_name = "MINUTES")]
    pub time_limit: Option<f64>,
    /// Samples per batch (default: 64 for compact, 16 for xception).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate (default: 3e-3 for compact, 1e-3 for xception).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Where to train.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Share of each class held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training rotations: none, uniform, pi-over-k or pi-over-k:N.
    #[arg(long, default_value = "pi-over-k:32")]
    pub augment: RotationDistribution,
    /// CurricularFace's t rule.
    #[arg(long, value_enum, default_value = "reference")]
    pub t_rule: TRule,
    /// CurricularFace's scale s: the cosines are multiplied by it before the softmax.
    #[arg(long, default_value_t = 30.0)]
    pub scale: f64,
    /// CurricularFace's angular margin m, in radians.
    #[arg(long, default_value_t = 0.5)]
    pub margin: f64,
    /// CurricularFace's momentum α of the t update.
    #[arg(long, default_value_t = 0.99)]
    pub momentum: f64,
    /// The compact model's stage widths, comma-separated (default: 64,128,256).
    #[arg(long, value_name = "W,W,...", value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// The compact model's separable convolutions per stage (default: 1,2,2).
    #[arg(long, value_name = "D,D,...", value_delimiter = ',')]
    pub depths: Option<Vec<usize>>,
    /// The compact model's stem: channels, kernel size and optionally stride (1 if left out),
    /// as C,K or C,K,S (default: 32,3,2).
    #[arg(long, value_name = "C,K[,S]", value_delimiter = ',')]
    pub stem: Option<Vec<usize>>,
    /// With --align learned: epochs of training the pose network before the classifier.
    #[arg(long, default_value_t = 4)]
    pub pose_epochs: usize,
    /// With --align learned and --time-limit: the share of the time the pose network may take.
    #[arg(long, default_value_t = 0.35)]
    pub pose_share: f64,
    /// Continue the run of this checkpoint (normally RUN_DIR/last.safetensors).
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
}

/// How many epochs to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epochs {
    /// This many.
    Count(usize),
    /// As many as fit in the time limit.
    Auto,
}

impl std::str::FromStr for Epochs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Epochs::Auto),
            _ => s
                .parse()
                .map(Epochs::Count)
                .map_err(|_| format!("{s:?} is neither a number nor auto")),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = TrainConfig::new(args.model);
    if let Some(input) = args.input {
        config.model.input = input;
    }
    if let Some(alignment) = args.align {
        config.model.alignment = alignment;
    }
    config.time_limit_minutes = args.time_limit;
    match args.epochs {
        Epochs::Count(epochs) => config.epochs = epochs,
        Epochs::Auto if args.time_limit.is_some() => config.fit_epochs = true,
        Epochs::Auto => anyhow::bail!("--epochs auto fits the epochs to a --time-limit: give one"),
    }
    config.batch = args.batch.unwrap_or(config.batch);
    config.lr = args.lr.unwrap_or(config.lr);
    config.device = args.device;
    config.val_fraction = args.val_fraction;
    config.seed = args.seed;
    config.augment = args.augment;
    config.pose_epochs = args.pose_epochs;
    config.pose_share = args.pose_share;
    config.curricular.rule = args.t_rule;
    config.curricular.scale = args.scale;
    config.curricular.margin = args.margin;
    config.curricular.momentum = args.momentum;
    let compact = &mut config.model.compact;
    if let Some(widths) = args.widths {
        compact.stages = widths;
    }
    if let Some(depths) = args.depths {
        compact.depths = depths;
    }
    if let Some(stem) = args.stem {
        let (channels, kernel, stride) = match stem[..] {
            [channels, kernel] => (channels, kernel, 1),
            [channels, kernel, stride] => (channels, kernel, stride),
            _ => anyhow::bail!(
                "--stem takes channels, kernel size and optionally stride: 32,3 or 32,3,2"
            ),
        };
        (compact.stem, compact.stem_kernel, compact.stem_stride) = (channels, kernel, stride);
    }

    let resume = args.resume.as_deref().map(Checkpoint::read).transpose()?;
    let (dataset, report) = Dataset::open(&args.data, LoadOptions::default())
        .with_context(|| format!("cannot load {}", args.data.display()))?;
    super::warn_skipped(&report);
    let set = dataset
        .train
        .with_context(|| format!("{}: no train.h5 to train on", args.data.display()))?;
    digit3d::tune_allocator();
    let trainer = Trainer::new(config, Arc::new(set), Some(args.out.clone()), resume.as_ref())?;
    let handle = trainer.spawn();

    let bar = super::progress_bar(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut last_line = Instant::now();
    while let Some(event) = handle.next_event() {
        match event {
            Event::Started { train, val, batches, position, .. } => {
                tracing::info!(
                    "training on {train} clouds, validating on {val}; {batches} batches per epoch"
                );
                bar.set_length(batches as u64);
                bar.set_position(position.batch as u64);
            }
            Event::Step(s) => {
                let progress = format!(
                    "loss {:.3} acc {:.3} t {:.3} lr {:.1e} {:.1} samples/s",
                    s.loss, s.accuracy, s.t, s.lr, s.samples_per_sec
                );
                // Without a terminal the bar is not drawn: say where the run is now and then.
                if bar.is_hidden() && last_line.elapsed() >= LOG_EVERY {
                    tracing::info!("epoch {} batch {}/{}: {progress}", s.epoch, s.batch, s.batches);
                    last_line = Instant::now();
                }
                bar.set_prefix(format!("epoch {}", s.epoch));
                bar.set_position(s.batch as u64);
                bar.set_message(progress);
            }
            Event::PoseStep(s) => {
                let progress = format!(
                    "pose loss {:.3} acc {:.3} lr {:.1e} {:.1} samples/s",
                    s.loss, s.accuracy, s.lr, s.samples_per_sec
                );
                if bar.is_hidden() && last_line.elapsed() >= LOG_EVERY {
                    tracing::info!(
                        "pose epoch {} batch {}/{}: {progress}",
                        s.epoch,
                        s.batch,
                        s.batches
                    );
                    last_line = Instant::now();
                }
                bar.set_prefix(format!("pose epoch {}", s.epoch));
                bar.set_position(s.batch as u64);
                bar.set_message(progress);
            }
            Event::Pose(_) => bar.reset_eta(),
            Event::Epoch(_) => bar.reset_eta(),
            Event::Saved(path) => tracing::debug!("wrote {}", path.display()),
            Event::Paused | Event::Resumed => {}
            Event::Finished { reason, best_val_accuracy } => {
                bar.finish_and_clear();
                let why = match reason {
                    Reason::Completed => "all epochs done",
                    Reason::TimeLimit => "time limit reached",
                    Reason::Stopped => "stopped",
                };
                let best = best_val_accuracy.map_or("none".into(), |a| format!("{a:.4}"));
                tracing::info!(
                    "finished ({why}); best validation accuracy {best}; wrote {}",
                    args.out.display()
                );
            }
            Event::Failed(e) => {
                bar.finish_and_clear();
                anyhow::bail!("training failed: {e}");
            }
        }
    }
    handle.join();
    Ok(())
}
