//! The CurricularFace loss: an angular margin on the target class, and non-target classes that
//! score above the margined target ("hard" ones) weighted up by a state `t` that rises as the
//! model improves.

use candle_core::{D, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// How `t` follows training, after each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TRule {
    /// `t ← α · mean(p) + (1 − α) · t`, with `p` the margined target cosines: the rule of the
    /// reference solution, as written (with α = 0.99, `t` nearly equals the last batch's mean).
    #[default]
    Reference,
    /// `t ← α · t + (1 − α) · mean(c_y)`, a slow average of the raw target cosine, with `p`
    /// replaced by `c_y − m · sin(m)` where `θ_y + m` would pass π: the published
    /// CurricularFace code.
    Official,
}

/// The loss's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurricularConfig {
    /// `s`: the cosines are multiplied by this before the softmax.
    pub scale: f64,
    /// `m`: the angular margin added to the target angle, in radians.
    pub margin: f64,
    /// `α` of the `t` update.
    pub momentum: f64,
    /// Cosines are clipped to `-1 + eps .. 1 - eps`.
    pub eps: f64,
    /// Which `t` update.
    pub rule: TRule,
}

impl Default for CurricularConfig {
    /// s = 30, m = 0.5, α = 0.99, ε = 1e-7, the reference's `t` rule.
    fn default() -> Self {
        CurricularConfig {
            scale: 30.0,
            margin: 0.5,
            momentum: 0.99,
            eps: 1e-7,
            rule: TRule::Reference,
        }
    }
}

/// The loss of one batch, and what the `t` update needs.
#[derive(Debug)]
pub struct CurricularOutput {
    /// Mean softmax cross-entropy of the scaled logits: a scalar.
    pub loss: Tensor,
    /// Mean of the target logits `p` (the margined target cosines).
    pub mean_margined: f64,
    /// Mean of the raw target cosines `c_y`.
    pub mean_target: f64,
}

/// The loss with its state `t`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurricularFace {
    /// The settings.
    pub config: CurricularConfig,
    /// The curriculum state, 0 at the start.
    pub t: f64,
}

impl CurricularFace {
    /// The loss with `t = 0`.
    pub fn new(config: CurricularConfig) -> Self {
        CurricularFace { config, t: 0.0 }
    }

    /// The loss of `cosines` (`[N, classes]`) against `labels` (`[N]`, u32). `t` is a constant
    /// here; [`CurricularFace::update_t`] moves it afterwards.
    pub fn loss(&self, cosines: &Tensor, labels: &Tensor) -> Result<CurricularOutput> {
        let CurricularConfig { scale, margin, eps, .. } = self.config;
        let c = cosines.clamp(-1.0 + eps, 1.0 - eps)?;
        let classes = c.dim(1)?;
        let index = labels.unsqueeze(1)?;
        let target = c.gather(&index, 1)?;

        // cos(θ + m) = cos θ cos m − sin θ sin m, with sin θ ≥ 0 for θ in 0..π.
        let sin = (1.0 - target.sqr()?)?.sqrt()?;
        let cos_plus_margin = ((&target * margin.cos())? - (sin * margin.sin())?)?;
        let margined = match self.config.rule {
            TRule::Reference => cos_plus_margin.clone(),
            TRule::Official => {
                // θ + m passes π exactly when cos θ < cos(π − m).
                let room = target.ge((std::f64::consts::PI - margin).cos())?;
                room.where_cond(&cos_plus_margin, &(&target - margin * margin.sin())?)?
            }
        };

        let hard = c.broadcast_gt(&cos_plus_margin)?;
        let modulated = (&c * (&c + self.t)?)?;
        let others = hard.where_cond(&modulated, &c)?;
        let is_target =
            Tensor::arange(0u32, classes as u32, c.device())?.unsqueeze(0)?.broadcast_eq(&index)?;
        let logits = is_target.where_cond(&margined.broadcast_as(c.shape())?, &others)?;

        let loss = candle_nn::loss::cross_entropy(&(logits * scale)?, labels)?;
        let mean = |t: &Tensor| -> Result<f64> { t.mean_all()?.to_dtype(DType::F64)?.to_scalar() };
        Ok(CurricularOutput {
            loss,
            mean_margined: mean(&margined)?,
            mean_target: mean(&target.squeeze(D::Minus1)?)?,
        })
    }

