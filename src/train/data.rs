//! Training data: the stratified validation split, the order of each epoch, and batches of
//! network inputs made on worker threads ahead of the model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::Point;
use crate::align::{Alignment, upright_pose};
use crate::dataset::CloudSet;
use crate::nn::model::{InputForm, Inputs, Preprocess, Scratch};
use crate::nn::pose::{TURNS, nearest_turn};
use crate::rotation::{Angles, RotationDistribution};

/// Random streams of one seed, kept apart by purpose.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Split = 1,
    Order = 2,
    Rotation = 3,
    Turn = 4,
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
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// One of the four turns of the pose network, each as likely, for sample `index` (always
    /// none without augmentation).
    pub fn turn(&self, index: usize) -> usize {
        match *self {
            Augment::None => 0,
            Augment::Random { seed, epoch, .. } => {
                rng(seed, Stream::Turn, epoch as u64, index as u64).random_range(0..TURNS.len())
            }
        }
    }

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

/// The clouds of `indices`, each rotated by `augment`, computed on all cores.
fn rotated_clouds(set: &CloudSet, indices: &[usize], augment: Augment) -> Vec<Vec<Point>> {
    indices.par_iter().map(|&i| augment.angles(i).rotation().rotate(set.get(i).cloud)).collect()
}

/// Makes one batch, computing the inputs of its samples in parallel.
pub fn make_batch(
    set: &CloudSet,
    indices: &[usize],
    inputs: &Inputs,
    augment: Augment,
) -> candle_core::Result<Batch> {
    let clouds = rotated_clouds(set, indices, augment);
    let mut input = vec![0f32; indices.len() * inputs.values()];
    inputs.write(&clouds, &mut input)?;
    let labels = set.labels().map(|labels| indices.iter().map(|&i| u32::from(labels[i])).collect());
    Ok(Batch { indices: indices.to_vec(), input, labels })
}

/// What the pose network trains on: the boards of clouds in their upright pose, and which of
/// the [`TURNS`](crate::nn::pose::TURNS) takes the upright pose of each cloud as it is in the
/// set to the one shown.
#[derive(Clone, Debug, PartialEq)]
pub struct PoseBatch {
    /// The samples, as indices into the set.
    pub indices: Vec<usize>,
    /// The boards, `[3, 46, 46]` per sample, back to back.
    pub input: Vec<f32>,
    /// The turns, as indices into `TURNS`.
    pub targets: Vec<u32>,
}

/// Makes one batch for the pose network: each cloud is turned by `augment` (and, with `mixed`,
/// then by one of the four turns, each as likely), put in its upright pose (where the learned
/// pose starts) and drawn as boards. Its target is the turn between the digit as written and
/// the one drawn: the upright pose of the cloud as the set has it is taken as the digit as
/// written, turned by `references[i]` (an index into `TURNS`; all none when empty).
pub fn make_pose_batch(
    set: &CloudSet,
    indices: &[usize],
    augment: Augment,
    mixed: bool,
    references: &[u8],
) -> PoseBatch {
    let boards = Preprocess { alignment: Alignment::None, form: InputForm::Boards };
    let len = boards.form.values();
    let mut input = vec![0f32; indices.len() * len];
    let mut targets = vec![0u32; indices.len()];
    input.par_chunks_mut(len).zip(targets.par_iter_mut()).zip(indices.par_iter()).for_each_init(
        || (Scratch::default(), Vec::new(), Vec::new()),
        |(scratch, turned, posed), ((out, target), &i)| {
            let cloud = set.get(i).cloud;
            let mut turn = augment.angles(i).rotation();
            if mixed {
                turn = TURNS[augment.turn(i)].then_apply(&turn);
            }
            turn.rotate_into(cloud, turned);
            let (_, before) = upright_pose(cloud);
            let (mean, after) = upright_pose(turned);
            posed.clear();
            posed.extend(turned.iter().map(|p| after.apply([0, 1, 2].map(|k| p[k] - mean[k]))));
            boards.write_posed(posed, scratch, out);
            let written = references.get(i).map_or(0, |&k| usize::from(k));
            let between = after.then_apply(&turn).then_apply(&before.inverse());
            *target = nearest_turn(&between.then_apply(&TURNS[written])) as u32;
        },
    );
    PoseBatch { indices: indices.to_vec(), input, targets }
}

