//! Training a model on a labelled set, on a background thread that reports what it does as
//! events and can be paused, resumed or stopped at any time.
//!
//! A run is reproducible: the validation split, the order of every epoch and the rotation of
//! every sample derive from the seed, so the same settings give the same run, and a run resumed
//! from its last checkpoint continues exactly where it stopped.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod optim;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::align::Alignment;
use crate::atomic::write_atomically;
use crate::dataset::{CloudSet, DataError};
use crate::nn::curricular::{CurricularConfig, CurricularFace};
use crate::nn::layers::Phase;
use crate::nn::model::{Architecture, Model, ModelConfig};
use crate::nn::pose;
use crate::rotation::RotationDistribution;
use checkpoint::{Checkpoint, CheckpointError, CheckpointMeta, EpochRecord, Position};
use data::{Augment, PoseBatch, Prefetcher, epoch_order, make_pose_batch, stratified_split};
use eval::{Confusion, Pass, evaluate};
use optim::{AdamW, AdamWConfig, Schedule};

/// Where the tensors live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// The CPU, all cores.
    #[default]
    Cpu,
    /// The first NVIDIA GPU (needs a build with the `cuda` feature).
    Cuda,
}

impl DeviceChoice {
    /// The candle device, or why it cannot be had.
    pub fn device(self) -> Result<Device, String> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if !candle_core::utils::cuda_is_available() => Err(
                "this build has no CUDA support: rebuild with `--features cuda` to train on a GPU"
                    .into(),
            ),
            DeviceChoice::Cuda => {
                Device::new_cuda(0).map_err(|e| format!("cannot open the GPU: {e}"))
            }
        }
    }
}

/// Everything that decides a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model.
    pub model: ModelConfig,
    /// Epochs in all (the learning-rate schedule spans them).
    pub epochs: usize,
    /// Stop after this many minutes (then evaluate and save), if set.
    pub time_limit_minutes: Option<f64>,
    /// Samples per batch.
    pub batch: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// Epochs of linear warm-up before the cosine decay.
    pub warmup_epochs: f64,
    /// AdamW's settings.
    pub optimizer: AdamWConfig,
    /// The share of each class held out for validation.
    pub val_fraction: f64,
    /// The seed of every random choice.
    pub seed: u64,
    /// The loss's settings.
    pub curricular: CurricularConfig,
    /// How training clouds are rotated, afresh each epoch.
    pub augment: RotationDistribution,
    /// Where to train.
    pub device: DeviceChoice,
    /// Batches used to re-estimate batch normalisation's statistics before each evaluation.
    pub calibration_batches: usize,
    /// With the learned alignment: epochs of training the pose network, before the classifier.
    #[serde(default = "default_pose_epochs")]
    pub pose_epochs: usize,
    /// With the learned alignment and a time limit: the share of the time the pose network
    /// may take.
    #[serde(default = "default_pose_share")]
    pub pose_share: f64,
    /// With a time limit: replace `epochs` (and `pose_epochs`) by as many as fit in the time,
    /// judged from the pace of the first steps and again after each epoch, so that the learning
    /// rate decays to zero just as the time runs out.
    #[serde(default)]
    pub fit_epochs: bool,
}

fn default_pose_epochs() -> usize {
    4
}

fn default_pose_share() -> f64 {
    0.35
}

impl TrainConfig {
    /// The defaults for `architecture`: the compact network trains in batches of 64 at a peak
    /// learning rate of 3e-3; Xception, heavier, in batches of 16 at 1e-3. Both for 10 epochs
    /// with half an epoch of warm-up, 10% of each class for validation, seed 0, the
    /// CurricularFace defaults and `π / k` augmentation (each angle π/k, k uniform in
    /// -32..=32, k = 0 meaning none), re-estimating batch-norm statistics over 16 batches; with
    /// the learned alignment, 4 epochs (or 35% of a time limit) for the pose network first.
    pub fn new(architecture: Architecture) -> Self {
        let (batch, lr) = match architecture {
            Architecture::Compact => (64, 3e-3),
            Architecture::Xception => (16, 1e-3),
        };
        TrainConfig {
            model: ModelConfig::new(architecture),
            epochs: 10,
            time_limit_minutes: None,
            batch,
            lr,
            warmup_epochs: 0.5,
            optimizer: AdamWConfig::default(),
            val_fraction: 0.1,
            seed: 0,
            curricular: CurricularConfig::default(),
            augment: RotationDistribution::default(),
            device: DeviceChoice::Cpu,
            calibration_batches: 16,
            pose_epochs: default_pose_epochs(),
            pose_share: default_pose_share(),
            fit_epochs: false,
        }
    }
}

/// Why a run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The set has no labels.
    #[error("{}: the training set has no labels (is train.csv missing?)", .0.display())]
    NoLabels(PathBuf),
    /// A bad setting.
    #[error("{0}")]
    Setting(String),
    /// The device cannot be used.
    #[error("{0}")]
    Device(String),
    /// A checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file problem.
    #[error(transparent)]
    File(#[from] DataError),
    /// The tensor library failed.
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}

/// One training step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// The epoch, from 1.
    pub epoch: usize,
    /// The batch within the epoch, from 1.
    pub batch: usize,
    /// Batches per epoch.
    pub batches: usize,
    /// Optimiser steps taken in all.
    pub step: u64,
    /// Steps the whole run will take.
    pub total_steps: u64,
    /// The batch's loss.
    pub loss: f64,
    /// The batch's accuracy (of the cosines, before the margin).
    pub accuracy: f64,
    /// The CurricularFace state after the step.
    pub t: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// Training throughput over the last few steps.
    pub samples_per_sec: f64,
}

