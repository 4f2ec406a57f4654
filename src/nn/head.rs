//! The cosine-similarity head: the cosines between an embedding and one learned direction per
//! class.

use candle_core::{D, Result, Tensor, Var};

use super::layers::Builder;
use super::params::Init;

/// The number of classes: the digits 0..9.
pub const CLASSES: usize = 10;

/// A trainable `[embedding, 10]` weight whose columns are the class directions.
#[derive(Debug)]
pub struct CosineHead {
    weight: Var,
}

impl CosineHead {
    /// A head for embeddings of width `embedding`.
    pub fn new(b: &mut Builder, embedding: usize) -> Result<Self> {
        let init = Init::Glorot { fan_in: embedding, fan_out: CLASSES };
        let weight = b.params.add("cosine.weight", &[embedding, CLASSES], init, true)?;
        b.row("cosine", "CosineSimilarity", vec![CLASSES], weight.elem_count());
        Ok(CosineHead { weight })
    }

    /// The cosines `[N, 10]` of embeddings `[N, embedding]`: each row normalised to unit length,
    /// each column of the weight too, then their product. Every value lies in -1..1.
    pub fn forward(&self, embedding: &Tensor) -> Result<Tensor> {
        let rows = embedding.broadcast_div(&l2_norm(embedding, D::Minus1)?)?;
        let w = self.weight.as_tensor();
        let columns = w.broadcast_div(&l2_norm(w, 0)?)?;
        rows.matmul(&columns)
    }
}

/// The Euclidean length along `dim`, kept as a dimension of 1, never below a tiny floor (so a
/// zero vector stays zero instead of becoming NaN).
fn l2_norm<Dim: candle_core::shape::Dim>(x: &Tensor, dim: Dim) -> Result<Tensor> {
    x.sqr()?.sum_keepdim(dim)?.clamp(1e-12, f32::MAX)?.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::params::Params;
    use candle_core::Device;

    #[test]
    fn cosines_are_angles_between_embeddings_and_class_columns() {
        let mut params = Params::new(0, &Device::Cpu);
        let mut b = Builder::new(&mut params);
        let head = CosineHead::new(&mut b, 3).unwrap();
        // Columns: class 0 along x (scaled), class 1 along y, the rest along z.
        let mut w = vec![0f32; 3 * CLASSES];
        w[0] = 5.0;
        w[CLASSES + 1] = 0.5;
        for class in 2..CLASSES {
            w[2 * CLASSES + class] = 1.0;
        }
        head.weight.set(&Tensor::from_vec(w, (3, CLASSES), &Device::Cpu).unwrap()).unwrap();
        let embedding = Tensor::new(&[[3f32, 4.0, 0.0], [0.0, 0.0, -2.0]], &Device::Cpu).unwrap();
        let cos: Vec<Vec<f32>> = head.forward(&embedding).unwrap().to_vec2().unwrap();
        assert!((cos[0][0] - 0.6).abs() < 1e-6 && (cos[0][1] - 0.8).abs() < 1e-6);
        assert!(cos[0][2].abs() < 1e-6);
        assert!(cos[1][..2].iter().all(|v| v.abs() < 1e-6));
        assert!(cos[1][2..].iter().all(|v| (v + 1.0).abs() < 1e-6));
    }
}
