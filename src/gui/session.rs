//! What the window shows: the dataset, the sample in view and its rotation, the model, its
//! predictions and mistakes, and the messages for the user.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use digit3d::Point;
use digit3d::align::Alignment;
use digit3d::dataset::{CloudSet, Dataset, LoadOptions, LoadReport};
use digit3d::nn::head::CLASSES;
use digit3d::rotation::{Angles, Rotation};
use digit3d::train::Mistake;
use digit3d::train::eval::{Confusion, Tta};
use digit3d::views::{Boards, VIEW_SIZE};

use super::Args;
use super::jobs::{Jobs, Predictor};

/// Which part of the dataset a sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

/// A dataset in memory, shared with background jobs.
#[derive(Clone)]
pub struct Data {
    pub path: PathBuf,
    pub train: Option<Arc<CloudSet>>,
    pub test: Option<Arc<CloudSet>>,
}

impl Data {
    /// Loads the dataset at `path`, skipping bad samples (the report says which).
    pub fn load(path: &Path) -> anyhow::Result<(Data, LoadReport)> {
        let (dataset, report) = Dataset::open(path, LoadOptions::default())?;
        let data = Data {
            path: path.to_owned(),
            train: dataset.train.map(Arc::new),
            test: dataset.test.map(Arc::new),
        };
        anyhow::ensure!(
            data.train.as_ref().is_some_and(|s| !s.is_empty())
                || data.test.as_ref().is_some_and(|s| !s.is_empty()),
            "{} holds no readable clouds",
            path.display()
        );
        Ok((data, report))
    }

    pub fn set(&self, part: Part) -> Option<&Arc<CloudSet>> {
        match part {
            Part::Train => self.train.as_ref(),
            Part::Test => self.test.as_ref(),
        }
    }

    /// The first part that has samples.
    fn first_part(&self) -> Part {
        if self.train.as_ref().is_some_and(|s| !s.is_empty()) { Part::Train } else { Part::Test }
    }
}

/// A message shown in the window until dismissed.
pub struct Message {
    pub text: String,
    pub error: bool,
    pub at: Instant,
}

/// The model loaded for predictions.
pub struct LoadedModel {
    pub path: PathBuf,
    /// A one-line description: architecture, input, alignment, epoch, validation accuracy.
    pub describe: String,
    pub predictor: Predictor,
}

/// Validation results of a model over the training set: the confusion matrix and the samples
/// it gets wrong.
#[derive(Default)]
pub struct Mistakes {
    /// Where they came from ("epoch 3", "checkpoint best.safetensors").
    pub source: String,
    pub confusion: Confusion,
    pub list: Vec<Mistake>,
    /// The confusion-matrix cell the list is narrowed to: (true label, prediction).
    pub cell: Option<(u8, u8)>,
}

/// Which samples the browser steps through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub label: Option<u8>,
    pub mistakes_only: bool,
}

/// The state behind the window.
pub struct Session {
    pub data: Data,
    pub part: Part,
    pub index: usize,
    /// The rotation applied to the cloud, and the angles it was set from.
    pub angles: Angles,
    pub rotation: Rotation,
    /// Bumped whenever the sample or its rotation changes.
    pub generation: u64,
    /// Bumped whenever the sample changes.
    pub sample_key: u64,
    /// The rotated cloud and its views, as of `generation`.
    pub rotated: Vec<Point>,
    pub boards: Boards,
    pub views_generation: u64,
    /// How long the last recomputation of the views took.
    pub views_seconds: f64,
    pub filter: Filter,
    pub jump_to: String,
    pub model: Option<LoadedModel>,
    /// The live prediction for the current sample, and the generation it belongs to.
    pub prediction: Option<(u64, [f32; CLASSES])>,
    pub tta: Tta,
    pub mistakes: Option<Mistakes>,
    pub messages: Vec<Message>,
    pub jobs: Jobs,
    /// Also show the grid of the cloud in a canonical pose: which one.
    pub show_canonical: bool,
    pub pose: Alignment,
    pub posed: Vec<Point>,
    pub canonical: Boards,
    /// Bumped whenever `canonical` changes.
    pub canonical_version: u64,
}

impl Session {
    /// Opens the dataset and the checkpoint named on the command line.
    pub fn open(data: &Path, args: &Args) -> anyhow::Result<Session> {
        let (data, report) = Data::load(data)?;
        let mut session = Session {
            part: data.first_part(),
            data,
            index: 0,
            angles: Angles::ZERO,
            rotation: Rotation::IDENTITY,
            generation: 1,
            sample_key: 1,
            rotated: Vec::new(),
            boards: Boards::new(VIEW_SIZE),
            views_generation: 0,
            views_seconds: 0.0,
            filter: Filter::default(),
            jump_to: String::new(),
            model: None,
            prediction: None,
            tta: Tta::NONE,
            mistakes: None,
            messages: Vec::new(),
            jobs: Jobs::default(),
            show_canonical: false,
            pose: Alignment::Upright,
            posed: Vec::new(),
            canonical: Boards::new(VIEW_SIZE),
            canonical_version: 0,
        };
        session.report_skipped(&report);
        if let Some(id) = args.id {
            anyhow::ensure!(
                session.select_id(id),
                "{} has no sample {id}",
                session.data.path.display()
            );
        }
        if let Some(angles) = args.rotate {
            session.set_angles(angles);
        }
        if let Some(checkpoint) = &args.checkpoint {
            session.load_model(checkpoint)?;
        }
        session.refresh_views();
        Ok(session)
    }

    /// Whether anything runs in the background (so the window should redraw to show it).
    pub fn busy(&self) -> bool {
        self.jobs.busy() || self.model.as_ref().is_some_and(|m| m.predictor.busy())
    }

