//! The building blocks of the backbones: convolutions without bias, batch normalisation,
//! pooling, and a record of each layer for the model summary.
//!
//! Tensors are `[N, C, H, W]`. A 1 x 1 convolution is a matrix product over channels, much
//! faster in candle than `conv2d`; a depthwise one is the custom op of [`super::depthwise`].

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{D, Result, Tensor, Var};

use super::depthwise::depthwise_conv2d;
use super::norm::{batch_norm_eval, batch_norm_train};
use super::params::{Init, Params};
use super::unfold::unfold;

/// What a forward pass is for; batch normalisation behaves differently in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Normalise with the batch's statistics and move the running ones towards them.
    Train,
    /// Normalise with the running statistics; change nothing.
    Eval,
    /// Normalise with the batch's statistics and average them, evenly, into the running ones:
    /// after a few such passes the running statistics match the current weights exactly.
    Calibrate,
}

/// One row of a model summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRow {
    /// The layer's name.
    pub name: String,
    /// What kind of layer it is.
    pub kind: &'static str,
    /// Its output, `[C, H, W]` or `[features]`, for one sample.
    pub output: Vec<usize>,
    /// Elements of its tensors.
    pub params: usize,
}

/// Collects parameters and summary rows while a model is built.
pub struct Builder<'a> {
    /// Where the tensors go.
    pub params: &'a mut Params,
    /// The summary so far.
    pub rows: Vec<LayerRow>,
}

impl<'a> Builder<'a> {
    /// Starts building into `params`.
    pub fn new(params: &'a mut Params) -> Self {
        Builder { params, rows: Vec::new() }
    }

    /// Adds a summary row.
    pub fn row(&mut self, name: &str, kind: &'static str, output: Vec<usize>, params: usize) {
        self.rows.push(LayerRow { name: name.to_owned(), kind, output, params });
    }
}

/// A spatial size after a `k x k` window with this stride and padding.
fn out_size(size: usize, k: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - k) / stride + 1
}

/// A layer that maps a batch to a batch, the same in every phase.
pub trait Layer {
    /// Applies the layer.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// A layer followed by batch normalisation.
#[derive(Debug)]
pub struct Normalised<L> {
    layer: L,
    bn: BatchNorm,
}

impl<L: Layer> Normalised<L> {
    /// `layer` (named `name`, with output `shape`) followed by a batch normalisation named
    /// `{name}_bn`.
    pub fn new(b: &mut Builder, name: &str, layer: L, shape: [usize; 3]) -> Result<Self> {
        Ok(Normalised { layer, bn: BatchNorm::new(b, &format!("{name}_bn"), shape)? })
    }

    /// The layer, then the normalisation for `phase`.
    pub fn forward(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        self.bn.forward(&self.layer.forward(x)?, phase)
    }

    /// The layer, the normalisation, then a ReLU.
    pub fn forward_relu(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        self.bn.forward_relu(&self.layer.forward(x)?, phase)
    }
}

/// A dense convolution without bias.
#[derive(Debug)]
pub struct Conv {
    weight: Var,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// A `k x k` convolution from `[c_in, h, w]` to `c_out` channels; returns it with its
    /// output shape.
    pub fn new(
        b: &mut Builder,
        name: &str,
        input: [usize; 3],
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<(Self, [usize; 3])> {
        let [c_in, h, w] = input;
        let init = Init::Glorot { fan_in: c_in * k * k, fan_out: c_out * k * k };
        let weight = b.params.add(&format!("{name}.weight"), &[c_out, c_in, k, k], init, true)?;
        let output = [c_out, out_size(h, k, stride, padding), out_size(w, k, stride, padding)];
        b.row(name, "Conv2D", output.to_vec(), weight.elem_count());
        Ok((Conv { weight, stride, padding }, output))
    }
}

impl Layer for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c_out, c_in, k, _) = self.weight.dims4()?;
        if k == 1 && self.padding == 0 {
            return pointwise(x, &self.weight.flatten_from(1)?, self.stride);
        }
        if !x.device().is_cpu() {
            return x.conv2d(&self.weight, self.padding, self.stride, 1, 1);
        }
        let (n, _, h, w) = x.dims4()?;
        let cols = unfold(x, k, self.stride, self.padding)?;
        let out = self.weight.reshape((c_out, c_in * k * k))?.broadcast_left(n)?.matmul(&cols)?;
        let (out_h, out_w) =
            (out_size(h, k, self.stride, self.padding), out_size(w, k, self.stride, self.padding));
        out.reshape((n, c_out, out_h, out_w))
    }
}

