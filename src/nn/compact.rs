//! A small backbone for CPUs: a dense stem, then stages of separable convolutions that halve the
//! resolution, to a 256-wide embedding.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::{Builder, Conv, Normalised, Phase, SeparableConv, global_average_pool};
use super::pool::{max_pool_same, max_pool_same_shape};

/// The shape of the compact backbone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactConfig {
    /// Channels after the stem.
    pub stem: usize,
    /// The stem's kernel size (1: a mix of the input channels, pixel by pixel).
    pub stem_kernel: usize,
    /// The stem's stride (2 halves the resolution the stages work at).
    #[serde(default = "one")]
    pub stem_stride: usize,
    /// Channels of each stage; each stage ends with a 2x max pool.
    pub stages: Vec<usize>,
    /// Separable convolutions in each stage.
    pub depths: Vec<usize>,
}

impl Default for CompactConfig {
    /// The default shape, for every input form: a 3 x 3 stem of stride 2 to 32 channels, then stages of 64,
    /// 128 and 256 channels with one, two and two separable convolutions. Halving the resolution
    /// in the stem costs little (a lifted digit's strokes are several pixels wide) and pays for
    /// stages a third wider than at full resolution: about 9 million multiply-adds per sample on
    /// the boards, and twice the training steps per minute of stages of 48, 96 and 192 channels
    /// unstrided.
    fn default() -> Self {
        CompactConfig {
            stem: 32,
            stem_kernel: 3,
            stem_stride: 2,
            stages: vec![64, 128, 256],
            depths: vec![1, 2, 2],
        }
    }
}

fn one() -> usize {
    1
}

/// The compact backbone.
#[derive(Debug)]
pub struct Compact {
    stem: Normalised<Conv>,
    stem_pool: bool,
    stages: Vec<Vec<Normalised<SeparableConv>>>,
    width: usize,
}

impl Compact {
    /// Builds the backbone for inputs of shape `input` (`[C, H, W]`). Large inputs (the
    /// 256 x 256 grid) get a strided stem and a pool before the stages, so both input forms
    /// reach the stages at about the same resolution.
    pub fn new(b: &mut Builder, input: [usize; 3], config: &CompactConfig) -> Result<Self> {
        let large = input[1] > 128;
        let k = config.stem_kernel;
        let (conv, mut shape) = if large {
            Conv::new(b, "stem_conv", input, config.stem, k.max(3), 2, k.max(3) / 2)?
        } else {
            Conv::new(b, "stem_conv", input, config.stem, k, config.stem_stride.max(1), k / 2)?
        };
        let stem = Normalised::new(b, "stem_conv", conv, shape)?;
        if large {
            shape = max_pool_same_shape(shape, 2);
            b.row("stem_pool", "MaxPooling2D", shape.to_vec(), 0);
        }

        let mut stages = Vec::new();
        for (s, (&width, &depth)) in config.stages.iter().zip(&config.depths).enumerate() {
            let mut convs = Vec::new();
            for k in 0..depth {
                let name = format!("stage{}_sepconv{}", s + 1, k + 1);
                let (conv, next) = SeparableConv::new(b, &name, shape, width, 3)?;
                convs.push(Normalised::new(b, &name, conv, next)?);
                shape = next;
            }
            shape = max_pool_same_shape(shape, 2);
            b.row(&format!("stage{}_pool", s + 1), "MaxPooling2D", shape.to_vec(), 0);
            stages.push(convs);
        }
        b.row("avg_pool", "GlobalAveragePooling2D", vec![shape[0]], 0);
        Ok(Compact { stem, stem_pool: large, stages, width: shape[0] })
    }

    /// The width of the embedding.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The embedding of a batch `[N, C, H, W]`.
    pub fn forward(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        let mut x = self.stem.forward_relu(x, phase)?;
        if self.stem_pool {
            x = max_pool_same(&x, 3, 2)?;
        }
        for stage in &self.stages {
            for conv in stage {
                x = conv.forward_relu(&x, phase)?;
            }
            x = max_pool_same(&x, 3, 2)?;
        }
        global_average_pool(&x)
    }
}
