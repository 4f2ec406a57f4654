//! Helpers of the CPU kernels: their inputs as plain f32 slices, and reductions written so that
//! the compiler vectorises them (eight independent partial sums instead of one running total: a
//! single chain of float additions cannot be reordered).

use candle_core::{CpuStorage, Layout, Result, bail};

/// The f32 values of a contiguous CPU tensor, or an error naming the `op` that needed them.
pub(crate) fn f32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{op} supports f32 only") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op} needs contiguous tensors"),
    }
}

/// `Σ a[i] · b[i]` over the shorter of the two.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; 8];
    let (whole_a, whole_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = whole_a.remainder().iter().zip(whole_b.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in whole_a.zip(whole_b) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ f(a[i])`.
#[inline]
pub(crate) fn sum_map(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let whole = a.chunks_exact(8);
    let tail: f32 = whole.remainder().iter().map(|&x| f(x)).sum();
    for x in whole {
        for i in 0..8 {
            lanes[i] += f(x[i]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_plain_loops() {
        let a: Vec<f32> = (0..29).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..29).map(|i| (i % 7) as f32).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-4);
        let squares: f32 = a.iter().map(|x| x * x).sum();
        assert!((sum_map(&a, |x| x * x) - squares).abs() < 1e-3);
        assert_eq!(dot(&[], &[]), 0.0);
    }
}