/// A 1 x 1 convolution as a matrix product: `weight` is `[c_out, c_in]`.
fn pointwise(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let x = if stride == 1 { x.clone() } else { subsample(x, stride)? };
    let (n, c, h, w) = x.dims4()?;
    let c_out = weight.dim(0)?;
    // NOTE: with wide layers (Xception's 728 x 728), one product over the whole batch,
    // [C_out, C] x [C, N·H·W], is faster than one per sample: the weight's gradient is then one
    // product too, not N of them summed afterwards (Xception's step: 0.90 -> 1.04 samples/s).
    // With narrow ones (the compact model) the two transposes it needs cost more than that
    // saves (77 -> 65 samples/s), so those keep one product per sample.
    if c * c_out >= WIDE_POINTWISE {
        let columns =
            x.reshape((n, c, h * w))?.transpose(0, 1)?.contiguous()?.reshape((c, n * h * w))?;
        let out = weight.matmul(&columns)?.reshape((c_out, n, h * w))?;
        return out.transpose(0, 1)?.contiguous()?.reshape((n, c_out, h, w));
    }
    weight.broadcast_left(n)?.matmul(&x.reshape((n, c, h * w))?)?.reshape((n, c_out, h, w))
}

/// Weights of at least this many elements take the whole-batch product in [`pointwise`].
const WIDE_POINTWISE: usize = 256 * 256;

/// Every `stride`-th row and column, starting with the first.
fn subsample(x: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let device = x.device();
    let rows: Vec<u32> = (0..h as u32).step_by(stride).collect();
    let cols: Vec<u32> = (0..w as u32).step_by(stride).collect();
    let (n_rows, n_cols) = (rows.len(), cols.len());
    x.index_select(&Tensor::from_vec(rows, n_rows, device)?, 2)?
        .index_select(&Tensor::from_vec(cols, n_cols, device)?, 3)
}

/// A depthwise separable convolution without bias: a `k x k` filter per channel ('same'
/// padding), then a 1 x 1 convolution across channels.
#[derive(Debug)]
pub struct SeparableConv {
    depthwise: Var,
    pointwise: Var,
    padding: usize,
}

impl SeparableConv {
    /// A separable convolution from `[c_in, h, w]` to `c_out` channels, same spatial size.
    pub fn new(
        b: &mut Builder,
        name: &str,
        input: [usize; 3],
        c_out: usize,
        k: usize,
    ) -> Result<(Self, [usize; 3])> {
        let [c_in, h, w] = input;
        let depthwise = b.params.add(
            &format!("{name}.depthwise"),
            &[c_in, 1, k, k],
            Init::Glorot { fan_in: c_in * k * k, fan_out: k * k },
            true,
        )?;
        let pointwise = b.params.add(
            &format!("{name}.pointwise"),
            &[c_out, c_in],
            Init::Glorot { fan_in: c_in, fan_out: c_out },
            true,
        )?;
        b.row(
            name,
            "SeparableConv2D",
            vec![c_out, h, w],
            depthwise.elem_count() + pointwise.elem_count(),
        );
        Ok((SeparableConv { depthwise, pointwise, padding: k / 2 }, [c_out, h, w]))
    }
}

impl Layer for SeparableConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = depthwise_conv2d(x, &self.depthwise, self.padding)?;
        pointwise(&x, &self.pointwise, 1)
    }
}

/// Batch normalisation over the batch and both spatial axes, per channel, as in Keras: a scale
/// and shift that are trained, and running statistics that are not.
#[derive(Debug)]
pub struct BatchNorm {
    gamma: Var,
    beta: Var,
    running_mean: Var,
    running_var: Var,
    momentum: f64,
    eps: f64,
    calibrated: AtomicUsize,
}

impl BatchNorm {
    /// Keras' defaults: the running statistics keep 0.99 of themselves per step.
    pub const MOMENTUM: f64 = 0.99;
    /// Keras' default.
    pub const EPS: f64 = 1e-3;

    /// A batch normalisation of `input` (`[C, H, W]`).
    pub fn new(b: &mut Builder, name: &str, input: [usize; 3]) -> Result<Self> {
        let c = input[0];
        let gamma = b.params.add(&format!("{name}.gamma"), &[c], Init::Constant(1.0), true)?;
        let beta = b.params.add(&format!("{name}.beta"), &[c], Init::Constant(0.0), true)?;
        let running_mean =
            b.params.add(&format!("{name}.moving_mean"), &[c], Init::Constant(0.0), false)?;
        let running_var =
            b.params.add(&format!("{name}.moving_variance"), &[c], Init::Constant(1.0), false)?;
        b.row(name, "BatchNormalization", input.to_vec(), 4 * c);
        Ok(BatchNorm {
            gamma,
            beta,
            running_mean,
            running_var,
            momentum: Self::MOMENTUM,
            eps: Self::EPS,
            calibrated: AtomicUsize::new(0),
        })
    }

    /// Normalises `x` for `phase`.
    pub fn forward(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        self.apply(x, phase, false)
    }

    /// Normalises `x` for `phase`, then applies a ReLU (in the same pass).
    pub fn forward_relu(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        self.apply(x, phase, true)
    }

