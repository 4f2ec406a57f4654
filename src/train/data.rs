//! Training data: the stratified validation split, the order of each epoch, and batches of
//! network inputs made on worker threads ahead of the model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::dataset::CloudSet;
use crate::nn::model::{Preprocess, Scratch};
use crate::rotation::{Angles, RotationDistribution};

/// Random streams of one seed, kept apart by purpose.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Split = 1,
    Order = 2,
    Rotation = 3,
}

/// A generator for `purpose` under `seed`, further keyed by `a` and `b` (an epoch and a sample,
/// say), so that every random choice is reproducible on its own, whatever the threads do.
fn rng(seed: u64, purpose: Stream, a: u64, b: u64) -> ChaCha8Rng {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (purpose as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    rng.set_stream(a << 32 | b);
    rng
}

/// Splits sample indices into training and validation parts, each class in the same proportion
/// (`val_fraction` of each class, rounded, goes to validation). Both parts are in index order.
pub fn stratified_split(labels: &[u8], val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for class in 0..10u8 {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng(seed, Stream::Split, u64::from(class), 0));
        let n_val = (members.len() as f64 * val_fraction).round() as usize;
        val.extend_from_slice(&members[..n_val]);
        train.extend_from_slice(&members[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// The training samples of epoch `epoch` (from 0) in their shuffled order.
pub fn epoch_order(train: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = train.to_vec();
    order.shuffle(&mut rng(seed, Stream::Order, epoch as u64, 0));
    order
}

/// How the clouds of a batch are rotated before their views are taken.
#[derive(Clone, Copy, Debug)]
pub enum Augment {
    /// As they are.
    None,
    /// By angles from `distribution`, drawn afresh for every sample of every epoch.
    Random {
        /// Where angles come from.
        distribution: RotationDistribution,
        /// The run's seed.
        seed: u64,
        /// The epoch (or test-time pass) the draw belongs to.
        epoch: usize,
    },
}

impl Augment {
    /// The angles for sample `index`.
    pub fn angles(&self, index: usize) -> Angles {
        match *self {
            Augment::None => Angles::ZERO,
            Augment::Random { distribution, seed, epoch } => {
                distribution.sample(&mut rng(seed, Stream::Rotation, epoch as u64, index as u64))
            }
        }
    }
}

/// The network inputs and labels of some samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The samples, as indices into the set.
    pub indices: Vec<usize>,
    /// `indices.len()` inputs of the model's input form, back to back.
    pub input: Vec<f32>,
    /// The labels, when the set has them.
    pub labels: Option<Vec<u32>>,
}

/// Makes one batch, computing the inputs of its samples in parallel.
pub fn make_batch(
    set: &CloudSet,
    indices: &[usize],
    preprocess: Preprocess,
    augment: Augment,
) -> Batch {
    let len = preprocess.form.values();
    let mut input = vec![0f32; indices.len() * len];
    input.par_chunks_mut(len).zip(indices.par_iter()).for_each_init(
        || (Scratch::default(), Vec::new()),
        |(scratch, rotated), (out, &i)| {
            augment.angles(i).rotation().rotate_into(set.get(i).cloud, rotated);
            preprocess.write(rotated, scratch, out);
        },
    );
    let labels = set.labels().map(|labels| indices.iter().map(|&i| u32::from(labels[i])).collect());
    Batch { indices: indices.to_vec(), input, labels }
}

/// Batches made on a background thread, a few ahead of the one in use, so that the model never
/// waits for views to be computed.
pub struct Prefetcher {
    batches: Option<Receiver<Batch>>,
    cancel: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts making the batches of `plan` (lists of sample indices) in order, keeping at most
    /// `ahead` finished ones waiting.
    pub fn spawn(
        set: Arc<CloudSet>,
        plan: Vec<Vec<usize>>,
        preprocess: Preprocess,
        augment: Augment,
        ahead: usize,
    ) -> Self {
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(ahead.max(1));
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let worker = std::thread::Builder::new()
            .name("digit3d-batches".into())
            .spawn(move || {
                for indices in plan {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if tx.send(make_batch(&set, &indices, preprocess, augment)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the batch thread");
        Prefetcher { batches: Some(rx), cancel, worker: Some(worker) }
    }

    /// The next batch, or `None` when the plan is done.
    pub fn next_batch(&self) -> Option<Batch> {
        self.batches.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Closing the channel wakes a worker blocked on a full one: its send fails and it ends.
        self.batches.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::Alignment;
    use crate::dataset::Role;
    use crate::nn::model::InputForm;

    const VIEWS: Preprocess = Preprocess { alignment: Alignment::None, form: InputForm::Views };

    fn labels(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 10) as u8).collect()
    }

    #[test]
    fn the_split_is_stratified_disjoint_and_seeded() {
        let labels = labels(1000);
        let (train, val) = stratified_split(&labels, 0.2, 3);
        assert_eq!((train.len(), val.len()), (800, 200));
        for class in 0..10u8 {
            assert_eq!(val.iter().filter(|&&i| labels[i] == class).count(), 20);
        }
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(stratified_split(&labels, 0.2, 3), (train.clone(), val.clone()));
        assert_ne!(stratified_split(&labels, 0.2, 4).1, val);
    }

    #[test]
    fn epochs_are_shuffled_differently_but_reproducibly() {
        let train: Vec<usize> = (0..100).collect();
        assert_eq!(epoch_order(&train, 1, 0), epoch_order(&train, 1, 0));
        assert_ne!(epoch_order(&train, 1, 0), epoch_order(&train, 1, 1));
        let mut sorted = epoch_order(&train, 1, 5);
        sorted.sort_unstable();
        assert_eq!(sorted, train);
    }

    #[test]
    fn prefetched_batches_equal_batches_made_in_place() {
        let samples = (0..12u32)
            .map(|id| {
                (id, Some((id % 10) as u8), vec![[0.01 * id as f32, 0.2, -0.3], [0.5, -0.5, 0.1]])
            })
            .collect();
        let set = Arc::new(CloudSet::from_samples(Role::Train, "t.h5".into(), samples));
        let augment =
            Augment::Random { distribution: RotationDistribution::Uniform, seed: 9, epoch: 2 };
        let plan = vec![vec![0, 5, 7], vec![11, 2], vec![3]];
        let prefetcher = Prefetcher::spawn(Arc::clone(&set), plan.clone(), VIEWS, augment, 2);
        for indices in &plan {
            let batch = prefetcher.next_batch().unwrap();
            assert_eq!(batch, make_batch(&set, indices, VIEWS, augment));
            assert_eq!(batch.input.len(), indices.len() * VIEWS.form.values());
        }
        assert!(prefetcher.next_batch().is_none());
        // The rotation of a sample depends on the epoch, not on which batch it is in.
        assert_eq!(augment.angles(5), augment.angles(5));
        let other =
            Augment::Random { distribution: RotationDistribution::Uniform, seed: 9, epoch: 3 };
        assert_ne!(augment.angles(5), other.angles(5));
    }

    #[test]
    fn dropping_a_prefetcher_midway_ends_its_thread() {
        let samples = (0..4u32).map(|id| (id, Some(1), vec![[0.0, 0.0, 0.0]])).collect();
        let set = Arc::new(CloudSet::from_samples(Role::Train, "t.h5".into(), samples));
        let plan = vec![vec![0]; 50];
        let prefetcher = Prefetcher::spawn(set, plan, VIEWS, Augment::None, 1);
        assert!(prefetcher.next_batch().is_some());
        drop(prefetcher);
    }
}
