//! Max pooling with Keras' 'same' padding (the output is `ceil(size / stride)` and windows that
//! hang over the edge see only real pixels), with a backward pass for any window and stride:
//! candle's own max pool differentiates only when the window equals the stride.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::f32_data;

/// `[N, C, H, W]` max-pooled over `k x k` windows every `stride` pixels, 'same' padding.
pub fn max_pool_same(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let pool = Pool::new(h, w, k, stride);
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op1(Kernel { pool, winners: Arc::default() });
    }
    pool.by_tensor_ops(x)
}

/// The output shape of [`max_pool_same`] for one sample `[C, H, W]`.
pub fn max_pool_same_shape(input: [usize; 3], stride: usize) -> [usize; 3] {
    [input[0], input[1].div_ceil(stride), input[2].div_ceil(stride)]
}

/// The geometry of one pooling.
#[derive(Clone, Copy, Debug)]
struct Pool {
    k: usize,
    stride: usize,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
}

impl Pool {
    fn new(h: usize, w: usize, k: usize, stride: usize) -> Self {
        // 'same': the padding that makes the output ceil(size / stride), split with the extra
        // pixel (if any) after.
        let before =
            |size: usize| (((size.div_ceil(stride) - 1) * stride + k).saturating_sub(size)) / 2;
        Pool {
            k,
            stride,
            top: before(h),
            left: before(w),
            h,
            w,
            out_h: h.div_ceil(stride),
            out_w: w.div_ceil(stride),
        }
    }

    /// The input rows (or columns) a window starting at output index `o` covers.
    fn span(&self, o: usize, pad: usize, size: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride).saturating_sub(pad);
        let end = (o * self.stride + self.k).saturating_sub(pad).min(size);
        start..end
    }

    /// The position of the largest input of each output pixel of one plane (the first, in
    /// reading order, among equals).
    fn argmax_plane(&self, plane: &[f32], mut visit: impl FnMut(usize, usize)) {
        for oy in 0..self.out_h {
            let rows = self.span(oy, self.top, self.h);
            for ox in 0..self.out_w {
                let cols = self.span(ox, self.left, self.w);
                let mut best = rows.start * self.w + cols.start;
                for y in rows.clone() {
                    for x in cols.clone() {
                        if plane[y * self.w + x] > plane[best] {
                            best = y * self.w + x;
                        }
                    }
                }
                visit(oy * self.out_w + ox, best);
            }
        }
    }

    /// The same pooling from candle's own operations, for devices without the custom kernel:
    /// the maximum over the k² shifted, strided copies of the padded input.
    fn by_tensor_ops(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let bottom = (self.out_h - 1) * self.stride + self.k - self.h - self.top;
        let right = (self.out_w - 1) * self.stride + self.k - self.w - self.left;
        let fill =
            |rows: usize, cols: usize| Tensor::full(f32::MIN, (n, c, rows, cols), x.device());
        let x = Tensor::cat(&[&fill(self.top, self.w)?, x, &fill(bottom, self.w)?], 2)?;
        let rows = self.top + self.h + bottom;
        let x = Tensor::cat(&[&fill(rows, self.left)?, &x, &fill(rows, right)?], 3)?;
        let take = |len: usize, offset: usize| -> Result<Tensor> {
            let idx: Vec<u32> = (0..len).map(|o| (o * self.stride + offset) as u32).collect();
            Tensor::from_vec(idx, len, x.device())
        };
        let mut shifted = Vec::with_capacity(self.k * self.k);
        for dy in 0..self.k {
            for dx in 0..self.k {
                shifted.push(
                    x.index_select(&take(self.out_h, dy)?, 2)?
                        .index_select(&take(self.out_w, dx)?, 3)?,
                );
            }
        }
        Tensor::stack(&shifted, 0)?.max(0)
    }
}