    fn apply(&self, x: &Tensor, phase: Phase, relu: bool) -> Result<Tensor> {
        if phase == Phase::Eval {
            self.calibrated.store(0, Ordering::Relaxed);
            let gamma: Vec<f32> = self.gamma.as_tensor().to_vec1()?;
            let beta: Vec<f32> = self.beta.as_tensor().to_vec1()?;
            let mean: Vec<f32> = self.running_mean.as_tensor().to_vec1()?;
            let var: Vec<f32> = self.running_var.as_tensor().to_vec1()?;
            let scale: Vec<f32> = gamma
                .iter()
                .zip(&var)
                .map(|(g, v)| g / (f64::from(*v) + self.eps).sqrt() as f32)
                .collect();
            let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
            return batch_norm_eval(x, scale, shift, relu);
        }
        let (n, _, h, w) = x.dims4()?;
        let (y, (mean, var)) = batch_norm_train(x, &self.gamma, &self.beta, self.eps, relu)?;
        self.update_running(&mean, &var, n * h * w, phase)?;
        Ok(y)
    }

    fn update_running(&self, mean: &[f32], var: &[f32], count: usize, phase: Phase) -> Result<()> {
        let keep = match phase {
            Phase::Calibrate => {
                // The k-th calibration pass in a row keeps (k - 1) / k: an even average of all.
                let k = self.calibrated.fetch_add(1, Ordering::Relaxed) + 1;
                (k - 1) as f32 / k as f32
            }
            _ => {
                self.calibrated.store(0, Ordering::Relaxed);
                self.momentum as f32
            }
        };
        // The running variance is the unbiased estimate, as the population's would be.
        let unbiased = count as f32 / (count.max(2) - 1) as f32;
        let blend = |running: &Var, batch: &mut dyn Iterator<Item = f32>| -> Result<()> {
            let old: Vec<f32> = running.as_tensor().to_vec1()?;
            let new: Vec<f32> =
                old.iter().zip(batch).map(|(o, b)| o * keep + b * (1.0 - keep)).collect();
            running.set(&Tensor::from_vec(new, old.len(), running.device())?)
        };
        blend(&self.running_mean, &mut mean.iter().copied())?;
        blend(&self.running_var, &mut var.iter().map(|v| v * unbiased))
    }
}

/// The mean over both spatial axes: `[N, C, H, W]` to `[N, C]`.
pub fn global_average_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn batch_norm_normalises_per_channel_and_tracks_statistics() {
        let mut params = Params::new(0, &Device::Cpu);
        let mut b = Builder::new(&mut params);
        let bn = BatchNorm::new(&mut b, "bn", [2, 2, 2]).unwrap();
        // Channel 0 holds 1..=8 over (N, H, W); channel 1 holds 10 everywhere but one 18.
        let mut values = vec![0f32; 16];
        for i in 0..8 {
            let (n, p) = (i / 4, i % 4);
            values[n * 8 + p] = (i + 1) as f32;
            values[n * 8 + 4 + p] = if i == 0 { 18.0 } else { 10.0 };
        }
        let x = Tensor::from_vec(values, (2, 2, 2, 2), &Device::Cpu).unwrap();
        let y = bn.forward(&x, Phase::Train).unwrap();
        let y0: Vec<f32> = y.narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mean: f32 = y0.iter().sum::<f32>() / 8.0;
        let var: f32 = y0.iter().map(|v| v * v).sum::<f32>() / 8.0;
        assert!(mean.abs() < 1e-6);
        // Variance 5.25 for 1..=8, normalised with eps 1e-3: 5.25 / 5.251.
        assert!((var - 5.25 / 5.251).abs() < 1e-5, "{var}");
        // Running mean moved 1% of the way to the batch means 4.5 and 11.
        let running: Vec<f32> = bn.running_mean.as_tensor().to_vec1().unwrap();
        assert!(
            (running[0] - 0.045).abs() < 1e-6 && (running[1] - 0.11).abs() < 1e-6,
            "{running:?}"
        );
        // Calibration twice with the same batch makes the running mean exactly the batch mean.
        bn.forward(&x, Phase::Calibrate).unwrap();
        bn.forward(&x, Phase::Calibrate).unwrap();
        let running: Vec<f32> = bn.running_mean.as_tensor().to_vec1().unwrap();
        assert!((running[0] - 4.5).abs() < 1e-5 && (running[1] - 11.0).abs() < 1e-5, "{running:?}");
        // Unbiased variance of channel 0 over 8 values: 6.0.
        let running_var: Vec<f32> = bn.running_var.as_tensor().to_vec1().unwrap();
        assert!((running_var[0] - 6.0).abs() < 1e-4, "{running_var:?}");
    }

    #[test]
    fn pointwise_with_stride_equals_conv2d() {
        let mut params = Params::new(1, &Device::Cpu);
        let mut b = Builder::new(&mut params);
        let (conv, shape) = Conv::new(&mut b, "c", [3, 7, 7], 5, 1, 2, 0).unwrap();
        assert_eq!(shape, [5, 4, 4]);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 7), &Device::Cpu).unwrap();
        let ours = conv.forward(&x).unwrap();
        let theirs = x.conv2d(&conv.weight, 0, 2, 1, 1).unwrap();
        let diff: f32 = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-5);
    }
}
