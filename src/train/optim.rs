//! AdamW with decoupled weight decay, whose state can be saved and restored exactly, and the
//! learning-rate schedule: linear warm-up, then cosine decay to zero.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::nn::params::Params;

/// AdamW's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay, applied to weight matrices and filters only (not to the scales
    /// and shifts of batch normalisation).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// β₁ 0.9, β₂ 0.999, ε 1e-8, weight decay 1e-4.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
    decay: bool,
}

/// AdamW over a model's trainable tensors.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    steps: u64,
}

impl AdamW {
    /// An optimiser for the trainable tensors of `params`, with zero moments.
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| {
                Ok(Slot {
                    name: p.name.clone(),
                    var: p.var.clone(),
                    m: Var::zeros(p.var.shape(), p.var.dtype(), p.var.device())?,
                    v: Var::zeros(p.var.shape(), p.var.dtype(), p.var.device())?,
                    decay: p.var.rank() >= 2,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { config, slots, steps: 0 })
    }

    /// Updates every tensor that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let correct1 = 1.0 / (1.0 - beta1.powi(self.steps as i32));
        let correct2 = 1.0 / (1.0 - beta2.powi(self.steps as i32));
        for slot in &self.slots {
            let Some(g) = grads.get(&slot.var) else {
                continue;
            };
            let m = ((slot.m.as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((slot.v.as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&m * correct1)? / ((&v * correct2)?.sqrt()? + eps)?)?;
            let mut theta = slot.var.as_tensor().clone();
            if slot.decay {
                theta = (theta * (1.0 - lr * weight_decay))?;
            }
            slot.var.set(&(theta - (update * lr)?)?)?;
            slot.m.set(&m)?;
            slot.v.set(&v)?;
        }
        Ok(())
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The moments, named `adamw.m.NAME` and `adamw.v.NAME`, for saving.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for slot in &self.slots {
            out.insert(
                format!("adamw.m.{}", slot.name),
                slot.m.as_tensor().to_device(&candle_core::Device::Cpu)?,
            );
            out.insert(
                format!("adamw.v.{}", slot.name),
                slot.v.as_tensor().to_device(&candle_core::Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restores the moments saved by [`AdamW::state`] and the step count; fails, changing
    /// nothing, when a moment is missing or has another shape.
    pub fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), String> {
        let find = |kind: &str, slot: &Slot| -> std::result::Result<Tensor, String> {
            let key = format!("adamw.{kind}.{}", slot.name);
            let t =
                tensors.get(&key).ok_or_else(|| format!("it has no optimiser state {key:?}"))?;
            if t.dims() != slot.var.dims() {
                return Err(format!(
                    "{key:?} has shape {:?}, expected {:?}",
                    t.dims(),
                    slot.var.dims()
                ));
            }
            t.to_device(slot.var.device()).map_err(|e| e.to_string())
        };
        let mut restored = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            restored.push((find("m", slot)?, find("v", slot)?));
        }
        for (slot, (m, v)) in self.slots.iter().zip(restored) {
            slot.m.set(&m).map_err(|e| e.to_string())?;
            slot.v.set(&v).map_err(|e| e.to_string())?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to 0 at `total`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The highest learning rate.
    pub peak: f64,
    /// Steps of warm-up.
    pub warmup: u64,
    /// Steps in all.
    pub total: u64,
}

impl Schedule {
    /// The learning rate for step `step` (counted from 0).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::params::Init;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let s = Schedule { peak: 1.0, warmup: 10, total: 110 };
        assert!((s.at(0) - 0.1).abs() < 1e-12);
        assert!((s.at(9) - 1.0).abs() < 1e-12);
        assert!((s.at(10) - 1.0).abs() < 1e-12);
        assert!((s.at(60) - 0.5).abs() < 1e-12);
        assert!(s.at(110).abs() < 1e-12 && s.at(500).abs() < 1e-12);
    }

    #[test]
    fn adamw_takes_the_textbook_first_step() {
        // After one step from zero moments, the bias-corrected update is g / (|g| + ε): each
        // weight moves by about lr against its gradient's sign, after the decay.
        let mut params = Params::new(0, &Device::Cpu);
        let w = params.add("w", &[1, 2], Init::Constant(1.0), true).unwrap();
        let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
        let loss = (w.as_tensor() * &Tensor::new(&[[3f32, -0.5]], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        let got: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let decayed = 1.0 - 0.1 * 1e-4;
        assert!((f64::from(got[0]) - (decayed - 0.1)).abs() < 1e-6, "{got:?}");
        assert!((f64::from(got[1]) - (decayed + 0.1)).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn saved_state_restores_the_same_next_step() {
        let make = || {
            let mut params = Params::new(0, &Device::Cpu);
            let w = params.add("w", &[2, 2], Init::Constant(0.5), true).unwrap();
            (params, w)
        };
        let grad_of = |w: &Var, k: f32| {
            let target = Tensor::new(&[[k, 1.0], [0.0, -k]], &Device::Cpu).unwrap();
            (w.as_tensor() - target).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap()
        };
        let (params_a, wa) = make();
        let mut a = AdamW::new(&params_a, AdamWConfig::default()).unwrap();
        for k in 0..3 {
            a.step(&grad_of(&wa, k as f32), 0.05).unwrap();
        }
        // A second optimiser restored from the first's state, on a copy of its weights.
        let (params_b, wb) = make();
        wb.set(wa.as_tensor()).unwrap();
        let mut b = AdamW::new(&params_b, AdamWConfig::default()).unwrap();
        b.restore(&a.state().unwrap(), a.steps()).unwrap();
        a.step(&grad_of(&wa, 5.0), 0.05).unwrap();
        b.step(&grad_of(&wb, 5.0), 0.05).unwrap();
        let va: Vec<f32> = wa.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = wb.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb);
    }
}