/// A validation sample the model got wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mistake {
    /// The sample, as an index into the set.
    pub index: usize,
    /// Its label.
    pub label: u8,
    /// The prediction.
    pub predicted: u8,
}

/// The end of an epoch (or of a stopped one).
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// The figures that go to `metrics.csv`.
    pub record: EpochRecord,
    /// The validation confusion matrix.
    pub confusion: Confusion,
    /// The validation samples predicted wrong.
    pub mistakes: Vec<Mistake>,
    /// Whether this is the best validation accuracy so far.
    pub best: bool,
}

/// How well the pose network names the turns of the validation clouds (turned as in training).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoseReport {
    /// The share of clouds whose turn it names right.
    pub accuracy: f64,
    /// The share whose turn is none: what always answering "none" would score.
    pub unturned: f64,
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// All epochs done.
    Completed,
    /// The time limit was reached.
    TimeLimit,
    /// Asked to stop.
    Stopped,
}

/// What a run reports, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Training begins (or resumes).
    Started {
        /// Training samples.
        train: usize,
        /// Validation samples.
        val: usize,
        /// Batches per epoch.
        batches: usize,
        /// Steps the whole run will take.
        total_steps: u64,
        /// Where it begins.
        position: Position,
    },
    /// A step of the classifier finished.
    Step(StepStats),
    /// A step of the pose network finished (learned alignment): the loss is its cross-entropy,
    /// the accuracy the share of the batch whose turn it named right.
    PoseStep(StepStats),
    /// The pose network finished training, scored on the validation split.
    Pose(PoseReport),
    /// An epoch (or a stopped part of one) was evaluated.
    Epoch(Box<EpochReport>),
    /// A checkpoint was written.
    Saved(PathBuf),
    /// The run paused.
    Paused,
    /// The run continued.
    Resumed,
    /// The run ended.
    Finished {
        /// Why.
        reason: Reason,
        /// The best validation accuracy.
        best_val_accuracy: Option<f64>,
    },
    /// The run failed; nothing more follows.
    Failed(String),
}

/// Pause and stop requests, shared between a run and whoever controls it.
#[derive(Debug, Default)]
struct Control {
    paused: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
    stop_after_epoch: AtomicBool,
}

/// A run in progress: its events, and the means to pause, resume or stop it.
pub struct TrainerHandle {
    events: Receiver<Event>,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl TrainerHandle {
    /// The events so far, without waiting.
    pub fn poll(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// The next event, waiting for it; `None` once the run has ended and all were read.
    pub fn next_event(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// Pauses after the current step.
    pub fn pause(&self) {
        *self.control.paused.lock().expect("the control lock is never poisoned") = true;
    }

    /// Continues a paused run.
    pub fn resume(&self) {
        *self.control.paused.lock().expect("the control lock is never poisoned") = false;
        self.control.wake.notify_all();
    }

    /// Stops when the current epoch ends (after its evaluation and checkpoint).
    pub fn stop_after_epoch(&self) {
        self.control.stop_after_epoch.store(true, Ordering::Relaxed);
    }

    /// Stops after the current step; the run then evaluates, saves and finishes.
    pub fn stop(&self) {
        self.control.stop.store(true, Ordering::Relaxed);
        self.control.wake.notify_all();
    }

    /// Waits for the run's thread to end.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TrainerHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop();
            let _ = thread.join();
        }
    }
}

/// A run, set up and ready to start.
pub struct Trainer {
    config: TrainConfig,
    set: Arc<CloudSet>,
    out: Option<PathBuf>,
    device: Device,
    model: Model,
    optimizer: AdamW,
    pose_optimizer: Option<AdamW>,
    /// See [`CheckpointMeta::pose_references`].
    pose_references: Arc<Vec<u8>>,
    loss: CurricularFace,
    train: Vec<usize>,
    val: Vec<usize>,
    position: Position,
    best: Option<f64>,
    history: Vec<EpochRecord>,
}

impl Trainer {
    /// Sets up a run on `set`, writing checkpoints and `metrics.csv` into `out` when given; with
    /// `resume`, continues the run that checkpoint belongs to (whose settings then apply,
    /// except the number of epochs, the time limit and the device).
    pub fn new(
        mut config: TrainConfig,
        set: Arc<CloudSet>,
        out: Option<PathBuf>,
        resume: Option<&Checkpoint>,
    ) -> Result<Self, TrainError> {
        let labels = set.labels().ok_or_else(|| TrainError::NoLabels(set.h5_path().to_owned()))?;
        if let Some(checkpoint) = resume {
            let saved = &checkpoint.meta.train;
            if saved.model != config.model {
                return Err(TrainError::Checkpoint(CheckpointError::Mismatch {
                    path: checkpoint.path.clone(),
                    detail: format!(
                        "it is a checkpoint of a {:?} model, but a {:?} model was asked for",
                        saved.model.architecture, config.model.architecture
                    ),
                }));
            }
            config = TrainConfig {
                epochs: config.epochs,
                time_limit_minutes: config.time_limit_minutes,
                device: config.device,
                ..saved.clone()
            };
        }
        check_settings(&config)?;
        let device = config.device.device().map_err(TrainError::Device)?;

        let (train, val) = stratified_split(labels, config.val_fraction, config.seed);
        if val.is_empty() {
            return Err(TrainError::Setting(format!(
                "the validation split is empty: {} samples with --val-fraction {} leave none out",
                labels.len(),
                config.val_fraction
            )));
        }
        if train.len() < config.batch {
            return Err(TrainError::Setting(format!(
                "{} training samples are fewer than one batch of {}",
                train.len(),
                config.batch
            )));
        }

        let model = Model::new(&config.model, config.seed, &device)?;
        let mut optimizer = AdamW::new(model.params(), config.optimizer)?;
        let mut pose_optimizer =
            model.pose().map(|pose| AdamW::new(pose.params(), config.optimizer)).transpose()?;
        let mut loss = CurricularFace::new(config.curricular);
        let mut trainer_position = Position::default();
        let mut pose_references = Vec::new();
        let mut best = None;
        let mut history = Vec::new();
        if let Some(checkpoint) = resume {
            checkpoint.load_into(&model)?;
            let meta = &checkpoint.meta;
            let mismatch = |detail: String| CheckpointError::Mismatch {
                path: checkpoint.path.clone(),
                detail,
            };
            // The moments saved are those of the network that was training: the pose network's
            // while it had steps left, else the classifier's.
            let pose_training = pose_optimizer.is_some() && !meta.position.pose_done;
            if meta.has_optimizer && pose_training {
                if let Some(pose) = &mut pose_optimizer {
                    pose.restore(&checkpoint.tensors, meta.position.pose_step).map_err(mismatch)?;
                }
            } else if meta.has_optimizer {
                optimizer.restore(&checkpoint.tensors, meta.position.step).map_err(mismatch)?;
            } else {
                tracing::warn!(
                    "{} has no optimiser state: its moments start again from zero",
                    checkpoint.path.display()
                );
            }
            loss.t = meta.t;
            trainer_position = meta.position;
            pose_references = meta.pose_references.clone();
            if !pose_references.is_empty() && pose_references.len() != set.len() {
                return Err(TrainError::Checkpoint(CheckpointError::Mismatch {
                    path: checkpoint.path.clone(),
                    detail: format!(
                        "it was trained on {} clouds, this set has {}",
                        pose_references.len(),
                        set.len()
                    ),
                }));
            }
            best = meta.best_val_accuracy;
            history = meta.history.clone();
        }
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        Ok(Trainer {
            config,
            set,
            out,
            device,
            model,
            optimizer,
            pose_optimizer,
            pose_references: Arc::new(pose_references),
            loss,
            train,
            val,
            position: trainer_position,
            best,
            history,
        })
    }

