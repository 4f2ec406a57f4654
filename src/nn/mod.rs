//! The networks, in candle: layers, the Xception and compact backbones, the cosine head and the
//! CurricularFace loss.

pub mod compact;
pub mod curricular;
pub mod depthwise;
pub mod head;
mod lanes;
pub mod layers;
pub mod model;
pub mod norm;
pub mod params;
pub mod pool;
pub mod unfold;
pub mod xception;
