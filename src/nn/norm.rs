//! Batch normalisation, optionally followed by a ReLU, as one op: per channel of `[N, C, H, W]`,
//! `y = relu?(γ (x − μ) / √(σ² + ε) + β)`.
//!
//! Written with candle's element-wise operations the same computation takes a dozen passes over
//! the activations, most of them on one core; here the forward pass is two parallel passes and
//! the backward pass two more.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::{dot, f32_data, sum_map};

/// The per-channel mean and (biased) variance of the batch a training pass normalised with.
pub type BatchStats = (Vec<f32>, Vec<f32>);

/// Normalises `x` with its own batch statistics; differentiable in `x`, `gamma` and `beta`.
/// Returns the output and the statistics used.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    if !x.device().is_cpu() {
        return by_tensor_ops(x, gamma, beta, eps, relu);
    }
    let stats = Arc::new(Mutex::new(None));
    let op = Train { eps, relu, stats: Arc::clone(&stats) };
    let y = x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = stats.lock().expect("the statistics lock is never poisoned").clone();
    Ok((y, stats.expect("the forward pass records its statistics")))
}

/// Normalises `x` with given statistics (no gradient): `y = relu?(x · scale + shift)` with
/// `scale = γ / √(σ² + ε)` and `shift = β − μ · scale`.
pub fn batch_norm_eval(x: &Tensor, scale: Vec<f32>, shift: Vec<f32>, relu: bool) -> Result<Tensor> {
    if !x.device().is_cpu() {
        let c = scale.len();
        let scale = Tensor::from_vec(scale, (1, c, 1, 1), x.device())?;
        let shift = Tensor::from_vec(shift, (1, c, 1, 1), x.device())?;
        let y = x.broadcast_mul(&scale)?.broadcast_add(&shift)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    x.contiguous()?.apply_op1_no_bwd(&Affine { scale, shift, relu })
}

/// The same training normalisation from candle's own operations, for other devices.
fn by_tensor_ops(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let (n, c, h, w) = x.dims4()?;
    let flat = x.reshape((n, c, h * w))?;
    let mean = flat.mean_keepdim(2)?.mean_keepdim(0)?;
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
    let (mean, var) = (mean.flatten_all()?, var.flatten_all()?);
    let scale = (gamma / (&var + eps)?.sqrt()?)?;
    let shift = (beta - (&mean * &scale)?)?;
    let y = x
        .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y, (mean.to_vec1()?, var.to_vec1()?)))
}

/// Per-plane sums `(Σ f(x))` for every plane of a contiguous `[N, C, area]` buffer, gathered per
/// channel in f64.
fn channel_sums(
    x: &[f32],
    c: usize,
    area: usize,
    f: impl Fn(usize, &[f32]) -> f32 + Sync,
) -> Vec<f64> {
    let planes: Vec<f32> =
        x.par_chunks(area).enumerate().map(|(p, plane)| f(p % c, plane)).collect();
    let mut sums = vec![0f64; c];
    for (p, v) in planes.iter().enumerate() {
        sums[p % c] += f64::from(*v);
    }
    sums
}

/// Mean and biased variance of every channel (two passes, for accuracy).
fn channel_stats(x: &[f32], c: usize, area: usize) -> BatchStats {
    let count = (x.len() / c) as f64;
    let mean: Vec<f32> = channel_sums(x, c, area, |_, plane| sum_map(plane, |v| v))
        .into_iter()
        .map(|s| (s / count) as f32)
        .collect();
    let var = channel_sums(x, c, area, |channel, plane| {
        let m = mean[channel];
        sum_map(plane, |v| (v - m) * (v - m))
    })
    .into_iter()
    .map(|s| (s / count) as f32)
    .collect();
    (mean, var)
}

/// `y = relu?(x · scale + shift)` per channel, plane by plane in parallel.
fn affine(x: &[f32], scale: &[f32], shift: &[f32], area: usize, relu: bool) -> Vec<f32> {
    let c = scale.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(area).zip(x.par_chunks(area)).enumerate().for_each(|(p, (y, x))| {
        let (a, b) = (scale[p % c], shift[p % c]);
        for (y, x) in y.iter_mut().zip(x) {
            let v = x * a + b;
            *y = if relu { v.max(0.0) } else { v };
        }
    });
    y
}

/// The training pass; keeps the batch statistics for the caller and the backward pass.
struct Train {
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

impl CustomOp3 for Train {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let (x, gamma, beta) = (
            f32_data(s1, l1, "batch normalisation")?,
            f32_data(s2, l2, "batch normalisation")?,
            f32_data(s3, l3, "batch normalisation")?,
        );
        if gamma.len() != c || beta.len() != c {
            bail!(
                "batch normalisation of {c} channels got {} scales and {} shifts",
                gamma.len(),
                beta.len()
            );
        }
        let (mean, var) = channel_stats(x, c, h * w);
        let scale: Vec<f32> =
            (0..c).map(|i| gamma[i] / (f64::from(var[i]) + self.eps).sqrt() as f32).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
        let y = affine(x, &scale, &shift, h * w, self.relu);
        *self.stats.lock().expect("the statistics lock is never poisoned") = Some((mean, var));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((mean, var)) =
            self.stats.lock().expect("the statistics lock is never poisoned").clone()
        else {
            bail!("batch normalisation's backward pass ran before its forward pass");
        };
        let (n, c, h, w) = x.dims4()?;
        let op = Backward { eps: self.eps, relu: self.relu, gamma: gamma.to_vec1()?, mean, var };
        let packed = x.apply_op3_no_bwd(y, &grad.contiguous()?, &op)?;
        let len = n * c * h * w;
        let grad_x = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let grad_gamma = packed.narrow(0, len, c)?;
        let grad_beta = packed.narrow(0, len + c, c)?;
        Ok((Some(grad_x), Some(grad_gamma), Some(grad_beta)))
    }
}