    /// The run's settings (after a resume, the checkpoint's).
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Starts the run on its own thread.
    pub fn spawn(self) -> TrainerHandle {
        let (tx, rx) = channel();
        let control = Arc::new(Control::default());
        let shared = Arc::clone(&control);
        let thread = std::thread::Builder::new()
            .name("digit3d-trainer".into())
            .spawn(move || {
                let mut run = Run {
                    trainer: self,
                    events: tx.clone(),
                    control: shared,
                    started: Instant::now(),
                    pace: Pace::default(),
                    pose_pace: Pace::default(),
                };
                if let Err(e) = run.run() {
                    let _ = tx.send(Event::Failed(format!("{e:#}")));
                }
            })
            .expect("spawning the training thread");
        TrainerHandle { events: rx, control, thread: Some(thread) }
    }
}

/// The steps the pose network trains for, with `train` training samples: none without the
/// learned alignment.
fn pose_steps(config: &TrainConfig, train: usize) -> u64 {
    if config.model.alignment != Alignment::Learned {
        return 0;
    }
    (config.pose_epochs * (train / config.batch.max(1))) as u64
}

fn check_settings(config: &TrainConfig) -> Result<(), TrainError> {
    let bad = |what: String| Err(TrainError::Setting(what));
    if config.batch == 0 {
        return bad("the batch size must be at least 1".into());
    }
    if config.epochs == 0 {
        return bad("train for at least one epoch".into());
    }
    if !(config.lr > 0.0 && config.lr.is_finite()) {
        return bad(format!("the learning rate must be positive, not {}", config.lr));
    }
    if !(0.0..1.0).contains(&config.val_fraction) {
        return bad(format!(
            "the validation fraction must be in 0..1, not {}",
            config.val_fraction
        ));
    }
    if config.time_limit_minutes.is_some_and(|m| m <= 0.0 || m.is_nan()) {
        return bad("the time limit must be positive".into());
    }
    if !(0.0..1.0).contains(&config.pose_share) {
        return bad(format!(
            "the pose network's share of the time must be in 0..1, not {}",
            config.pose_share
        ));
    }
    let loss = &config.curricular;
    if !(loss.scale > 0.0 && loss.scale.is_finite()) {
        return bad(format!("the scale s must be positive, not {}", loss.scale));
    }
    if !(0.0..std::f64::consts::FRAC_PI_2).contains(&loss.margin) {
        return bad(format!("the margin m must be in 0..π/2 radians, not {}", loss.margin));
    }
    if !(0.0..=1.0).contains(&loss.momentum) {
        return bad(format!("the momentum α must be in 0..=1, not {}", loss.momentum));
    }
    let compact = &config.model.compact;
    if compact.stages.is_empty()
        || compact.stages.len() != compact.depths.len()
        || compact.stages.iter().chain(&compact.depths).any(|&n| n == 0)
    {
        return bad(format!(
            "the compact model needs as many stage widths as depths, all positive: widths {:?}, \
             depths {:?}",
            compact.stages, compact.depths
        ));
    }
    if compact.stem == 0 || compact.stem_kernel.is_multiple_of(2) || compact.stem_stride == 0 {
        return bad(format!(
            "the compact model's stem needs channels, an odd kernel size and a stride, not \
             {},{},{}",
            compact.stem, compact.stem_kernel, compact.stem_stride
        ));
    }
    Ok(())
}

/// The seconds an epoch takes, judged from the whole epochs `timed` so far. The first also
/// waits for the first batches: once later ones are timed, it is left out.
fn epoch_seconds(timed: &[f64]) -> f64 {
    let later = if timed.len() > 1 { &timed[1..] } else { timed };
    later.iter().sum::<f64>() / later.len().max(1) as f64
}

/// The epochs a run should have in all, `done` of them done and `left` seconds left, at the pace
/// of the whole epochs `timed`, with a small margin; `done` itself when not one more fits.
fn epochs_that_fit(done: usize, timed: &[f64], left: f64) -> usize {
    let each = 1.02 * epoch_seconds(timed);
    if each <= 0.0 || left <= 0.0 {
        return done;
    }
    done + (left / each).floor() as usize
}

/// Training throughput over the last few seconds of steps.
struct Throughput {
    since: Instant,
    samples: usize,
}

impl Throughput {
    /// Seconds after which the count starts afresh.
    const WINDOW: f64 = 5.0;

