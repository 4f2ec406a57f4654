//! digit3d: classify handwritten digits given as 3D point clouds, and see why a model gets
//! them right or wrong.
//!
//! The library holds everything but the window: reading datasets ([`dataset`]), rotating clouds
//! ([`rotation`]), turning a cloud into the 24 views and the grid the network sees ([`views`]),
//! making datasets from 2D digit images ([`lift`]), and the networks that classify them
//! ([`nn`]).

pub mod atomic;
pub mod dataset;
pub mod lift;
pub mod nn;
pub mod rotation;
pub mod train;
pub mod views;

/// One point of a cloud: x, y, z.
pub type Point = [f32; 3];