/// The gradients of [`Train`], packed as `[dx (N·C·H·W), dγ (C), dβ (C)]`.
struct Backward {
    eps: f64,
    relu: bool,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let area = h * w;
        let (x, y, grad) = (
            f32_data(s1, l1, "batch normalisation")?,
            f32_data(s2, l2, "batch normalisation")?,
            f32_data(s3, l3, "batch normalisation")?,
        );
        let count = (x.len() / c) as f64;
        let inv_std: Vec<f64> =
            self.var.iter().map(|&v| 1.0 / (f64::from(v) + self.eps).sqrt()).collect();
        // The gradient reaching the normalisation: through the ReLU only where it passed.
        let relu = self.relu;
        let upstream = |p: usize| {
            let (g, y) = (&grad[p * area..][..area], &y[p * area..][..area]);
            g.iter().zip(y).map(move |(&g, &y)| if relu && y <= 0.0 { 0.0 } else { g })
        };

        // Per plane Σ g and Σ g · x, gathered per channel: dβ = Σ g, dγ = (Σ g x − μ Σ g) / σ.
        let partial: Vec<(f32, f32)> = (0..x.len() / area)
            .into_par_iter()
            .map(|p| {
                let g: Vec<f32> = upstream(p).collect();
                (sum_map(&g, |v| v), dot(&g, &x[p * area..][..area]))
            })
            .collect();
        let mut sums = vec![(0f64, 0f64); c];
        for (p, (g, gx)) in partial.iter().enumerate() {
            sums[p % c].0 += f64::from(*g);
            sums[p % c].1 += f64::from(*gx);
        }
        let grads: Vec<(f64, f64)> = sums
            .iter()
            .enumerate()
            .map(|(i, (g, gx))| (*g, (gx - f64::from(self.mean[i]) * g) * inv_std[i]))
            .collect();

        // dx = γ / σ · (g − dβ / M − x̂ · dγ / M), M the values per channel: with x̂ = (x − μ) / σ,
        // an affine map a · g + b · x + c per channel.
        let coefficients: Vec<(f32, f32, f32)> = (0..c)
            .map(|i| {
                let (dbeta, dgamma) = grads[i];
                let k = f64::from(self.gamma[i]) * inv_std[i];
                let b = -k * dgamma / count * inv_std[i];
                let c0 = -k * dbeta / count - b * f64::from(self.mean[i]);
                (k as f32, b as f32, c0 as f32)
            })
            .collect();
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, tail) = out.split_at_mut(x.len());
        dx.par_chunks_mut(area).enumerate().for_each(|(p, dx)| {
            let (a, b, c0) = coefficients[p % c];
            for ((dx, g), &x) in dx.iter_mut().zip(upstream(p)).zip(&x[p * area..][..area]) {
                *dx = a * g + b * x + c0;
            }
        });
        for (i, (dbeta, dgamma)) in grads.iter().enumerate() {
            tail[i] = *dgamma as f32;
            tail[c + i] = *dbeta as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * c)))
    }
}

/// The evaluation pass: a fixed per-channel affine map.
struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl CustomOp1 for Affine {
    fn name(&self) -> &'static str {
        "batch-norm-eval"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = layout.shape().dims4()?;
        if self.scale.len() != c {
            bail!("batch normalisation of {c} channels got {} scales", self.scale.len());
        }
        let y = affine(
            f32_data(storage, layout, "batch normalisation")?,
            &self.scale,
            &self.shift,
            h * w,
            self.relu,
        );
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::max_difference;
    use candle_core::{Device, Var};

    #[test]
    fn the_kernel_agrees_with_tensor_operations_forward_and_backward() {
        for relu in [false, true] {
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2.0, (3, 4, 5, 6), &Device::Cpu).unwrap() + 0.7).unwrap(),
            )
            .unwrap();
            let gamma = Var::new(&[1.5f32, -0.5, 0.8, 2.0], &Device::Cpu).unwrap();
            let beta = Var::new(&[0.1f32, 0.2, -0.3, 0.0], &Device::Cpu).unwrap();
            let mix = Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &Device::Cpu).unwrap();

            let (ours, (mean, var)) = batch_norm_train(&x, &gamma, &beta, 1e-3, relu).unwrap();
            let (theirs, (mean2, var2)) = by_tensor_ops(&x, &gamma, &beta, 1e-3, relu).unwrap();
            assert!(max_difference(&ours, &theirs) < 1e-4, "relu {relu}");
            for (a, b) in mean.iter().zip(&mean2).chain(var.iter().zip(&var2)) {
                assert!((a - b).abs() < 1e-4);
            }

            let g1 = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            for var in [&x, &gamma, &beta] {
                let (a, b) = (g1.get(var).unwrap(), g2.get(var).unwrap());
                assert!(max_difference(a, b) < 1e-3, "relu {relu}, {:?}", var.dims());
            }
        }
    }

    #[test]
    fn evaluation_applies_the_given_statistics() {
        let x = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 2))
            .unwrap();
        let y = batch_norm_eval(&x, vec![2.0, -1.0], vec![0.5, 1.0], true).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [2.5, 4.5, 0.0, 0.0]);
    }
}