    fn new() -> Self {
        Throughput { since: Instant::now(), samples: 0 }
    }

    /// Counts `n` more samples trained; returns the samples per second since the count began.
    fn add(&mut self, n: usize) -> f64 {
        self.samples += n;
        let elapsed = self.since.elapsed().as_secs_f64();
        let rate = self.samples as f64 / elapsed.max(1e-9);
        if elapsed > Self::WINDOW {
            *self = Throughput::new();
        }
        rate
    }
}

/// Times a few steps of a training phase, once it is past its first ones (which wait for the
/// first batches and warm the allocator).
#[derive(Default)]
struct Pace {
    steps: u64,
    since: Option<Instant>,
}

impl Pace {
    /// Steps left out before timing starts, and steps timed.
    const SKIP: u64 = 3;
    const TIMED: u64 = 10;

    /// Counts a step; once enough are timed, returns the seconds per step (once only).
    fn step(&mut self) -> Option<f64> {
        self.steps += 1;
        if self.steps == Self::SKIP {
            self.since = Some(Instant::now());
        }
        (self.steps == Self::SKIP + Self::TIMED)
            .then(|| self.since.map(|t| t.elapsed().as_secs_f64() / Self::TIMED as f64))
            .flatten()
    }
}

/// A run in its thread.
struct Run {
    trainer: Trainer,
    events: Sender<Event>,
    control: Arc<Control>,
    started: Instant,
    /// The pace of the classifier's steps and of the pose network's, for `fit_epochs`.
    pace: Pace,
    pose_pace: Pace,
}

/// Figures gathered over an epoch's steps.
#[derive(Default)]
struct Tally {
    loss: f64,
    correct: f64,
    samples: usize,
    batches: usize,
    lr: f64,
}

impl Run {
    fn send(&self, event: Event) {
        // Nobody listening is fine: the run goes on and still saves its checkpoints.
        let _ = self.events.send(event);
    }

    fn batches_per_epoch(&self) -> usize {
        self.trainer.train.len() / self.trainer.config.batch
    }

    fn schedule(&self) -> Schedule {
        let per_epoch = self.batches_per_epoch() as u64;
        let config = &self.trainer.config;
        Schedule {
            peak: config.lr,
            warmup: ((config.warmup_epochs * per_epoch as f64).round() as u64).max(1),
            total: per_epoch * config.epochs as u64,
        }
    }

    fn run(&mut self) -> Result<(), TrainError> {
        let per_epoch = self.batches_per_epoch();
        let schedule = self.schedule();
        let fits =
            self.trainer.config.fit_epochs && self.trainer.config.time_limit_minutes.is_some();
        if fits {
            tracing::info!("fitting the epochs to the time limit once the first steps are timed");
        }
        self.send(Event::Started {
            train: self.trainer.train.len(),
            val: self.trainer.val.len(),
            batches: per_epoch,
            total_steps: schedule.total,
            position: self.trainer.position,
        });

        if let Some(reason) = self.train_pose()? {
            // Stopped while the pose network trained: keep where it stands, for a resume.
            self.save(false)?;
            self.send(Event::Finished { reason, best_val_accuracy: self.trainer.best });
            return Ok(());
        }
        let mut reason = Reason::Completed;
        let mut timed = Vec::new();
        while self.trainer.position.epoch < self.trainer.config.epochs {
            let whole = self.trainer.position.batch == 0;
            let epoch_started = Instant::now();
            let (tally, interrupted) = self.train_epoch()?;
            if let Some(why) = interrupted {
                reason = why;
            } else {
                self.trainer.position.epoch += 1;
                self.trainer.position.batch = 0;
            }
            if tally.batches > 0 {
                self.finish_epoch(tally, epoch_started)?;
            }
            if interrupted.is_some() {
                break;
            }
            if whole && fits {
                timed.push(epoch_started.elapsed().as_secs_f64());
                self.refit_epochs(&timed);
            }
            if self.control.stop_after_epoch.load(Ordering::Relaxed)
                && self.trainer.position.epoch < self.trainer.config.epochs
            {
                reason = Reason::Stopped;
                break;
            }
        }
        self.send(Event::Finished { reason, best_val_accuracy: self.trainer.best });
        Ok(())
    }