/// Batches made on a background thread, a few ahead of the one in use, so that the model never
/// waits for its inputs to be computed.
pub struct Prefetcher<B> {
    batches: Option<Receiver<candle_core::Result<B>>>,
    cancel: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher<Batch> {
    /// Starts making the classifier batches of `plan` (lists of sample indices) in order,
    /// keeping at most `ahead` finished ones waiting.
    pub fn spawn(
        set: Arc<CloudSet>,
        plan: Vec<Vec<usize>>,
        inputs: Inputs,
        augment: Augment,
        ahead: usize,
    ) -> Self {
        Prefetcher::start(plan, ahead, move |indices| make_batch(&set, indices, &inputs, augment))
    }
}

impl<B: Send + 'static> Prefetcher<B> {
    /// Starts making the batches of `plan` with `make`, in order, keeping at most `ahead`
    /// finished ones waiting.
    pub fn start(
        plan: Vec<Vec<usize>>,
        ahead: usize,
        make: impl Fn(&[usize]) -> candle_core::Result<B> + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel(ahead.max(1));
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let worker = std::thread::Builder::new()
            .name("digit3d-batches".into())
            .spawn(move || {
                for indices in plan {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let batch = make(&indices);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the batch thread");
        Prefetcher { batches: Some(rx), cancel, worker: Some(worker) }
    }

    /// The next batch, `None` when the plan is done, or why it could not be made.
    pub fn next_batch(&self) -> candle_core::Result<Option<B>> {
        match self.batches.as_ref().map(Receiver::recv) {
            Some(Ok(batch)) => batch.map(Some),
            _ => Ok(None),
        }
    }
}

impl<B> Drop for Prefetcher<B> {
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
    use crate::dataset::Role;

    const VIEWS: Preprocess = Preprocess { alignment: Alignment::None, form: InputForm::Views };

    fn views() -> Inputs {
        Inputs::new(VIEWS)
    }

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
        let prefetcher = Prefetcher::spawn(Arc::clone(&set), plan.clone(), views(), augment, 2);
        for indices in &plan {
            let batch = prefetcher.next_batch().unwrap().unwrap();
            assert_eq!(batch, make_batch(&set, indices, &views(), augment).unwrap());
            assert_eq!(batch.input.len(), indices.len() * VIEWS.form.values());
        }
        assert!(prefetcher.next_batch().unwrap().is_none());
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
        let prefetcher = Prefetcher::spawn(set, plan, views(), Augment::None, 1);
        assert!(prefetcher.next_batch().unwrap().is_some());
        drop(prefetcher);
    }

    #[test]
    fn the_pose_target_takes_the_upright_pose_of_the_cloud_to_the_one_shown() {
        // An asymmetric digit (an L) lifted flat, then tilted a little as a set's clouds are.
        let flat = crate::lift::testing::l_shape(2);
        let cloud = Angles::new(0.2, -0.1, 0.3).rotation().rotate(&flat);
        let set = CloudSet::from_samples(Role::Train, "t.h5".into(), vec![(0, Some(7), cloud)]);

        let mut reference = Vec::new();
        Alignment::Upright.apply(set.get(0).cloud, &mut reference);
        for epoch in 0..6 {
            let augment =
                Augment::Random { distribution: RotationDistribution::Uniform, seed: 1, epoch };
            let batch = make_pose_batch(&set, &[0], augment, epoch % 2 == 1, &[]);
            let target = TURNS[batch.targets[0] as usize];
            // The target applied to the reference gives the posed cloud the boards show.
            let mut shown = Vec::new();
            let mut turn = augment.angles(0).rotation();
            if epoch % 2 == 1 {
                turn = TURNS[augment.turn(0)].then_apply(&turn);
            }
            let turned = turn.rotate(set.get(0).cloud);
            Alignment::Upright.apply(&turned, &mut shown);
            let worst = reference
                .iter()
                .zip(&shown)
                .map(|(p, q)| {
                    let moved = target.apply(*p);
                    (0..3).map(|k| (moved[k] - q[k]).abs()).fold(0f32, f32::max)
                })
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "epoch {epoch}: {worst}");
            let mut boards = vec![0f32; 3 * 46 * 46];
            Preprocess { alignment: Alignment::None, form: InputForm::Boards }.write(
                &shown,
                &mut Scratch::default(),
                &mut boards,
            );
            assert_eq!(batch.input, boards);
        }
    }
}
