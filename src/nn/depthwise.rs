//! Depthwise 2D convolution: one `k x k` filter per channel, stride 1, zero padding.
//!
//! candle runs a grouped convolution as one small convolution per group, which makes a
//! depthwise convolution over hundreds of channels slow and its backward pass nearly serial.
//! Here it is a custom op whose forward pass and both gradients are plain loops over one channel
//! plane at a time, the planes spread over all cores.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{dot, f32_data};

/// `x` of shape `[N, C, H, W]` convolved with `weight` of shape `[C, 1, k, k]` (the layout of
/// `conv2d` with `groups = C`), stride 1, `padding` zeros on every side: the result has shape
/// `[N, C, H + 2 * padding - k + 1, W + 2 * padding - k + 1]`. Differentiable in both arguments.
///
/// On the CPU this is the custom kernel; elsewhere it falls back to candle's grouped `conv2d`.
pub fn depthwise_conv2d(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    if !x.device().is_cpu() {
        // LIMITATION: no GPU kernel yet; candle's grouped convolution is correct but slow.
        return x.conv2d(weight, padding, 1, 1, x.dim(1)?);
    }
    x.contiguous()?.apply_op2(&weight.contiguous()?, Forward { padding })
}

/// The sizes an op works on, checked once.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn new(input: &Shape, weight: &Shape, pad: usize) -> Result<Self> {
        let (n, c, h, w) = input.dims4()?;
        let (wc, one, k, k2) = weight.dims4()?;
        if wc != c || one != 1 || k != k2 {
            bail!("depthwise weight must be [C, 1, k, k] for C = {c}, got {weight:?}");
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            bail!("depthwise input {input:?} is smaller than its {k} x {k} filter");
        }
        Ok(Geometry { n, c, h, w, k, pad, out_h: h + 2 * pad - k + 1, out_w: w + 2 * pad - k + 1 })
    }

    /// Calls `f(tap, out, input, len)` for every filter tap and output row: the output row
    /// segment starting at `out` and the input row segment starting at `input`, both `len` long,
    /// that the tap `ky * k + kx` pairs up within one channel plane (only where the input lies
    /// inside the image). The forward pass and both gradients walk these same pairs.
    fn for_each_segment(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        for ky in 0..self.k {
            for kx in 0..self.k {
                // Output columns x whose input column x + kx - pad lies in 0..w.
                let first = self.pad.saturating_sub(kx);
                let end = (self.w + self.pad).saturating_sub(kx).min(self.out_w);
                if end <= first {
                    continue;
                }
                for y in 0..self.out_h {
                    let Some(row) = (y + ky).checked_sub(self.pad).filter(|&r| r < self.h) else {
                        continue;
                    };
                    let input = row * self.w + first + kx - self.pad;
                    f(ky * self.k + kx, y * self.out_w + first, input, end - first);
                }
            }
        }
    }
}

/// `dst[i] += weight · src[i]`.
fn add_scaled(dst: &mut [f32], weight: f32, src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += weight * s;
    }
}