    /// Trains from the current position to the end of its epoch, or until stopped.
    fn train_epoch(&mut self) -> Result<(Tally, Option<Reason>), TrainError> {
        let t = &self.trainer;
        let config = &t.config;
        let (epoch, first) = (t.position.epoch, t.position.batch);
        let order = epoch_order(&t.train, config.seed, epoch);
        let plan: Vec<Vec<usize>> =
            order.chunks_exact(config.batch).skip(first).map(<[usize]>::to_vec).collect();
        let augment = Augment::Random { distribution: config.augment, seed: config.seed, epoch };
        let inputs = t.model.inputs();
        let [c, h, w] = inputs.shape();
        let prefetcher = Prefetcher::spawn(Arc::clone(&t.set), plan, inputs, augment, 3);

        let batches = self.batches_per_epoch();
        let mut tally = Tally::default();
        let mut throughput = Throughput::new();
        loop {
            if let Some(reason) = self.interruption() {
                return Ok((tally, Some(reason)));
            }
            let Some(batch) = prefetcher.next_batch()? else {
                break;
            };
            let n = batch.indices.len();
            let labels = batch.labels.expect("training sets are labelled");
            let t = &mut self.trainer;
            let input = Tensor::from_vec(batch.input, (n, c, h, w), &t.device)?;
            let labels_t = Tensor::from_vec(labels.clone(), n, &t.device)?;

            let cosines = t.model.cosines(&input, Phase::Train)?;
            let out = t.loss.loss(&cosines, &labels_t)?;
            let schedule = self.schedule();
            let t = &mut self.trainer;
            let lr = schedule.at(t.position.step);
            t.optimizer.step(&out.loss.backward()?, lr)?;
            t.loss.update_t(&out);
            t.position.batch += 1;
            t.position.step += 1;

            let loss: f32 = out.loss.to_scalar()?;
            let predicted: Vec<u32> = cosines.argmax(1)?.to_vec1()?;
            let correct = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
            tally.loss += f64::from(loss);
            tally.correct += correct as f64;
            tally.samples += n;
            tally.batches += 1;
            tally.lr = lr;
            let stats = StepStats {
                epoch: t.position.epoch + 1,
                batch: t.position.batch,
                batches,
                step: t.position.step,
                total_steps: schedule.total,
                loss: f64::from(loss),
                accuracy: correct as f64 / n as f64,
                t: t.loss.t,
                lr,
                samples_per_sec: throughput.add(n),
            };
            self.send(Event::Step(stats));
            if let Some(seconds) = self.pace.step() {
                self.fit_epochs(seconds);
            }
        }
        Ok((tally, None))
    }

    /// With `fit_epochs` and a time limit, sets the epochs to as many as fit in the time left at
    /// `seconds` per step, counting the evaluation each epoch ends with.
    fn fit_epochs(&mut self, seconds: f64) {
        let t = &mut self.trainer;
        let config = &mut t.config;
        let Some(limit) = config.time_limit_minutes.filter(|_| config.fit_epochs) else {
            return;
        };
        let per_epoch = (t.train.len() / config.batch) as f64;
        // Scoring runs forward passes only, about a third of a training step's work each. The
        // first steps run a little faster than the average over a run (measured: 342 against
        // 365 ms), hence the margin.
        let scored = config.calibration_batches as f64 + t.val.len() as f64 / config.batch as f64;
        let epoch_seconds = 1.1 * (per_epoch * seconds + scored * seconds / 3.0);
        let left = limit * 60.0 - self.started.elapsed().as_secs_f64();
        let done = t.position.epoch as f64 + t.position.batch as f64 / per_epoch;
        config.epochs = ((done + left / epoch_seconds).floor() as usize).max(t.position.epoch + 1);
        tracing::info!(
            "{:.0} ms a step: {} epochs fit in the {limit} minutes",
            seconds * 1e3,
            config.epochs
        );
    }

    /// With `fit_epochs` and a time limit, refits the epochs after each whole one to the time
    /// the whole epochs took (`timed`, evaluation and saving included). The pace of the first
    /// steps misjudges later ones by a tenth or more, either way (measured: 200 ms a step
    /// judged, 170 ms taken, and the run ended after 12 of its 15 minutes).
    fn refit_epochs(&mut self, timed: &[f64]) {
        let t = &mut self.trainer;
        let config = &mut t.config;
        let Some(limit) = config.time_limit_minutes.filter(|_| config.fit_epochs) else {
            return;
        };
        let left = limit * 60.0 - self.started.elapsed().as_secs_f64();
        let epochs = epochs_that_fit(t.position.epoch, timed, left);
        if epochs != config.epochs {
            tracing::info!(
                "{:.1} s an epoch: {epochs} epochs fit in the {limit} minutes",
                epoch_seconds(timed)
            );
            config.epochs = epochs;
        }
    }

    /// With `fit_epochs` and a time limit, sets the pose network's epochs to as many as fit in
    /// its share of the time at `seconds` per step.
    fn fit_pose_epochs(&mut self, seconds: f64) {
        let t = &mut self.trainer;
        let config = &mut t.config;
        let Some(limit) = config.time_limit_minutes.filter(|_| config.fit_epochs) else {
            return;
        };
        let per_epoch = (t.train.len() / config.batch) as f64;
        let left = limit * 60.0 * config.pose_share - self.started.elapsed().as_secs_f64();
        let done = t.position.pose_step as f64 / per_epoch;
        let epoch_seconds = 1.1 * per_epoch * seconds;
        config.pose_epochs = ((done + left / epoch_seconds).floor() as usize).max(1);
        tracing::info!(
            "{:.0} ms a pose step: {} pose epochs fit in {:.0}% of the time",
            seconds * 1e3,
            config.pose_epochs,
            100.0 * config.pose_share
        );
    }

