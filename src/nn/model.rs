//! A whole classifier: a backbone, the cosine head, its parameters and its summary.

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::compact::{Compact, CompactConfig};
use super::head::CosineHead;
use super::layers::{Builder, LayerRow, Phase};
use super::params::Params;
use super::xception::{self, Xception};
use crate::Point;
use crate::align::Alignment;
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
        self.alignment.apply(cloud, &mut scratch.posed);
        scratch.boards.fill(&scratch.posed);
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
}

impl ModelConfig {
    /// How clouds become this model's inputs.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess { alignment: self.alignment, form: self.input }
    }

    /// The model for `architecture` with its default input: the grid for Xception (as the
    /// reference), the stacked views for the compact network; clouds as they come.
    pub fn new(architecture: Architecture) -> Self {
        let input = match architecture {
            Architecture::Xception => InputForm::Grid,
            Architecture::Compact => InputForm::Views,
        };
        ModelConfig {
            architecture,
            input,
            alignment: Alignment::None,
            compact: CompactConfig::default(),
        }
    }
}

#[derive(Debug)]
enum Backbone {
    Xception(Box<Xception>),
    Compact(Compact),
}

/// A classifier of clouds: backbone, cosine head and every tensor.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    backbone: Backbone,
    head: CosineHead,
    params: Params,
    summary: Vec<LayerRow>,
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
        Ok(Model { config: config.clone(), backbone, head, params, summary })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every tensor.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// One row per layer, in order.
    pub fn summary(&self) -> &[LayerRow] {
        &self.summary
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
        let model = Model::new(&ModelConfig::new(Architecture::Compact), 0, &Device::Cpu).unwrap();
        let input = Tensor::zeros(
            (2, VIEW_COUNT, VIEW_SIZE, VIEW_SIZE),
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let embedding = model.embed(&input, Phase::Eval).unwrap();
        let pool = model.summary().iter().find(|r| r.name == "avg_pool").unwrap();
        assert_eq!(embedding.dims(), [2, pool.output[0]]);
        assert_eq!(model.cosines(&input, Phase::Eval).unwrap().dims(), [2, 10]);
        let counted: usize = model.summary().iter().map(|r| r.params).sum();
        assert_eq!(counted, model.params().count().0);
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
