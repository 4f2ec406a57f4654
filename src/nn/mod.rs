//! The networks, in candle: layers, the Xception and compact backbones, the cosine head and the
//! CurricularFace loss.

pub mod compact;
mod cpu;
pub mod curricular;
pub mod depthwise;
pub mod head;
pub mod layers;
pub mod model;
pub mod norm;
pub mod params;
pub mod pool;
pub mod pose;
pub mod unfold;
pub mod xception;

/// Helpers shared by the tests of the kernels.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{D, Tensor};

    /// The largest absolute difference between two tensors of one shape.
    pub fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar()
            .unwrap()
    }
}