    /// The learning rate of the pose network's steps.
    fn pose_schedule(&self) -> Schedule {
        let per_epoch = self.batches_per_epoch() as u64;
        let config = &self.trainer.config;
        Schedule {
            peak: config.lr,
            warmup: ((config.warmup_epochs * per_epoch as f64).round() as u64).max(1),
            total: pose_steps(config, self.trainer.train.len()),
        }
    }

    /// Trains the pose network of the learned alignment, from where it stands until its steps
    /// are done or its share of the time limit is spent, then readies it for use and reports
    /// how well it does; says why the run must stop, if it must.
    fn train_pose(&mut self) -> Result<Option<Reason>, TrainError> {
        let config = self.trainer.config.clone();
        if self.trainer.model.pose().is_none() || self.trainer.position.pose_done {
            return Ok(None);
        }
        let per_epoch = self.batches_per_epoch() as u64;
        let budget = config.time_limit_minutes.map(|m| m * 60.0 * config.pose_share);
        let [c, h, w] = pose::INPUT;
        let mut throughput = Throughput::new();
        'epochs: while self.trainer.position.pose_step < self.pose_schedule().total {
            let step = self.trainer.position.pose_step;
            let epoch = (step / per_epoch) as usize;
            let relabel_at = self.trainer.config.pose_epochs.div_ceil(2).max(1);
            if epoch >= relabel_at && self.trainer.pose_references.is_empty() {
                self.relabel_references()?;
            }
            let order = epoch_order(&self.trainer.train, config.seed ^ POSE_SEED, epoch);
            let plan: Vec<Vec<usize>> = order
                .chunks_exact(config.batch)
                .skip((step % per_epoch) as usize)
                .map(<[usize]>::to_vec)
                .collect();
            let prefetcher = self.pose_batches(plan, Some(epoch), true);
            loop {
                if let Some(reason) = self.interruption() {
                    return Ok(Some(reason));
                }
                if budget.is_some_and(|b| self.started.elapsed().as_secs_f64() >= b) {
                    break 'epochs;
                }
                let Some(batch) = prefetcher.next_batch()? else {
                    break;
                };
                let n = batch.indices.len();
                let t = &mut self.trainer;
                let pose = t.model.pose().expect("the learned alignment has a pose network");
                let input = Tensor::from_vec(batch.input, (n, c, h, w), &t.device)?;
                let targets = Tensor::from_vec(batch.targets.clone(), n, &t.device)?;
                let scores = pose.forward(&input, Phase::Train)?;
                let loss = candle_nn::loss::cross_entropy(&scores, &targets)?;
                let schedule = self.pose_schedule();
                let t = &mut self.trainer;
                let lr = schedule.at(t.position.pose_step);
                let optimizer = t.pose_optimizer.as_mut().expect("made with the pose network");
                optimizer.step(&loss.backward()?, lr)?;
                t.position.pose_step += 1;

                let right = correct(&scores, &batch.targets)?;
                let stats = StepStats {
                    epoch: epoch + 1,
                    batch: (t.position.pose_step - epoch as u64 * per_epoch) as usize,
                    batches: per_epoch as usize,
                    step: t.position.pose_step,
                    total_steps: schedule.total,
                    loss: f64::from(loss.to_scalar::<f32>()?),
                    accuracy: right as f64 / n as f64,
                    t: t.loss.t,
                    lr,
                    samples_per_sec: throughput.add(n),
                };
                self.send(Event::PoseStep(stats));
                if let Some(seconds) = self.pose_pace.step() {
                    self.fit_pose_epochs(seconds);
                }
            }
        }
        self.trainer.position.pose_done = true;
        let report = self.score_pose()?;
        tracing::info!(
            "pose network: {} steps; names the turn of {:.1}% of the validation clouds ({:.1}% \
             are not turned)",
            self.trainer.position.pose_step,
            100.0 * report.accuracy,
            100.0 * report.unturned
        );
        self.send(Event::Pose(report));
        Ok(None)
    }

    /// Judges, with the pose network as trained so far, which turn each training cloud's own
    /// upright pose shows, where it is confident; from then on, targets count from the digit as
    /// written rather than from the cloud as the set has it.
    ///
    /// NOTE: the training clouds were themselves rotated when the set was made, so about one in
    /// ten of them, taken as upright, is on its head or turned over already. A target counted
    /// from such a cloud names the wrong turn, and the network, trained on those, learned the
    /// turns it sees barely better than always answering none. Its own judgement of which
    /// clouds came turned, midway, removes most of those wrong targets.
    fn relabel_references(&mut self) -> Result<(), TrainError> {
        /// The probability a turn must have for a cloud to count as turned.
        const CONFIDENT: f32 = 0.6;
        let t = &self.trainer;
        let pose = t.model.pose().expect("the learned alignment has a pose network");
        let [c, h, w] = pose::INPUT;
        self.calibrate_pose(&epoch_order(&t.train, t.config.seed ^ 0x5eed, 0))?;
        let mut references = vec![0u8; t.set.len()];
        let plan: Vec<Vec<usize>> = t.train.chunks(t.config.batch).map(<[usize]>::to_vec).collect();
        let batches = self.pose_batches(plan, None, false);
        while let Some(batch) = batches.next_batch()? {
            let n = batch.indices.len();
            let input = Tensor::from_vec(batch.input, (n, c, h, w), &t.device)?;
            let probabilities =
                candle_nn::ops::softmax_last_dim(&pose.forward(&input, Phase::Eval)?)?;
            for (&i, p) in batch.indices.iter().zip(probabilities.to_vec2::<f32>()?) {
                let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                if best != 0 && p[best] > CONFIDENT {
                    references[i] = best as u8;
                }
            }
        }
        let turned = references.iter().filter(|&&k| k != 0).count();
        tracing::info!(
            "the pose network judges {turned} of {} training clouds to have come turned",
            t.train.len()
        );
        self.trainer.pose_references = Arc::new(references);
        Ok(())
    }

