//! A whole classifier: a backbone, the cosine head, its parameters and its summary.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::compact::{Compact, CompactConfig};
use super::head::CosineHead;
use super::layers::{Builder, LayerRow, Phase};
use super::params::Params;
use super::pose::{self, PoseNet};
use super::xception::{self, Xception};
use crate::Point;
use crate::align::Alignment;
use crate::rotation::Rotation;
use crate::views::{Boards, PROJECTIONS, VIEW_COUNT, VIEW_SIZE, grid_side};

/// Which backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// The published Xception, about 20.9 million parameters: the reference solution's model.
    Xception,
    /// A small network of separable convolutions for CPUs.
    Compact,
}

/// How the 24 views reach the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InputForm {
    /// The 256 x 256 grid, one channel.
    Grid,
    /// The 24 views stacked as channels of 46 x 46: the same pixels without the empty borders.
    Views,
    /// The three boards the views are turned and mirrored from, as channels of 46 x 46: the
    /// same information once, each pixel where the projection put it.
    Boards,
}

impl InputForm {
    /// The shape of one sample, `[C, H, W]`.
    pub fn shape(self) -> [usize; 3] {
        match self {
            InputForm::Grid => [1, grid_side(VIEW_SIZE), grid_side(VIEW_SIZE)],
            InputForm::Views => [VIEW_COUNT, VIEW_SIZE, VIEW_SIZE],
            InputForm::Boards => [PROJECTIONS.len(), VIEW_SIZE, VIEW_SIZE],
        }
    }

    /// The number of values of one sample.
    pub fn values(self) -> usize {
        self.shape().iter().product()
    }
}

/// How a cloud becomes a network input: posed, then drawn as views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preprocess {
    /// The pose taken first.
    pub alignment: Alignment,
    /// The input drawn from it.
    pub form: InputForm,
}

/// Buffers reused from one cloud to the next by [`Preprocess::write`].
#[derive(Debug)]
pub struct Scratch {
    posed: Vec<Point>,
    boards: Boards,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch { posed: Vec::new(), boards: Boards::new(VIEW_SIZE) }
    }
}

impl Preprocess {
    /// Writes the input of `cloud` into `out` (`form.values()` values, 0 and 1).
    pub fn write(&self, cloud: &[Point], scratch: &mut Scratch, out: &mut [f32]) {
        let mut posed = std::mem::take(&mut scratch.posed);
        self.alignment.apply(cloud, &mut posed);
        self.write_posed(&posed, scratch, out);
        scratch.posed = posed;
    }

    /// Writes the input of `cloud`, taken as already posed, into `out`.
    pub fn write_posed(&self, cloud: &[Point], scratch: &mut Scratch, out: &mut [f32]) {
        scratch.boards.fill(cloud);
        match self.form {
            InputForm::Grid => scratch.boards.write_grid(out, 1.0),
            InputForm::Views => scratch.boards.write_views(out, 1.0),
            InputForm::Boards => scratch.boards.write_boards(out, 1.0),
        }
    }
}

/// Everything that decides a model's shape and what it sees; saved with every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The backbone.
    pub architecture: Architecture,
    /// The input form.
    pub input: InputForm,
    /// The pose clouds are put in before their views are taken.
    #[serde(default)]
    pub alignment: Alignment,
    /// The widths of the compact backbone (unused by Xception).
    pub compact: CompactConfig,
    /// The backbone of the pose network (used by the learned alignment only).
    #[serde(default = "pose::default_backbone")]
    pub pose: CompactConfig,
}

impl ModelConfig {
    /// How clouds become this model's inputs.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess { alignment: self.alignment, form: self.input }
    }

    /// The model for `architecture` with its defaults: Xception as the reference solution had
    /// it, on the grid of clouds as they come; the compact network on the three boards of
    /// clouds in their plane pose, the best of the configurations measured.
    pub fn new(architecture: Architecture) -> Self {
        let (input, alignment) = match architecture {
            Architecture::Xception => (InputForm::Grid, Alignment::None),
            Architecture::Compact => (InputForm::Boards, Alignment::Plane),
        };
        ModelConfig {
            architecture,
            input,
            alignment,
            compact: CompactConfig::default(),
            pose: pose::default_backbone(),
        }
    }
}

#[derive(Debug)]
enum Backbone {
    Xception(Box<Xception>),
    Compact(Compact),
}

/// A classifier of clouds: backbone, cosine head and every tensor, and with the learned
/// alignment the pose network that comes before them.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    backbone: Backbone,
    head: CosineHead,
    params: Params,
    summary: Vec<LayerRow>,
    pose: Option<Arc<PoseNet>>,
}

