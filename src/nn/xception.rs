//! Xception (Chollet, 2017), laid out as Keras builds it without its top and with average
//! pooling: an entry flow of two convolutions and three down-sampling blocks, eight middle-flow
//! blocks of three separable convolutions, and an exit flow, to a 2048-wide embedding.

use candle_core::{Result, Tensor};

use super::layers::{Builder, Conv, Normalised, Phase, SeparableConv, global_average_pool};
use super::pool::{max_pool_same, max_pool_same_shape};

/// The width of the embedding.
pub const EMBEDDING: usize = 2048;

fn separable(
    b: &mut Builder,
    name: &str,
    input: [usize; 3],
    c_out: usize,
) -> Result<(Normalised<SeparableConv>, [usize; 3])> {
    let (conv, shape) = SeparableConv::new(b, name, input, c_out, 3)?;
    Ok((Normalised::new(b, name, conv, shape)?, shape))
}

/// A block that halves the resolution: two separable convolutions and a max pool, added to a
/// strided 1 x 1 convolution of the block's input.
#[derive(Debug)]
struct DownBlock {
    shortcut: Normalised<Conv>,
    relu_first: bool,
    first: Normalised<SeparableConv>,
    second: Normalised<SeparableConv>,
}

impl DownBlock {
    fn new(
        b: &mut Builder,
        block: usize,
        input: [usize; 3],
        widths: [usize; 2],
        relu_first: bool,
    ) -> Result<(Self, [usize; 3])> {
        let name = format!("block{block}");
        let (conv, shape) = Conv::new(b, &format!("{name}_shortcut"), input, widths[1], 1, 2, 0)?;
        let shortcut = Normalised::new(b, &format!("{name}_shortcut"), conv, shape)?;
        let (first, mid) = separable(b, &format!("{name}_sepconv1"), input, widths[0])?;
        let (second, out) = separable(b, &format!("{name}_sepconv2"), mid, widths[1])?;
        let pooled = max_pool_same_shape(out, 2);
        assert_eq!(pooled, shape, "the shortcut and the pooled branch of {name} must agree");
        Ok((DownBlock { shortcut, relu_first, first, second }, pooled))
    }

    fn forward(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        let residual = self.shortcut.forward(x, phase)?;
        let x = if self.relu_first { x.relu()? } else { x.clone() };
        let x = self.first.forward_relu(&x, phase)?;
        let x = self.second.forward(&x, phase)?;
        max_pool_same(&x, 3, 2)? + residual
    }
}

/// A middle-flow block: three separable convolutions at 728 channels, added to its input.
#[derive(Debug)]
struct MiddleBlock {
    convs: Vec<Normalised<SeparableConv>>,
}

impl MiddleBlock {
    fn forward(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        let mut y = x.clone();
        for conv in &self.convs {
            y = conv.forward(&y.relu()?, phase)?;
        }
        y + x
    }
}

/// The Xception backbone.
// LIMITATION: its training step runs at about half TensorFlow-CPU's throughput (0.53x): candle
// zero-fills and adds a buffer for every gradient, and wide 1 x 1 layers transpose their input.
#[derive(Debug)]
pub struct Xception {
    stem: [Normalised<Conv>; 2],
    entry: Vec<DownBlock>,
    middle: Vec<MiddleBlock>,
    exit: DownBlock,
    head: [Normalised<SeparableConv>; 2],
}

impl Xception {
    /// Builds the backbone for inputs of shape `input` (`[C, H, W]`).
    pub fn new(b: &mut Builder, input: [usize; 3]) -> Result<Self> {
        let (conv1, s1) = Conv::new(b, "block1_conv1", input, 32, 3, 2, 0)?;
        let conv1 = Normalised::new(b, "block1_conv1", conv1, s1)?;
        let (conv2, s) = Conv::new(b, "block1_conv2", s1, 64, 3, 1, 0)?;
        let stem = [conv1, Normalised::new(b, "block1_conv2", conv2, s)?];

        let mut shape = s;
        let mut entry = Vec::new();
        for (block, widths, relu_first) in
            [(2, [128, 128], false), (3, [256, 256], true), (4, [728, 728], true)]
        {
            let (down, next) = DownBlock::new(b, block, shape, widths, relu_first)?;
            entry.push(down);
            shape = next;
        }

        let mut middle = Vec::new();
        for block in 5..=12 {
            let mut convs = Vec::new();
            for k in 1..=3 {
                let (conv, next) = separable(b, &format!("block{block}_sepconv{k}"), shape, 728)?;
                convs.push(conv);
                shape = next;
            }
            middle.push(MiddleBlock { convs });
        }

        let (exit, s) = DownBlock::new(b, 13, shape, [728, 1024], true)?;
        let (head1, s) = separable(b, "block14_sepconv1", s, 1536)?;
        let (head2, s) = separable(b, "block14_sepconv2", s, EMBEDDING)?;
        b.row("avg_pool", "GlobalAveragePooling2D", vec![s[0]], 0);
        Ok(Xception { stem, entry, middle, exit, head: [head1, head2] })
    }

    /// The embedding of a batch `[N, C, H, W]`: `[N, 2048]`.
    pub fn forward(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        let mut x = x.clone();
        for conv in &self.stem {
            x = conv.forward_relu(&x, phase)?;
        }
        for block in &self.entry {
            x = block.forward(&x, phase)?;
        }
        for block in &self.middle {
            x = block.forward(&x, phase)?;
        }
        x = self.exit.forward(&x, phase)?;
        for conv in &self.head {
            x = conv.forward_relu(&x, phase)?;
        }
        global_average_pool(&x)
    }
}