    /// Re-estimates the pose network's batch-norm statistics over batches of `order`.
    fn calibrate_pose(&self, order: &[usize]) -> Result<(), TrainError> {
        let t = &self.trainer;
        let config = &t.config;
        let pose = t.model.pose().expect("the learned alignment has a pose network");
        let [c, h, w] = pose::INPUT;
        let plan: Vec<Vec<usize>> = order
            .chunks(config.batch)
            .take(config.calibration_batches)
            .map(<[usize]>::to_vec)
            .collect();
        let batches = self.pose_batches(plan, Some(0), true);
        while let Some(batch) = batches.next_batch()? {
            let input = Tensor::from_vec(batch.input, (batch.indices.len(), c, h, w), &t.device)?;
            pose.forward(&input, Phase::Calibrate)?;
        }
        Ok(())
    }

    /// The pose network's batches of `plan`, made ahead on a worker thread: each cloud turned
    /// as in training pass `epoch` (not at all without one), with `mixed` then by one of the
    /// four turns, and its target counted from the training clouds' judged turns, if judged.
    fn pose_batches(
        &self,
        plan: Vec<Vec<usize>>,
        epoch: Option<usize>,
        mixed: bool,
    ) -> Prefetcher<PoseBatch> {
        let t = &self.trainer;
        let augment = epoch.map_or(Augment::None, |epoch| Augment::Random {
            distribution: t.config.augment,
            seed: t.config.seed ^ POSE_SEED,
            epoch,
        });
        let (set, references) = (Arc::clone(&t.set), Arc::clone(&t.pose_references));
        Prefetcher::start(plan, 3, move |i| {
            Ok(make_pose_batch(&set, i, augment, mixed, &references))
        })
    }

    /// Readies the pose network for use: re-estimates its batch-norm statistics over training
    /// batches, and counts how often each turn occurs under the training rotations alone; then
    /// scores it on the validation clouds, turned as in training.
    fn score_pose(&self) -> Result<PoseReport, TrainError> {
        let t = &self.trainer;
        let config = &t.config;
        let pose = t.model.pose().expect("the learned alignment has a pose network");
        let [c, h, w] = pose::INPUT;
        let batches = |indices: &[usize], epoch: usize| {
            let plan = indices.chunks(config.batch).map(<[usize]>::to_vec).collect();
            self.pose_batches(plan, Some(epoch), false)
        };
        let order = epoch_order(&t.train, config.seed ^ 0x5eed, 0);
        self.calibrate_pose(&order)?;
        // One pass over the training clouds turned as in training, counting the turns (with one
        // of each more, so that none has a share of zero).
        let mut counts = [1usize; 4];
        let counting = batches(&order, 1);
        while let Some(batch) = counting.next_batch()? {
            batch.targets.iter().for_each(|&k| counts[k as usize] += 1);
        }
        let total = counts.iter().sum::<usize>() as f64;
        pose.set_shares(counts.map(|n| n as f64 / total))?;

        let (mut right, mut unturned) = (0, 0);
        let scoring = batches(&t.val, 1 << 20);
        while let Some(batch) = scoring.next_batch()? {
            let input = Tensor::from_vec(batch.input, (batch.indices.len(), c, h, w), &t.device)?;
            right += correct(&pose.scores(&input)?, &batch.targets)?;
            unturned += batch.targets.iter().filter(|&&k| k == 0).count();
        }
        let n = t.val.len().max(1) as f64;
        Ok(PoseReport { accuracy: right as f64 / n, unturned: unturned as f64 / n })
    }

    /// Waits while paused; says whether to stop, and why.
    fn interruption(&self) -> Option<Reason> {
        let mut paused = self.control.paused.lock().expect("the control lock is never poisoned");
        if *paused && !self.control.stop.load(Ordering::Relaxed) {
            self.send(Event::Paused);
            while *paused && !self.control.stop.load(Ordering::Relaxed) {
                paused =
                    self.control.wake.wait(paused).expect("the control lock is never poisoned");
            }
            self.send(Event::Resumed);
        }
        if self.control.stop.load(Ordering::Relaxed) {
            return Some(Reason::Stopped);
        }
        let limit = self.trainer.config.time_limit_minutes?;
        (self.started.elapsed().as_secs_f64() >= limit * 60.0).then_some(Reason::TimeLimit)
    }

