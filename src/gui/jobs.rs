//! Work the window hands to threads of its own: file dialogs, loading a dataset, scoring a
//! checkpoint, exporting predictions and the live prediction of the sample in view. Results come
//! back over channels and are applied by [`poll_jobs`] between frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use anyhow::Context;
use bevy::prelude::*;
use candle_core::{Device, Tensor};
use digit3d::Point;
use digit3d::atomic::write_atomically;
use digit3d::dataset::{CloudSet, DataError, LoadReport, write_labels};
use digit3d::nn::head::CLASSES;
use digit3d::nn::layers::Phase;
use digit3d::nn::model::Model;
use digit3d::train::Mistake;
use digit3d::train::checkpoint::{Checkpoint, CheckpointMeta, sidecar};
use digit3d::train::data::stratified_split;
use digit3d::train::eval::{Pass, Tta, argmax, evaluate};

use super::session::{Data, Mistakes, Session};
use super::training::TrainingPanel;

/// What a file dialog was opened for.
#[derive(Clone, Copy, Debug)]
pub enum Dialog {
    OpenData,
    OpenCheckpoint,
    SaveCheckpoint,
    ExportPredictions,
    RunFolder,
}

/// A finished background job.
enum Done {
    Picked(Dialog, Option<PathBuf>),
    Loaded(PathBuf, anyhow::Result<(Data, LoadReport)>),
    Scored(anyhow::Result<Box<Mistakes>>),
    /// A file was written (or failed to be): what to tell the user.
    Wrote(anyhow::Result<String>),
}

/// Background jobs in flight, and the channel they report on.
pub struct Jobs {
    tx: Sender<Done>,
    rx: Receiver<Done>,
    running: usize,
}

impl Default for Jobs {
    fn default() -> Self {
        let (tx, rx) = channel();
        Jobs { tx, rx, running: 0 }
    }
}

impl Jobs {
    pub fn busy(&self) -> bool {
        self.running > 0
    }

    fn spawn(&mut self, name: &str, job: impl FnOnce() -> Done + Send + 'static) {
        let tx = self.tx.clone();
        let spawned =
            std::thread::Builder::new().name(format!("digit3d-{name}")).spawn(move || {
                let _ = tx.send(job());
            });
        if spawned.is_ok() {
            self.running += 1;
        }
    }

    /// Opens a file dialog without blocking the window.
    pub fn dialog(&mut self, dialog: Dialog, start: &Path) {
        let start = start.to_owned();
        self.spawn("dialog", move || {
            let base = rfd::FileDialog::new().set_directory(&start);
            let picked = match dialog {
                Dialog::OpenData => base.set_title("Open a dataset folder").pick_folder(),
                Dialog::RunFolder => base.set_title("Folder for the training run").pick_folder(),
                Dialog::OpenCheckpoint => base
                    .set_title("Open a checkpoint")
                    .add_filter("checkpoint", &["safetensors"])
                    .pick_file(),
                Dialog::SaveCheckpoint => base
                    .set_title("Save the model as")
                    .add_filter("checkpoint", &["safetensors"])
                    .set_file_name("model.safetensors")
                    .save_file(),
                Dialog::ExportPredictions => base
                    .set_title("Export test-set predictions")
                    .add_filter("CSV", &["csv"])
                    .set_file_name("submission.csv")
                    .save_file(),
            };
            Done::Picked(dialog, picked)
        });
    }

    /// Loads a dataset in the background; the one in use stays until it succeeds.
    pub fn load_data(&mut self, path: PathBuf) {
        self.spawn("load", move || {
            let loaded = Data::load(&path);
            Done::Loaded(path, loaded)
        });
    }

    /// Scores a checkpoint on its validation split of `set`.
    pub fn score(&mut self, checkpoint: PathBuf, set: Arc<CloudSet>) {
        self.spawn("score", move || Done::Scored(score(&checkpoint, &set).map(Box::new)))
    }

    /// Writes the predictions of a checkpoint for every cloud of `set` to `out`.
    pub fn export(&mut self, checkpoint: PathBuf, set: Arc<CloudSet>, tta: Tta, out: PathBuf) {
        self.spawn("export", move || Done::Wrote(export(&checkpoint, &set, tta, &out)))
    }

    /// Copies a checkpoint and its sidecar to `out`.
    pub fn save_checkpoint(&mut self, checkpoint: PathBuf, out: PathBuf) {
        self.spawn("save", move || Done::Wrote(copy_checkpoint(&checkpoint, &out)))
    }
}

