//! The learned pose: a small network that looks at a cloud in its upright pose and tells which
//! way up the digit is, so that the turn can be undone before the classifier sees the digit.
//!
//! The upright pose (see [`crate::align`]) lays the digit flat in the (x, y) plane with its long
//! axis along y, by geometry alone. That leaves exactly four rotations between the digit as
//! written and the digit as posed: none; a half turn about z (standing on its head); a half turn
//! about x or about y (turned over, which shows the digit's mirror image, upside down or side to
//! side, as the two faces of a lifted digit look the same). Geometry cannot tell them apart; the
//! shape of the digit can, mostly: a mirrored 2 looks wrong, a 6 on its head looks like a 9.
//!
//! So the network classifies the posed digit into these four [`TURNS`], trained on training
//! clouds turned by known random rotations, with each cloud's own upright pose taken as the
//! digit as written. It trains on clouds given each turn equally often, so that it sees many
//! turned digits; in use, its scores are weighed by how often each turn occurs under the
//! training rotations (which are those the test clouds are expected to have): where the shape
//! leaves a doubt (is this a 6, or a 9 on its head?) it names the turn that is more often right.
//!
//! NOTE: a first version regressed the rotation itself in the continuous 6D representation (two
//! columns of the matrix, made orthonormal). With the upright pose before it, the rotation to
//! find is one of four, all half turns apart, and the regression learned little: half a turn is
//! the farthest a rotation can be, where a squared distance on the unit columns has no slope,
//! and the mean of the four, which regression drifts to where the digit is in doubt, is no
//! rotation at all. Four classes with a softmax have neither problem.

use candle_core::{Device, Result, Tensor, Var};

use super::compact::{Compact, CompactConfig};
use super::layers::{Builder, LayerRow, Phase};
use super::params::{Init, Params};
use crate::rotation::Rotation;

/// The prefix of the pose network's tensor names, keeping them apart from the classifier's.
pub const PREFIX: &str = "pose.";

/// The input of the pose network: the three boards, `[3, 46, 46]`.
pub const INPUT: [usize; 3] = [3, crate::views::VIEW_SIZE, crate::views::VIEW_SIZE];