    /// Moves `t` after a training batch, by the configured rule.
    pub fn update_t(&mut self, out: &CurricularOutput) {
        let a = self.config.momentum;
        self.t = match self.config.rule {
            TRule::Reference => a * out.mean_margined + (1.0 - a) * self.t,
            TRule::Official => a * self.t + (1.0 - a) * out.mean_target,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn batch(cosines: &[[f32; 3]], labels: &[u32]) -> (Tensor, Tensor) {
        let c = Tensor::new(cosines.as_flattened(), &Device::Cpu)
            .unwrap()
            .reshape((cosines.len(), 3))
            .unwrap();
        (c, Tensor::new(labels, &Device::Cpu).unwrap())
    }

    /// Softmax cross-entropy of one row of logits (already scaled) for class `y`, in f64.
    fn cross_entropy(logits: &[f64], y: usize) -> f64 {
        let max = logits.iter().copied().fold(f64::MIN, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        max + sum.ln() - logits[y]
    }

    #[test]
    fn the_loss_margins_the_target_and_modulates_hard_negatives() {
        // Row 0: target 0 with cos 0.8, so p = 0.8 cos 0.5 − 0.6 sin 0.5 = 0.414411;
        //   0.7 > p is hard and becomes 0.7 (t + 0.7) = 0.63 with t = 0.2; −0.2 stays.
        // Row 1: target 2 with cos 0.5, so p = 0.5 cos 0.5 − √0.75 sin 0.5 = 0.023597;
        //   0.1 and 0.3 are both above p: 0.1 · 0.3 = 0.03 and 0.3 · 0.5 = 0.15.
        let (c, labels) = batch(&[[0.8, 0.7, -0.2], [0.1, 0.3, 0.5]], &[0, 2]);
        let loss = CurricularFace { config: CurricularConfig::default(), t: 0.2 };
        let out = loss.loss(&c, &labels).unwrap();

        let p0 = 0.8 * 0.5f64.cos() - 0.6 * 0.5f64.sin();
        let p1 = 0.5 * 0.5f64.cos() - 0.75f64.sqrt() * 0.5f64.sin();
        assert!((p0 - 0.414411).abs() < 1e-6 && (p1 - 0.023597).abs() < 1e-6);
        let rows = [([p0, 0.63, -0.2], 0), ([0.03, 0.15, p1], 2)];
        let want =
            rows.iter().map(|(l, y)| cross_entropy(&l.map(|v| 30.0 * v), *y)).sum::<f64>() / 2.0;
        let got: f32 = out.loss.to_scalar().unwrap();
        assert!((f64::from(got) - want).abs() < 1e-4, "{got} vs {want}");
        assert!((out.mean_margined - (p0 + p1) / 2.0).abs() < 1e-6);
        assert!((out.mean_target - 0.65).abs() < 1e-6);
    }

    #[test]
    fn t_follows_the_reference_rule_or_the_official_one() {
        let (c, labels) = batch(&[[0.8, 0.7, -0.2], [0.1, 0.3, 0.5]], &[0, 2]);
        let mut reference = CurricularFace { config: CurricularConfig::default(), t: 0.2 };
        let out = reference.loss(&c, &labels).unwrap();
        reference.update_t(&out);
        // 0.99 · mean(p) + 0.01 · 0.2, with mean(p) = (0.414411 + 0.023597) / 2 = 0.219004.
        assert!((reference.t - (0.99 * 0.219004 + 0.002)).abs() < 1e-6, "{}", reference.t);

        let config = CurricularConfig { rule: TRule::Official, ..CurricularConfig::default() };
        let mut official = CurricularFace { config, t: 0.2 };
        let out = official.loss(&c, &labels).unwrap();
        official.update_t(&out);
        // 0.99 · 0.2 + 0.01 · mean(c_y), with mean(c_y) = (0.8 + 0.5) / 2.
        assert!((official.t - (0.198 + 0.0065)).abs() < 1e-9, "{}", official.t);
    }

    #[test]
    fn the_official_rule_keeps_the_target_below_pi() {
        // Target cos −0.95: θ = 2.824, and θ + 0.5 passes π. The official p is
        // −0.95 − 0.5 sin 0.5 = −1.189718; the reference's cos(θ + m) would be −0.987...
        let (c, labels) = batch(&[[-0.95, 0.1, 0.2]], &[0]);
        let config = CurricularConfig { rule: TRule::Official, ..CurricularConfig::default() };
        let out = CurricularFace::new(config).loss(&c, &labels).unwrap();
        assert!(
            (out.mean_margined - (-0.95 - 0.5 * 0.5f64.sin())).abs() < 1e-6,
            "{}",
            out.mean_margined
        );
        let reference = CurricularFace::new(CurricularConfig::default()).loss(&c, &labels).unwrap();
        let theta = (-0.95f64).acos();
        assert!((reference.mean_margined - (theta + 0.5).cos()).abs() < 1e-6);
    }

    #[test]
    fn the_loss_has_gradients_for_the_cosines() {
        let c =
            candle_core::Var::new(&[[0.8f32, 0.7, -0.2], [0.1, 0.3, 0.5]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let out = CurricularFace::new(CurricularConfig::default()).loss(&c, &labels).unwrap();
        let grads = out.loss.backward().unwrap();
        let g: Vec<Vec<f32>> = grads.get(&c).unwrap().to_vec2().unwrap();
        // Raising the target cosine lowers the loss; raising a competitor raises it.
        assert!(g[0][0] < 0.0 && g[0][1] > 0.0 && g[1][2] < 0.0, "{g:?}");
    }
}