/// Applies the results of finished jobs, the live prediction and the trainer's events.
pub fn poll_jobs(mut session: NonSendMut<Session>, mut training: NonSendMut<TrainingPanel>) {
    let finished: Vec<Done> = session.jobs.rx.try_iter().collect();
    for done in finished {
        session.jobs.running -= 1;
        apply(&mut session, &mut training, done);
    }
    if let Some(model) = &session.model
        && let Some((generation, result)) = model.predictor.latest()
    {
        match result {
            Ok(predicted) => {
                session.prediction = Some((generation, predicted.cosines));
                if let Some(posed) = predicted.posed {
                    session.show_learned_pose(&posed);
                }
            }
            Err(e) => session.say(true, format!("prediction failed: {e}")),
        }
    }
    training.poll(&mut session);
}

fn apply(session: &mut Session, training: &mut TrainingPanel, done: Done) {
    match done {
        Done::Picked(_, None) => {}
        Done::Picked(Dialog::OpenData, Some(path)) => session.jobs.load_data(path),
        Done::Picked(Dialog::RunFolder, Some(path)) => {
            training.out = path.display().to_string();
        }
        Done::Picked(Dialog::OpenCheckpoint, Some(path)) => {
            if let Err(e) = session.load_model(&path) {
                session.say(true, format!("{e:#}"));
            }
        }
        Done::Picked(Dialog::SaveCheckpoint, Some(out)) => match &session.model {
            Some(model) => {
                let from = model.path.clone();
                session.jobs.save_checkpoint(from, out);
            }
            None => session.say(true, "no model to save: train one or open a checkpoint".into()),
        },
        Done::Picked(Dialog::ExportPredictions, Some(out)) => {
            match (&session.model, session.data.test.clone().or(session.data.train.clone())) {
                (Some(model), Some(set)) => {
                    let (from, tta) = (model.path.clone(), session.tta);
                    session.jobs.export(from, set, tta, out);
                }
                (None, _) => session.say(true, "no model to predict with".into()),
                (_, None) => session.say(true, "no clouds to predict".into()),
            }
        }
        Done::Loaded(_, Ok((data, report))) => session.replace_data(data, &report),
        Done::Loaded(path, Err(e)) => {
            session.say(true, format!("cannot open {}: {e:#}", path.display()));
        }
        Done::Scored(Ok(mistakes)) => {
            session.say(
                false,
                format!("{}: accuracy {:.4}", mistakes.source, mistakes.confusion.accuracy()),
            );
            session.mistakes = Some(*mistakes);
        }
        Done::Scored(Err(e)) | Done::Wrote(Err(e)) => session.say(true, format!("{e:#}")),
        Done::Wrote(Ok(note)) => session.say(false, note),
    }
}

fn score(path: &Path, set: &Arc<CloudSet>) -> anyhow::Result<Mistakes> {
    let checkpoint = Checkpoint::read(path)?;
    let model = checkpoint.model(&Device::Cpu)?;
    let labels = set.labels().context("the training clouds have no labels to score against")?;
    let config = &checkpoint.meta.train;
    let (_, val) = stratified_split(labels, config.val_fraction, config.seed);
    anyhow::ensure!(!val.is_empty(), "the checkpoint's validation split of this set is empty");
    let evaluation = evaluate(&model, set, &val, 64, &[Pass::PLAIN], None, &Device::Cpu)?;
    let list = val
        .iter()
        .zip(&evaluation.predictions)
        .filter(|&(&i, &p)| labels[i] != p)
        .map(|(&i, &p)| Mistake { index: i, label: labels[i], predicted: p })
        .collect();
    Ok(Mistakes {
        source: format!(
            "{}, validation split",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ),
        confusion: evaluation.confusion.unwrap_or_default(),
        list,
        cell: None,
    })
}

fn export(path: &Path, set: &Arc<CloudSet>, tta: Tta, out: &Path) -> anyhow::Result<String> {
    let checkpoint = Checkpoint::read(path)?;
    let model = checkpoint.model(&Device::Cpu)?;
    let config = &checkpoint.meta.train;
    let passes = tta.passes(config.augment, config.seed);
    let indices: Vec<usize> = (0..set.len()).collect();
    let evaluation = evaluate(&model, set, &indices, 64, &passes, None, &Device::Cpu)?;
    let rows = set.ids().iter().zip(&evaluation.cosines).map(|(&id, c)| (id, argmax(c)));
    write_labels(out, rows)?;
    Ok(format!("wrote {} predictions to {}", set.len(), out.display()))
}

fn copy_checkpoint(from: &Path, to: &Path) -> anyhow::Result<String> {
    let to = to.with_extension("safetensors");
    for (source, dest) in [(from.to_owned(), to.clone()), (sidecar(from), sidecar(&to))] {
        if source == dest {
            continue;
        }
        write_atomically(&dest, |tmp| {
            std::fs::copy(&source, tmp).map(drop).map_err(|e| DataError::io(&source, e))
        })?;
    }
    Ok(format!("saved the model to {}", to.display()))
}

