//! A model's tensors by name: created with seeded initial values, counted, saved and loaded.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Glorot (Xavier) uniform: `±sqrt(6 / (fan_in + fan_out))`, Keras' default for kernels.
    Glorot {
        /// Inputs feeding one output.
        fan_in: usize,
        /// Outputs fed by one input.
        fan_out: usize,
    },
    /// Every element the same.
    Constant(f32),
}

/// One named tensor.
#[derive(Clone, Debug)]
pub struct Param {
    /// A dotted name such as `block2_sepconv1_bn.gamma`.
    pub name: String,
    /// The tensor.
    pub var: Var,
    /// Whether the optimiser changes it (batch-norm running statistics are not trained).
    pub trainable: bool,
}

/// Every tensor of a model, in creation order.
#[derive(Debug)]
pub struct Params {
    entries: Vec<Param>,
    rng: ChaCha8Rng,
    device: Device,
}

impl Params {
    /// An empty store whose initial values come from `seed`: the same seed gives the same
    /// model.
    pub fn new(seed: u64, device: &Device) -> Self {
        Params { entries: Vec::new(), rng: ChaCha8Rng::seed_from_u64(seed), device: device.clone() }
    }

    /// Creates a tensor named `name`.
    pub fn add(&mut self, name: &str, shape: &[usize], init: Init, trainable: bool) -> Result<Var> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Glorot { fan_in, fan_out } => {
                let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
                (0..n).map(|_| self.rng.random_range(-limit..=limit)).collect()
            }
            Init::Constant(value) => vec![value; n],
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        self.entries.push(Param { name: name.to_owned(), var: var.clone(), trainable });
        Ok(var)
    }

    /// Puts `prefix` before the name of every tensor, to keep the tensors of two models that
    /// are saved together apart.
    pub fn prefix_names(&mut self, prefix: &str) {
        for p in &mut self.entries {
            p.name.insert_str(0, prefix);
        }
    }

    /// Where the tensors live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every tensor, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.entries.iter()
    }

    /// The tensors the optimiser trains.
    pub fn trainable(&self) -> Vec<Var> {
        self.entries.iter().filter(|p| p.trainable).map(|p| p.var.clone()).collect()
    }

    /// The number of elements, all and trainable.
    pub fn count(&self) -> (usize, usize) {
        let all = self.entries.iter().map(|p| p.var.elem_count()).sum();
        let trainable =
            self.entries.iter().filter(|p| p.trainable).map(|p| p.var.elem_count()).sum();
        (all, trainable)
    }

    /// A copy of every tensor, by name, for saving.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.entries
            .iter()
            .map(|p| Ok((p.name.clone(), p.var.as_tensor().to_device(&Device::Cpu)?)))
            .collect()
    }

    /// Sets every tensor from `tensors`, which must hold exactly these names with these shapes
    /// (as a checkpoint of the same model does). On a mismatch nothing is changed.
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
        for p in &self.entries {
            let Some(t) = tensors.get(&p.name) else {
                return Err(format!("it has no tensor {:?}", p.name));
            };
            if t.dims() != p.var.dims() {
                return Err(format!(
                    "{:?} has shape {:?}, expected {:?}",
                    p.name,
                    t.dims(),
                    p.var.dims()
                ));
            }
        }
        if let Some(extra) = tensors.keys().find(|k| !self.entries.iter().any(|p| &&p.name == k)) {
            return Err(format!("it has a tensor {extra:?} this model does not"));
        }
        for p in &self.entries {
            let t = tensors[&p.name].to_dtype(DType::F32).and_then(|t| t.to_device(&self.device));
            p.var.set(&t.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