/// The forward pass.
struct Forward {
    padding: usize,
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), l2.shape(), self.padding)?;
        let (input, weight) = (
            f32_data(s1, l1, "depthwise convolution")?,
            f32_data(s2, l2, "depthwise convolution")?,
        );
        let (in_area, out_area, taps) = (g.h * g.w, g.out_h * g.out_w, g.k * g.k);
        let mut out = vec![0f32; g.n * g.c * out_area];
        out.par_chunks_mut(out_area).enumerate().for_each(|(plane, out)| {
            let filter = &weight[(plane % g.c) * taps..][..taps];
            let input = &input[plane * in_area..][..in_area];
            g.for_each_segment(|tap, o, i, len| {
                add_scaled(&mut out[o..o + len], filter[tap], &input[i..i + len]);
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, g.out_h, g.out_w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        let grad_x = grad.apply_op2_no_bwd(weight, &GradInput { padding: self.padding, h, w })?;
        let k = weight.dim(2)?;
        let grad_w = x.apply_op2_no_bwd(&grad, &GradWeight { padding: self.padding, k })?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// The gradient with respect to the input: each output gradient flows back to the input pixels
/// its filter read, weighted by the filter.
struct GradInput {
    padding: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, _, _) = l1.shape().dims4()?;
        let g = Geometry::new(&Shape::from((n, c, self.h, self.w)), l2.shape(), self.padding)?;
        if l1.shape().dims4()? != (g.n, g.c, g.out_h, g.out_w) {
            bail!("depthwise gradient of shape {:?} does not match the input", l1.shape());
        }
        let (grad, weight) = (
            f32_data(s1, l1, "depthwise convolution")?,
            f32_data(s2, l2, "depthwise convolution")?,
        );
        let (in_area, out_area, taps) = (g.h * g.w, g.out_h * g.out_w, g.k * g.k);
        let mut grad_in = vec![0f32; g.n * g.c * in_area];
        grad_in.par_chunks_mut(in_area).enumerate().for_each(|(plane, grad_in)| {
            let filter = &weight[(plane % g.c) * taps..][..taps];
            let grad = &grad[plane * out_area..][..out_area];
            g.for_each_segment(|tap, o, i, len| {
                add_scaled(&mut grad_in[i..i + len], filter[tap], &grad[o..o + len]);
            });
        });
        Ok((CpuStorage::F32(grad_in), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// The gradient with respect to the filters: for each tap, the sum over the batch and the plane
/// of output gradient times the input pixel that tap read.
struct GradWeight {
    padding: usize,
    k: usize,
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, _, _) = l1.shape().dims4()?;
        let g = Geometry::new(l1.shape(), &Shape::from((c, 1, self.k, self.k)), self.padding)?;
        let (input, grad) = (
            f32_data(s1, l1, "depthwise convolution")?,
            f32_data(s2, l2, "depthwise convolution")?,
        );
        let (in_area, out_area, taps) = (g.h * g.w, g.out_h * g.out_w, g.k * g.k);
        let mut grad_w = vec![0f32; g.c * taps];
        grad_w.par_chunks_mut(taps).enumerate().for_each(|(channel, grad_w)| {
            for sample in 0..g.n {
                let plane = sample * g.c + channel;
                let input = &input[plane * in_area..][..in_area];
                let grad = &grad[plane * out_area..][..out_area];
                g.for_each_segment(|tap, o, i, len| {
                    grad_w[tap] += dot(&grad[o..o + len], &input[i..i + len]);
                });
            }
        });
        Ok((CpuStorage::F32(grad_w), Shape::from((g.c, 1, g.k, g.k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::max_difference;
    use candle_core::{Device, Var};

    fn random(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_matches_grouped_conv2d() {
        for (k, padding, h, w) in [(3, 1, 7, 9), (3, 0, 6, 5), (5, 2, 8, 8), (1, 0, 4, 3)] {
            let x = random(&[2, 3, h, w]);
            let weight = random(&[3, 1, k, k]);
            let ours = depthwise_conv2d(&x, &weight, padding).unwrap();
            let theirs = x.conv2d(&weight, padding, 1, 1, 3).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_difference(&ours, &theirs) < 1e-5, "k {k} padding {padding}");
        }
    }

    #[test]
    fn gradients_match_grouped_conv2d() {
        let x = Var::from_tensor(&random(&[2, 4, 6, 7])).unwrap();
        let weight = Var::from_tensor(&random(&[4, 1, 3, 3])).unwrap();
        // A fixed random weighting of the output, so every output pixel matters differently.
        let mix = random(&[2, 4, 6, 7]);
        let grads = |out: Tensor| (out * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = grads(depthwise_conv2d(&x, &weight, 1).unwrap());
        let theirs = grads(x.conv2d(&weight, 1, 1, 1, 4).unwrap());
        for var in [&x, &weight] {
            let (a, b) = (ours.get(var).unwrap(), theirs.get(var).unwrap());
            assert!(max_difference(a, b) < 1e-4, "{:?}", var.dims());
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = random(&[1, 2, 5, 5]);
        let weight = random(&[2, 1, 3, 3]);
        let mix = random(&[1, 2, 5, 5]);
        let loss = |x: &Tensor, weight: &Tensor| -> f64 {
            let out = depthwise_conv2d(x, weight, 1).unwrap();
            (out * &mix)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&weight).unwrap());
        let out = depthwise_conv2d(&xv, &wv, 1).unwrap();
        let grads = (out * &mix).unwrap().sum_all().unwrap().backward().unwrap();

        // Central differences on a handful of entries of each argument.
        let eps = 1e-2f32;
        for (tensor, var, is_weight) in [(&x, &xv, false), (&weight, &wv, true)] {
            let analytic: Vec<f32> =
                grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
            for i in (0..base.len()).step_by(3) {
                let nudged = |delta: f32| {
                    let mut values = base.clone();
                    values[i] += delta;
                    let t = Tensor::from_vec(values, tensor.dims(), &Device::Cpu).unwrap();
                    if is_weight { loss(&x, &t) } else { loss(&t, &weight) }
                };
                let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * f64::from(eps));
                assert!(
                    (numeric - f64::from(analytic[i])).abs() < 2e-3,
                    "entry {i}: {numeric} vs {}",
                    analytic[i]
                );
            }
        }
    }
}