/// The CPU kernel. The forward pass remembers which input won each window, so the backward
/// pass only routes gradients.
struct Kernel {
    pool: Pool,
    winners: Arc<Mutex<Option<Vec<u32>>>>,
}

impl CustomOp1 for Kernel {
    fn name(&self) -> &'static str {
        "max-pool-same"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let pool = self.pool;
        let (n, c, _, _) = layout.shape().dims4()?;
        let input = f32_data(storage, layout, "max pooling")?;
        let (in_area, out_area) = (pool.h * pool.w, pool.out_h * pool.out_w);
        let mut out = vec![0f32; n * c * out_area];
        let mut winners = vec![0u32; n * c * out_area];
        out.par_chunks_mut(out_area).zip(winners.par_chunks_mut(out_area)).enumerate().for_each(
            |(p, (out, winners))| {
                let plane = &input[p * in_area..][..in_area];
                pool.argmax_plane(plane, |o, i| {
                    out[o] = plane[i];
                    winners[o] = i as u32;
                });
            },
        );
        *self.winners.lock().expect("the winners lock is never poisoned") = Some(winners);
        Ok((CpuStorage::F32(out), Shape::from((n, c, pool.out_h, pool.out_w))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let winners = self.winners.lock().expect("the winners lock is never poisoned").clone();
        let Some(winners) = winners else {
            bail!("max pooling's backward pass ran before its forward pass")
        };
        let grad: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        let (in_area, out_area) = (self.pool.h * self.pool.w, self.pool.out_h * self.pool.out_w);
        let mut grad_in = vec![0f32; x.elem_count()];
        grad_in.par_chunks_mut(in_area).enumerate().for_each(|(p, grad_in)| {
            let (winners, grad) =
                (&winners[p * out_area..][..out_area], &grad[p * out_area..][..out_area]);
            for (&i, &g) in winners.iter().zip(grad) {
                grad_in[i as usize] += g;
            }
        });
        Ok(Some(Tensor::from_vec(grad_in, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn row(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap().reshape((1, 1, 1, values.len())).unwrap()
    }

    #[test]
    fn windows_at_the_edges_see_only_real_pixels() {
        // 5 wide, window 3, stride 2: out 3, one pixel of padding each side. Windows over
        // [-, -4, -1], [-1, -6, -3], [-3, -2, -]: the padding never wins even where all is
        // negative.
        let y = max_pool_same(&row(&[-4.0, -1.0, -6.0, -3.0, -2.0]), 3, 2).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [-1.0, -1.0, -2.0]);
        // 4 wide: out 2, the one pixel of padding after: windows [0, 1, 2] and [2, 3, -].
        let y = max_pool_same(&row(&[5.0, 1.0, 2.0, 7.0]), 3, 2).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [5.0, 7.0]);
        assert_eq!(max_pool_same_shape([7, 125, 125], 2), [7, 63, 63]);
    }

    #[test]
    fn the_gradient_goes_to_each_window_maximum() {
        let x = Var::from_tensor(&row(&[-4.0, -1.0, -6.0, -3.0, -2.0])).unwrap();
        let y = max_pool_same(&x, 3, 2).unwrap();
        let weights = row(&[1.0, 10.0, 100.0]).reshape((1, 1, 1, 3)).unwrap();
        let grads = (y * weights).unwrap().sum_all().unwrap().backward().unwrap();
        // -1 is the maximum of the first two windows; -2 of the last.
        let g: Vec<f32> = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(g, [0.0, 11.0, 0.0, 0.0, 100.0]);
    }

    #[test]
    fn the_kernel_agrees_with_the_tensor_operation_fallback() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 8), &Device::Cpu).unwrap();
        let pool = Pool::new(9, 8, 3, 2);
        let ours = max_pool_same(&x, 3, 2).unwrap();
        let theirs = pool.by_tensor_ops(&x).unwrap();
        assert_eq!(ours.dims(), [2, 3, 5, 4]);
        let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }
}