impl Model {
    /// A freshly initialised model; the same `seed` gives the same initial weights.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut params = Params::new(seed, device);
        let mut b = Builder::new(&mut params);
        let input = config.input.shape();
        b.row("input", "InputLayer", input.to_vec(), 0);
        let (backbone, width) = match config.architecture {
            Architecture::Xception => {
                (Backbone::Xception(Box::new(Xception::new(&mut b, input)?)), xception::EMBEDDING)
            }
            Architecture::Compact => {
                let compact = Compact::new(&mut b, input, &config.compact)?;
                let width = compact.width();
                (Backbone::Compact(compact), width)
            }
        };
        let head = CosineHead::new(&mut b, width)?;
        let summary = b.rows;
        let pose = (config.alignment == Alignment::Learned)
            .then(|| PoseNet::new(&config.pose, seed ^ POSE_SEED, device).map(Arc::new))
            .transpose()?;
        Ok(Model { config: config.clone(), backbone, head, params, summary, pose })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The classifier's tensors (the pose network has its own).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The pose network, with the learned alignment.
    pub fn pose(&self) -> Option<&PoseNet> {
        self.pose.as_deref()
    }

    /// One row per layer of the classifier, in order.
    pub fn summary(&self) -> &[LayerRow] {
        &self.summary
    }

    /// How clouds become this model's inputs, to hand to worker threads.
    pub fn inputs(&self) -> Inputs {
        Inputs { preprocess: self.config.preprocess(), pose: self.pose.clone(), after_pose: None }
    }

    /// The embeddings of a batch of inputs `[N, C, H, W]`.
    pub fn embed(&self, input: &Tensor, phase: Phase) -> Result<Tensor> {
        match &self.backbone {
            Backbone::Xception(x) => x.forward(input, phase),
            Backbone::Compact(c) => c.forward(input, phase),
        }
    }

    /// The cosines `[N, 10]` of a batch of inputs.
    pub fn cosines(&self, input: &Tensor, phase: Phase) -> Result<Tensor> {
        self.head.forward(&self.embed(input, phase)?)
    }
}

/// Keeps the pose network's initial weights apart from the classifier's of the same seed.
const POSE_SEED: u64 = 0x9053_0f1a;

/// How clouds become a model's inputs: posed (by geometry, and with the learned alignment by
/// the pose network too), then drawn as the model's input form. Cheap to clone and safe to
/// share with worker threads.
#[derive(Clone, Debug)]
pub struct Inputs {
    preprocess: Preprocess,
    pose: Option<Arc<PoseNet>>,
    /// A turn applied to every cloud once posed, before it is drawn.
    after_pose: Option<Rotation>,
}

impl Inputs {
    /// Inputs posed by geometry alone (the learned alignment stops at its plane pose).
    pub fn new(preprocess: Preprocess) -> Self {
        Inputs { preprocess, pose: None, after_pose: None }
    }

    /// The same inputs with every cloud turned by `turn` once posed: a way to show a model the
    /// other poses a cloud could have landed in, where a pose leaves its sign undecided.
    pub fn turned(mut self, turn: Rotation) -> Self {
        self.after_pose = (turn != Rotation::IDENTITY).then_some(turn);
        self
    }