    /// Re-estimates batch-norm statistics, evaluates on the validation split, reports, saves.
    fn finish_epoch(&mut self, tally: Tally, started: Instant) -> Result<(), TrainError> {
        self.calibrate()?;
        let t = &self.trainer;
        let evaluation = evaluate(
            &t.model,
            &t.set,
            &t.val,
            t.config.batch.max(32),
            &[Pass::PLAIN],
            Some(&t.loss),
            &t.device,
        )?;
        let confusion = evaluation.confusion.clone().unwrap_or_default();
        let labels = t.set.labels().expect("training sets are labelled");
        let mistakes = evaluation
            .indices
            .iter()
            .zip(&evaluation.predictions)
            .filter(|&(&i, &p)| labels[i] != p)
            .map(|(&i, &p)| Mistake { index: i, label: labels[i], predicted: p })
            .collect();

        let record = EpochRecord {
            epoch: t.position.epoch + usize::from(t.position.batch > 0),
            step: t.position.step,
            train_loss: tally.loss / tally.batches as f64,
            train_accuracy: tally.correct / tally.samples as f64,
            val_loss: evaluation.loss.unwrap_or(f64::NAN),
            val_accuracy: confusion.accuracy(),
            t: t.loss.t,
            lr: tally.lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        let best = self.trainer.best.is_none_or(|b| record.val_accuracy > b);
        if best {
            self.trainer.best = Some(record.val_accuracy);
        }
        self.trainer.history.push(record.clone());
        tracing::info!(
            "epoch {}: train loss {:.4}, accuracy {:.4}; validation loss {:.4}, accuracy {:.4}; t {:.4}",
            record.epoch,
            record.train_loss,
            record.train_accuracy,
            record.val_loss,
            record.val_accuracy,
            record.t
        );
        let report = EpochReport { record, confusion, mistakes, best };
        self.send(Event::Epoch(Box::new(report)));
        self.save(best)
    }

    /// Runs a few training batches in calibration mode, so the running statistics of batch
    /// normalisation match the current weights (they lag them while training, which can make an
    /// early-stopped model predict one class for everything).
    fn calibrate(&self) -> Result<(), TrainError> {
        let t = &self.trainer;
        let config = &t.config;
        let order = epoch_order(&t.train, config.seed ^ 0x5eed, t.position.epoch);
        let plan: Vec<Vec<usize>> = order
            .chunks_exact(config.batch)
            .take(config.calibration_batches)
            .map(<[usize]>::to_vec)
            .collect();
        let augment = Augment::Random {
            distribution: config.augment,
            seed: config.seed,
            epoch: t.position.epoch,
        };
        let inputs = t.model.inputs();
        let [c, h, w] = inputs.shape();
        let prefetcher = Prefetcher::spawn(Arc::clone(&t.set), plan, inputs, augment, 2);
        while let Some(batch) = prefetcher.next_batch()? {
            let input = Tensor::from_vec(batch.input, (batch.indices.len(), c, h, w), &t.device)?;
            t.model.embed(&input, Phase::Calibrate)?;
        }
        Ok(())
    }

    /// Writes `last` (with the optimiser), `best` when `best`, and `metrics.csv`.
    fn save(&self, best: bool) -> Result<(), TrainError> {
        let Some(dir) = &self.trainer.out else {
            return Ok(());
        };
        let t = &self.trainer;
        let meta = CheckpointMeta {
            format: checkpoint::FORMAT,
            model: t.config.model.clone(),
            train: t.config.clone(),
            position: t.position,
            t: t.loss.t,
            has_optimizer: true,
            best_val_accuracy: t.best,
            history: t.history.clone(),
            pose_references: t.pose_references.to_vec(),
        };
        let last = dir.join("last.safetensors");
        let pose_training = t.pose_optimizer.is_some() && !t.position.pose_done;
        let optimizer = if pose_training { t.pose_optimizer.as_ref() } else { Some(&t.optimizer) };
        checkpoint::save(&last, &t.model, optimizer, &meta)?;
        self.send(Event::Saved(last));
        if best {
            let path = dir.join("best.safetensors");
            checkpoint::save(
                &path,
                &t.model,
                None,
                &CheckpointMeta { has_optimizer: false, ..meta },
            )?;
            self.send(Event::Saved(path));
        }
        write_metrics(&dir.join("metrics.csv"), &t.history)?;
        Ok(())
    }
}

/// Keeps the pose network's draws (order, rotations) apart from the classifier's.
const POSE_SEED: u64 = 0x9053_5eed;

/// How many rows of `scores` (`[N, classes]`) have their largest value at `targets`.
fn correct(scores: &Tensor, targets: &[u32]) -> candle_core::Result<usize> {
    let predicted: Vec<u32> = scores.argmax(1)?.to_vec1()?;
    Ok(predicted.iter().zip(targets).filter(|(p, t)| p == t).count())
}

/// Writes one row per epoch, atomically.
fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<(), DataError> {
    let mut text =
        String::from("epoch,step,train_loss,train_accuracy,val_loss,val_accuracy,t,lr,seconds\n");
    for r in history {
        text.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3e},{:.1}\n",
            r.epoch,
            r.step,
            r.train_loss,
            r.train_accuracy,
            r.val_loss,
            r.val_accuracy,
            r.t,
            r.lr,
            r.seconds
        ));
    }
    write_atomically(path, |tmp| std::fs::write(tmp, &text).map_err(|e| DataError::io(path, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epochs_that_fit_follow_the_later_epochs() {
        // The first epoch (30 s) is left out once later ones are timed: 21 s each, 21.42 with
        // the margin, so 4 more fit in 100 s.
        assert_eq!(epochs_that_fit(3, &[30.0, 20.0, 22.0], 100.0), 7);
        // With the first epoch alone, it is the pace: 100 / 30.6 -> 3 more.
        assert_eq!(epochs_that_fit(1, &[30.0], 100.0), 4);
        // Time nearly or wholly spent: the run ends with the epoch it is at.
        assert_eq!(epochs_that_fit(5, &[20.0, 20.0], 15.0), 5);
        assert_eq!(epochs_that_fit(5, &[20.0, 20.0], -3.0), 5);
        assert_eq!(epochs_that_fit(5, &[], 100.0), 5);
    }
}
