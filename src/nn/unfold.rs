//! Patches of an image as columns ("im2col"), so that a dense convolution becomes one matrix
//! product: candle's own CPU convolution works tap by tap with dot products and is several
//! times slower than its matrix product.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu::f32_data;

/// The geometry of a `k x k` window moved by `stride` over a zero-padded plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    /// Window side.
    pub k: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
}

impl Patches {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.k) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.k) / self.stride + 1
    }

    /// For window row `oy` and filter row `ky`, the input row, if inside the image.
    fn row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.padding).filter(|&r| r < self.h)
    }

    /// For window column `ox` and filter column `kx`, the input column, if inside the image.
    fn col(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.stride + kx).checked_sub(self.padding).filter(|&c| c < self.w)
    }

    /// Calls `f(tap, out_index, in_index)` for every (filter tap, output pixel) pair whose input
    /// pixel is inside the image, plane by plane: `tap = ky * k + kx`.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (out_h, out_w) = (self.out_h(), self.out_w());
        for ky in 0..self.k {
            for kx in 0..self.k {
                let tap = ky * self.k + kx;
                for oy in 0..out_h {
                    let Some(row) = self.row(oy, ky) else { continue };
                    for ox in 0..out_w {
                        if let Some(col) = self.col(ox, kx) {
                            f(tap, oy * out_w + ox, row * self.w + col);
                        }
                    }
                }
            }
        }
    }
}

/// `[N, C, H, W]` to `[N, C·k·k, OH·OW]`: row `c·k² + ky·k + kx` holds, for every window, the
/// input pixel under filter tap (ky, kx) of channel c (0 in the padding). Differentiable.
pub fn unfold(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let patches = Patches { k, stride, padding, h, w };
    if h + 2 * padding < k || w + 2 * padding < k {
        bail!("a {k} x {k} window does not fit a {h} x {w} image padded by {padding}");
    }
    x.contiguous()?.apply_op1(Unfold(patches))
}

struct Unfold(Patches);

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "unfold"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let (n, c, _, _) = layout.shape().dims4()?;
        let input = f32_data(storage, layout, "unfold")?;
        let (taps, area, windows) = (p.k * p.k, p.h * p.w, p.out_h() * p.out_w());
        // Each input plane becomes k² consecutive rows of the output.
        let mut out = vec![0f32; n * c * taps * windows];
        out.par_chunks_mut(taps * windows).enumerate().for_each(|(plane, out)| {
            let input = &input[plane * area..][..area];
            p.for_each(|tap, o, i| out[tap * windows + o] = input[i]);
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c * taps, windows))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?.apply_op1_no_bwd(&Fold(self.0))?;
        Ok(Some(grad.reshape(x.shape())?))
    }
}

/// The adjoint of [`Unfold`]: every column entry added back to the pixel it came from.
struct Fold(Patches);

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let (n, rows, windows) = layout.shape().dims3()?;
        let taps = p.k * p.k;
        if rows % taps != 0 || windows != p.out_h() * p.out_w() {
            bail!("fold of {:?} does not match its window geometry", layout.shape());
        }
        let c = rows / taps;
        let cols = f32_data(storage, layout, "unfold")?;
        let area = p.h * p.w;
        let mut out = vec![0f32; n * c * area];
        out.par_chunks_mut(area).enumerate().for_each(|(plane, out)| {
            let cols = &cols[plane * taps * windows..][..taps * windows];
            p.for_each(|tap, o, i| out[i] += cols[tap * windows + o]);
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, p.h, p.w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::max_difference;
    use candle_core::{Device, Var};

    /// A convolution as unfold and a matrix product.
    fn conv_by_unfold(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Tensor {
        let (n, _, h, wd) = x.dims4().unwrap();
        let (c_out, c_in, k, _) = w.dims4().unwrap();
        let p = Patches { k, stride, padding, h, w: wd };
        let cols = unfold(x, k, stride, padding).unwrap();
        let out = w
            .reshape((c_out, c_in * k * k))
            .unwrap()
            .broadcast_left(n)
            .unwrap()
            .matmul(&cols)
            .unwrap();
        out.reshape((n, c_out, p.out_h(), p.out_w())).unwrap()
    }

    #[test]
    fn unfold_and_matmul_equal_conv2d_with_gradients() {
        // Sizes where the windows tile the padded image exactly: candle's own conv2d gradient
        // has the wrong shape otherwise (the odd case is checked below, as an adjoint).
        for (stride, padding, h, w) in [(1, 0, 7, 6), (2, 0, 9, 9), (1, 1, 5, 8), (2, 1, 9, 7)] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap())
                    .unwrap();
            let weight =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &Device::Cpu).unwrap())
                    .unwrap();
            let ours = conv_by_unfold(&x, &weight, stride, padding);
            let theirs = x.conv2d(&weight, padding, stride, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_difference(&ours, &theirs) < 1e-4, "stride {stride} padding {padding}");

            let mix = Tensor::randn(0f32, 1.0, ours.dims(), &Device::Cpu).unwrap();
            let g1 = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            for var in [&x, &weight] {
                assert!(
                    max_difference(g1.get(var).unwrap(), g2.get(var).unwrap()) < 1e-3,
                    "stride {stride}"
                );
            }
        }
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold_when_windows_leave_a_remainder() {
        // 256 wide, window 3, stride 2, no padding (Xception's first layer): the last column is
        // in no window. <unfold(x), y> must equal <x, fold(y)> for any x and y.
        let p = Patches { k: 3, stride: 2, padding: 0, h: 10, w: 8 };
        let x = Tensor::randn(0f32, 1.0, (2, 3, p.h, p.w), &Device::Cpu).unwrap();
        let cols = unfold(&x, p.k, p.stride, p.padding).unwrap();
        let y = Tensor::randn(0f32, 1.0, cols.dims(), &Device::Cpu).unwrap();
        let folded = y.apply_op1_no_bwd(&Fold(p)).unwrap();
        let lhs: f32 = (cols * &y).unwrap().sum_all().unwrap().to_scalar().unwrap();
        let rhs: f32 = (x * folded).unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!((lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