    /// How the clouds are drawn once posed.
    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// The shape of one input, `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        self.preprocess.form.shape()
    }

    /// The number of values of one input.
    pub fn values(&self) -> usize {
        self.preprocess.form.values()
    }

    /// Writes the inputs of `clouds` into `out` (`values()` each, back to back), computing them
    /// on all cores.
    pub fn write(&self, clouds: &[Vec<Point>], out: &mut [f32]) -> Result<()> {
        let len = self.values();
        if self.pose.is_none() && self.after_pose.is_none() {
            out.par_chunks_mut(len)
                .zip(clouds.par_iter())
                .for_each_init(Scratch::default, |scratch, (out, cloud)| {
                    self.preprocess.write(cloud, scratch, out)
                });
            return Ok(());
        }
        let posed = self.posed(clouds)?;
        let drawn = Preprocess { alignment: Alignment::None, form: self.preprocess.form };
        out.par_chunks_mut(len)
            .zip(posed.par_iter())
            .for_each_init(Scratch::default, |scratch, (out, cloud)| {
                drawn.write(cloud, scratch, out)
            });
        Ok(())
    }

    /// `clouds` in the pose the model sees them in.
    pub fn posed(&self, clouds: &[Vec<Point>]) -> Result<Vec<Vec<Point>>> {
        let mut posed = match &self.pose {
            Some(net) => self.learned_poses(net, clouds)?,
            None => clouds
                .par_iter()
                .map(|cloud| {
                    let mut posed = Vec::new();
                    self.preprocess.alignment.apply(cloud, &mut posed);
                    posed
                })
                .collect(),
        };
        if let Some(turn) = self.after_pose {
            posed
                .par_iter_mut()
                .for_each(|cloud| cloud.iter_mut().for_each(|p| *p = turn.apply(*p)));
        }
        Ok(posed)
    }

    /// The upright poses of `clouds`, each turned back by the turn the pose network names for
    /// it.
    fn learned_poses(&self, net: &PoseNet, clouds: &[Vec<Point>]) -> Result<Vec<Vec<Point>>> {
        let boards = Preprocess { alignment: Alignment::None, form: InputForm::Boards };
        let len = boards.form.values();
        let mut input = vec![0f32; clouds.len() * len];
        let mut posed: Vec<Vec<Point>> = vec![Vec::new(); clouds.len()];
        input.par_chunks_mut(len).zip(posed.par_iter_mut()).zip(clouds.par_iter()).for_each_init(
            Scratch::default,
            |scratch, ((out, posed), cloud)| {
                Alignment::Learned.apply(cloud, posed);
                boards.write_posed(posed, scratch, out);
            },
        );
        let [c, h, w] = pose::INPUT;
        let input = Tensor::from_vec(input, (clouds.len(), c, h, w), net.params().device())?;
        let turns = net.turns(&input)?;
        posed.par_iter_mut().zip(&turns).for_each(|(cloud, turn)| {
            let undo = turn.inverse();
            for p in cloud.iter_mut() {
                *p = undo.apply(*p);
            }
        });
        Ok(posed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xception_counts_the_parameters_keras_does() {
        // Keras: Xception(weights=None, include_top=False, input_shape=(256, 256, 1),
        // pooling="avg") has 20,860,904 parameters, 20,806,376 of them trainable. The cosine
        // head adds 2048 x 10.
        let model = Model::new(&ModelConfig::new(Architecture::Xception), 0, &Device::Cpu).unwrap();
        let (all, trainable) = model.params().count();
        assert_eq!(all - 20_480, 20_860_904);
        assert_eq!(trainable - 20_480, 20_806_376);
        let last = &model.summary()[model.summary().len() - 2];
        assert_eq!((last.name.as_str(), last.output.as_slice()), ("avg_pool", &[2048][..]));
    }

    #[test]
    fn the_summary_follows_the_shapes_the_forward_pass_makes() {
        for input in [InputForm::Boards, InputForm::Views] {
            let mut config = ModelConfig::new(Architecture::Compact);
            config.input = input;
            let model = Model::new(&config, 0, &Device::Cpu).unwrap();
            let [c, h, w] = input.shape();
            let zeros = Tensor::zeros((2, c, h, w), candle_core::DType::F32, &Device::Cpu).unwrap();
            let embedding = model.embed(&zeros, Phase::Eval).unwrap();
            let pool = model.summary().iter().find(|r| r.name == "avg_pool").unwrap();
            assert_eq!(embedding.dims(), [2, pool.output[0]]);
            assert_eq!(model.cosines(&zeros, Phase::Eval).unwrap().dims(), [2, 10]);
            let counted: usize = model.summary().iter().map(|r| r.params).sum();
            assert_eq!(counted, model.params().count().0);
        }
    }

    #[test]
    fn inputs_with_the_learned_pose_are_those_of_the_clouds_it_poses() {
        let mut config = ModelConfig::new(Architecture::Compact);
        config.alignment = Alignment::Learned;
        let model = Model::new(&config, 0, &Device::Cpu).unwrap();
        let clouds: Vec<Vec<Point>> = (0..3)
            .map(|k| {
                (0..200)
                    .map(|i| {
                        let t = (i + 50 * k) as f32 * 0.13;
                        [t.sin() * 0.5, (t * 0.7).cos() * 0.3, (t * 2.1).sin() * 0.05]
                    })
                    .collect()
            })
            .collect();
        let inputs = model.inputs();
        let mut written = vec![0f32; clouds.len() * inputs.values()];
        inputs.write(&clouds, &mut written).unwrap();
        let posed = inputs.posed(&clouds).unwrap();
        let drawn = Preprocess { alignment: Alignment::None, form: InputForm::Boards };
        let mut expected = vec![0f32; clouds.len() * inputs.values()];
        for (cloud, out) in posed.iter().zip(expected.chunks_mut(inputs.values())) {
            drawn.write(cloud, &mut Scratch::default(), out);
        }
        assert_eq!(written, expected);
        // Each posed cloud is its upright pose turned by one of the four turns: the same
        // distances from the centre, point by point.
        for (cloud, posed) in clouds.iter().zip(&posed) {
            let mut upright = Vec::new();
            Alignment::Upright.apply(cloud, &mut upright);
            for (p, q) in upright.iter().zip(posed) {
                let (a, b) =
                    (p.map(|v| v * v).iter().sum::<f32>(), q.map(|v| v * v).iter().sum::<f32>());
                assert!((a - b).abs() < 1e-5);
                assert!((p[2].abs() - q[2].abs()).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        let config = ModelConfig::new(Architecture::Compact);
        let a = Model::new(&config, 7, &Device::Cpu).unwrap();
        let b = Model::new(&config, 7, &Device::Cpu).unwrap();
        let c = Model::new(&config, 8, &Device::Cpu).unwrap();
        let first = |m: &Model| -> Vec<f32> {
            m.params().iter().next().unwrap().var.flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(first(&a), first(&b));
        assert_ne!(first(&a), first(&c));
    }
}