    pub fn set(&self) -> Option<&Arc<CloudSet>> {
        self.data.set(self.part)
    }

    pub fn cloud(&self) -> &[Point] {
        self.set().map_or(&[], |s| s.get(self.index).cloud)
    }

    pub fn id(&self) -> Option<u32> {
        self.set().map(|s| s.ids()[self.index])
    }

    pub fn label(&self) -> Option<u8> {
        self.set().and_then(|s| s.labels()).map(|l| l[self.index])
    }

    /// Shows sample `index` of `part`, keeping the rotation.
    pub fn select(&mut self, part: Part, index: usize) {
        if self.data.set(part).is_some_and(|s| index < s.len()) {
            self.part = part;
            self.index = index;
            self.sample_key += 1;
            self.changed();
        }
    }

    /// Shows the sample with ID `id`, from either part; false when there is none.
    pub fn select_id(&mut self, id: u32) -> bool {
        for part in [Part::Train, Part::Test] {
            if let Some(index) = self.data.set(part).and_then(|s| s.position(id)) {
                self.select(part, index);
                return true;
            }
        }
        false
    }

    /// Steps to the next (`step = 1`) or previous (`-1`) sample the filter lets through.
    pub fn step(&mut self, step: isize) {
        let Some(set) = self.set() else { return };
        let n = set.len() as isize;
        let mut i = self.index as isize;
        for _ in 0..n {
            i = (i + step).rem_euclid(n);
            if self.passes(i as usize) {
                self.select(self.part, i as usize);
                return;
            }
        }
        self.say(false, "no sample matches the filter".into());
    }

    /// Whether sample `index` of the current part passes the filter.
    pub fn passes(&self, index: usize) -> bool {
        let Some(set) = self.set() else { return false };
        if let Some(label) = self.filter.label
            && set.labels().map(|l| l[index]) != Some(label)
        {
            return false;
        }
        if self.filter.mistakes_only {
            let is_mistake = self.part == Part::Train
                && self.mistakes.as_ref().is_some_and(|m| m.list.iter().any(|x| x.index == index));
            return is_mistake;
        }
        true
    }

    pub fn set_angles(&mut self, angles: Angles) {
        self.angles = angles;
        self.rotation = angles.rotation();
        self.changed();
    }

    /// Turns the cloud further by `turn` (applied after its current rotation).
    pub fn turn(&mut self, turn: &Rotation) {
        self.rotation = turn.then_apply(&self.rotation);
        self.angles = self.rotation.angles();
        self.changed();
    }

    pub fn changed(&mut self) {
        self.generation += 1;
    }

    /// Recomputes the rotated cloud and its views when the sample or rotation changed, and asks
    /// the model for a fresh prediction.
    pub fn refresh_views(&mut self) {
        if self.views_generation == self.generation {
            return;
        }
        let started = Instant::now();
        let set = self.data.set(self.part);
        let cloud = set.map(|s| s.get(self.index).cloud).unwrap_or_default();
        self.rotation.rotate_into(cloud, &mut self.rotated);
        self.boards.fill(&self.rotated);
        if self.show_canonical {
            // The learned pose's network is the model's: until its answer arrives (see
            // show_learned_pose), this shows the upright pose it starts from.
            self.pose.apply(&self.rotated, &mut self.posed);
            self.canonical.fill(&self.posed);
            self.canonical_version += 1;
        }
        self.views_seconds = started.elapsed().as_secs_f64();
        self.views_generation = self.generation;
        if let Some(model) = &self.model {
            model.predictor.request(self.generation, &self.rotated, self.tta);
        }
    }

    /// Shows `posed`, the cloud in view as a model with the learned alignment poses it, as the
    /// canonical pose, when that is the pose chosen.
    pub fn show_learned_pose(&mut self, posed: &[Point]) {
        if self.show_canonical && self.pose == Alignment::Learned {
            self.canonical.fill(posed);
            self.canonical_version += 1;
        }
    }

    /// Loads a checkpoint for predictions; on failure the model in use stays.
    pub fn load_model(&mut self, path: &Path) -> anyhow::Result<()> {
        let (predictor, describe) = Predictor::start(path)?;
        self.model = Some(LoadedModel { path: path.to_owned(), describe, predictor });
        self.prediction = None;
        self.views_generation = 0;
        self.say(false, format!("loaded {}", path.display()));
        Ok(())
    }

    /// Replaces the dataset; the sample shown becomes the first, the rotation stays.
    pub fn replace_data(&mut self, data: Data, report: &LoadReport) {
        self.part = data.first_part();
        self.data = data;
        self.index = 0;
        self.mistakes = None;
        self.filter = Filter::default();
        self.sample_key += 1;
        self.say(false, format!("opened {}", self.data.path.display()));
        self.report_skipped(report);
        self.changed();
    }

    fn report_skipped(&mut self, report: &LoadReport) {
        if let Some(first) = report.skipped.first() {
            let counts: Vec<String> =
                report.counts().iter().map(|(kind, n)| format!("{n} {kind}")).collect();
            self.say(
                true,
                format!(
                    "skipped {} samples ({}); first: {}: {first}",
                    report.skipped.len(),
                    counts.join(", "),
                    first.path.display()
                ),
            );
        }
    }

    /// Shows a message; errors stay until dismissed, notes fade.
    pub fn say(&mut self, error: bool, text: String) {
        if error {
            tracing::error!("{text}");
        } else {
            tracing::info!("{text}");
        }
        self.messages.push(Message { text, error, at: Instant::now() });
        const KEPT: usize = 8;
        if self.messages.len() > KEPT {
            self.messages.remove(0);
        }
    }
}