/// The four rotations an upright pose leaves open, as the network numbers them: none, and half
/// turns about z, x and y.
pub const TURNS: [Rotation; 4] = [
    Rotation::IDENTITY,
    Rotation::from_rows([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),
    Rotation::from_rows([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]),
    Rotation::from_rows([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]),
];

/// Names of the [`TURNS`].
pub const TURN_NAMES: [&str; 4] = ["none", "half turn about z", "over about x", "over about y"];

/// The default shape of the pose network's backbone: the compact classifier's on the boards.
pub fn default_backbone() -> CompactConfig {
    CompactConfig::default()
}

/// The index of the entry of [`TURNS`] nearest to `rotation`.
pub fn nearest_turn(rotation: &Rotation) -> usize {
    // The nearest rotation is the one with the largest trace of Kᵀ R, its cosine of the angle.
    let m = rotation.matrix();
    let score = |k: &Rotation| -> f64 {
        let k = k.matrix();
        (0..3).map(|i| (0..3).map(|j| k[i][j] * m[i][j]).sum::<f64>()).sum()
    };
    (0..TURNS.len()).max_by(|&a, &b| score(&TURNS[a]).total_cmp(&score(&TURNS[b]))).unwrap_or(0)
}

/// The pose network: a compact backbone, a linear layer to one score per turn, and how often
/// each turn occurs.
#[derive(Debug)]
pub struct PoseNet {
    backbone: Compact,
    weight: Var,
    bias: Var,
    /// The log of each turn's share in use over its share in training, added to the scores in
    /// use; not trained.
    log_prior: Var,
    params: Params,
    summary: Vec<LayerRow>,
}

impl PoseNet {
    /// A freshly initialised network with the backbone `config`; the same `seed` gives the same
    /// weights.
    pub fn new(config: &CompactConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut params = Params::new(seed, device);
        let mut b = Builder::new(&mut params);
        let backbone = Compact::new(&mut b, INPUT, config)?;
        let width = backbone.width();
        let classes = TURNS.len();
        let init = Init::Glorot { fan_in: width, fan_out: classes };
        let weight = b.params.add("turn.weight", &[width, classes], init, true)?;
        let bias = b.params.add("turn.bias", &[classes], Init::Constant(0.0), true)?;
        let log_prior = b.params.add("turn.log_prior", &[classes], Init::Constant(0.0), false)?;
        let count = weight.elem_count() + bias.elem_count() + log_prior.elem_count();
        b.row("turn", "Dense", vec![classes], count);
        let mut summary = b.rows;
        params.prefix_names(PREFIX);
        for row in &mut summary {
            row.name.insert_str(0, PREFIX);
        }
        Ok(PoseNet { backbone, weight, bias, log_prior, params, summary })
    }

    /// Every tensor, named with [`PREFIX`].
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// One row per layer, in order.
    pub fn summary(&self) -> &[LayerRow] {
        &self.summary
    }

    /// The scores `[N, 4]` of the [`TURNS`] for a batch of boards `[N, 3, 46, 46]`.
    pub fn forward(&self, input: &Tensor, phase: Phase) -> Result<Tensor> {
        let embedding = self.backbone.forward(input, phase)?;
        embedding.matmul(self.weight.as_tensor())?.broadcast_add(self.bias.as_tensor())
    }

    /// The scores of the turns for use: those of training, weighed by how often each turn
    /// occurs in use (see [`PoseNet::set_shares`]).
    pub fn scores(&self, input: &Tensor) -> Result<Tensor> {
        self.forward(input, Phase::Eval)?.broadcast_add(self.log_prior.as_tensor())
    }

    /// The most likely turn of each cloud of a batch of boards, for use (not training).
    pub fn turns(&self, input: &Tensor) -> Result<Vec<Rotation>> {
        let best: Vec<u32> = self.scores(input)?.argmax(1)?.to_vec1()?;
        Ok(best.iter().map(|&k| TURNS[k as usize]).collect())
    }

    /// Sets how often each turn occurs in use (`shares`, summing to 1), against the even shares
    /// the network trained on.
    pub fn set_shares(&self, shares: [f64; 4]) -> Result<()> {
        let ratios = shares.map(|p| (p * TURNS.len() as f64).max(1e-6).ln() as f32);
        self.log_prior.set(&Tensor::new(&ratios, self.log_prior.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::Angles;

    #[test]
    fn the_turns_are_the_half_turns_about_the_axes() {
        use std::f64::consts::PI;
        let about =
            [Angles::new(0.0, 0.0, PI), Angles::new(PI, 0.0, 0.0), Angles::new(0.0, PI, 0.0)];
        for (k, angles) in about.iter().enumerate() {
            let want = angles.rotation().matrix();
            let got = TURNS[k + 1].matrix();
            for i in 0..3 {
                for j in 0..3 {
                    assert!((want[i][j] - got[i][j]).abs() < 1e-12, "turn {}", k + 1);
                }
            }
        }
    }

    #[test]
    fn a_rotation_near_a_turn_is_named_by_it() {
        for (k, turn) in TURNS.iter().enumerate() {
            let nudged = Angles::new(0.05, -0.1, 0.2).rotation().then_apply(turn);
            assert_eq!(nearest_turn(&nudged), k);
        }
    }

    #[test]
    fn the_network_scores_every_turn_and_keeps_its_names_apart() {
        let net = PoseNet::new(&default_backbone(), 3, &Device::Cpu).unwrap();
        let input = Tensor::rand(0f32, 1.0, (2, 3, 46, 46), &Device::Cpu).unwrap();
        assert_eq!(net.forward(&input, Phase::Train).unwrap().dims(), [2, TURNS.len()]);
        assert_eq!(net.turns(&input).unwrap().len(), 2);
        assert!(net.params().iter().all(|p| p.name.starts_with(PREFIX)));
        assert!(net.summary().iter().all(|r| r.name.starts_with(PREFIX)));
    }
}