/// A prediction request: the rotated cloud of one generation of the view.
struct Request {
    generation: u64,
    cloud: Vec<Point>,
    tta: Tta,
}

/// What the model makes of one cloud: its cosines, and with the learned alignment the cloud in
/// the pose the model sees it in.
pub struct Predicted {
    pub cosines: [f32; CLASSES],
    pub posed: Option<Vec<Point>>,
}

type Prediction = (u64, Result<Predicted, String>);

/// A model on a thread of its own that predicts the sample in view, always the newest request
/// first (older ones waiting behind it are dropped).
pub struct Predictor {
    requests: Sender<Request>,
    results: Receiver<Prediction>,
    pending: Arc<AtomicUsize>,
}

impl Predictor {
    /// Reads the checkpoint and starts the thread; also returns a description of the model.
    pub fn start(path: &Path) -> anyhow::Result<(Predictor, String)> {
        let checkpoint = Checkpoint::read(path)?;
        let model = checkpoint.model(&Device::Cpu)?;
        let describe = describe(&checkpoint.meta);
        let (requests, inbox) = channel::<Request>();
        let (outbox, results) = channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&pending);
        let meta = checkpoint.meta;
        std::thread::Builder::new().name("digit3d-predict".into()).spawn(move || {
            while let Ok(mut request) = inbox.recv() {
                let mut skipped = 0;
                while let Ok(newer) = inbox.try_recv() {
                    request = newer;
                    skipped += 1;
                }
                let passes = request.tta.passes(meta.train.augment, meta.train.seed);
                let result = predict(&model, &request.cloud, &passes).map_err(|e| e.to_string());
                counter.fetch_sub(skipped + 1, Ordering::Relaxed);
                if outbox.send((request.generation, result)).is_err() {
                    break;
                }
            }
        })?;
        Ok((Predictor { requests, results, pending }, describe))
    }

    /// Asks for the cosines of `cloud` (already rotated as shown), averaged over the passes of
    /// `tta`.
    pub fn request(&self, generation: u64, cloud: &[Point], tta: Tta) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let request = Request { generation, cloud: cloud.to_vec(), tta };
        if self.requests.send(request).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The newest finished prediction, if one arrived since the last call.
    pub fn latest(&self) -> Option<Prediction> {
        self.results.try_iter().last()
    }

    pub fn busy(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }
}

/// The cosines of one cloud, averaged over the rotations of `passes`, and with the learned
/// alignment the cloud as the model poses it.
fn predict(model: &Model, cloud: &[Point], passes: &[Pass]) -> anyhow::Result<Predicted> {
    let inputs = model.inputs();
    let [c, h, w] = inputs.shape();
    let len = inputs.values();
    let mut input = vec![0f32; passes.len() * len];
    // The passes that share a turn are drawn together, so that a pose network poses their
    // rotated copies in one batch rather than one at a time.
    let mut drawn = vec![false; passes.len()];
    for first in 0..passes.len() {
        if drawn[first] {
            continue;
        }
        let turn = passes[first].turn;
        let group: Vec<usize> = (first..passes.len()).filter(|&i| passes[i].turn == turn).collect();
        let clouds: Vec<Vec<Point>> =
            group.iter().map(|&i| passes[i].augment.angles(0).rotation().rotate(cloud)).collect();
        let mut values = vec![0f32; group.len() * len];
        inputs.clone().turned(turn).write(&clouds, &mut values)?;
        for (&i, values) in group.iter().zip(values.chunks(len)) {
            input[i * len..(i + 1) * len].copy_from_slice(values);
            drawn[i] = true;
        }
    }
    let input = Tensor::from_vec(input, (passes.len(), c, h, w), &Device::Cpu)?;
    let cosines = model.cosines(&input, Phase::Eval)?.mean(0)?.to_vec1::<f32>()?;
    let mut out = [0f32; CLASSES];
    out.copy_from_slice(&cosines);
    let posed = match model.pose() {
        Some(_) => inputs.posed(&[cloud.to_vec()])?.pop(),
        None => None,
    };
    Ok(Predicted { cosines: out, posed })
}

fn describe(meta: &CheckpointMeta) -> String {
    let model = &meta.model;
    let val = meta
        .best_val_accuracy
        .map_or(String::new(), |a| format!(", best validation accuracy {a:.4}"));
    format!(
        "{:?} on {:?}, alignment {:?}, epoch {}{val}",
        model.architecture, model.input, model.alignment, meta.position.epoch
    )
    .to_lowercase()
}
