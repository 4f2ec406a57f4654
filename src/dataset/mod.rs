//! Datasets in the Dacon "3D digit" layout: `train.h5` with `train.csv`, `test.h5` with
//! `sample_submission.csv`.
//!
//! A loaded set keeps every cloud in one allocation of f32 points, so 50,000 clouds of thousands
//! of points cost little more than the points themselves.
//!
//! Problems with the files stop loading; problems with a single sample skip that sample and are
//! counted in a [`LoadReport`] (or stop loading too, in strict mode). The README has the table.

mod error;
mod h5;
mod labels;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{CsvProblem, DataError, SampleProblem, SkippedSample};
pub use h5::{Storage, write_clouds};
pub use labels::{LabelRow, parse_id, read_labels, write_labels};

use crate::Point;
use h5::CloudFile;

/// The training clouds' file in a dataset folder.
pub const TRAIN_H5: &str = "train.h5";
/// The training labels' file in a dataset folder.
pub const TRAIN_CSV: &str = "train.csv";
/// The test clouds' file in a dataset folder.
pub const TEST_H5: &str = "test.h5";
/// The submission template: the test IDs in the order predictions must follow.
pub const SUBMISSION_CSV: &str = "sample_submission.csv";

/// Which part of a dataset a set of clouds is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Labelled clouds to learn from.
    Train,
    /// Clouds to predict.
    Test,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Train => "train",
            Role::Test => "test",
        })
    }
}

/// How strictly to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Stop at the first bad sample instead of skipping it.
    pub strict: bool,
}

/// The samples left out while loading, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Every skipped sample, in the order met.
    pub skipped: Vec<SkippedSample>,
}

impl LoadReport {
    /// How many samples were skipped for each kind of problem, as `(kind, count)` sorted by kind.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for skipped in &self.skipped {
            *counts.entry(problem_kind(&skipped.problem)).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}

/// A short name for a problem, for counting.
fn problem_kind(problem: &SampleProblem) -> &'static str {
    match problem {
        SampleProblem::Shape(_) => "shape not (n, 3)",
        SampleProblem::DataType(_) => "not numeric",
        SampleProblem::Empty => "empty cloud",
        SampleProblem::NotFinite { .. } => "NaN or infinite coordinate",
        SampleProblem::NoCloud { .. } => "in the CSV, not in the HDF5 file",
        SampleProblem::NotListed { .. } => "in the HDF5 file, not in the CSV",
        SampleProblem::NotASample(_) => "not a sample",
    }
}

/// One sample: its ID, its label when known, and its cloud.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The sample's ID.
    pub id: u32,
    /// The digit, for labelled sets.
    pub label: Option<u8>,
    /// The points.
    pub cloud: &'a [Point],
}

/// The clouds of one HDF5 file, with their IDs and (for training sets) labels.
#[derive(Clone, Debug)]
pub struct CloudSet {
    role: Role,
    h5_path: PathBuf,
    csv_path: Option<PathBuf>,
    ids: Vec<u32>,
    labels: Option<Vec<u8>>,
    offsets: Vec<usize>,
    points: Vec<Point>,
    positions: HashMap<u32, usize>,
}

impl CloudSet {
    /// Loads the clouds of `h5_path`.
    ///
    /// With `csv`, the CSV's rows give the samples and their order; its labels are read when the
    /// second member is true (a training file) and ignored otherwise (a submission template).
    /// Without it, every cloud of the file is loaded, in increasing ID order, unlabelled.
    /// Skipped samples are added to `report`.
    pub fn load(
        role: Role,
        h5_path: &Path,
        csv: Option<(&Path, bool)>,
        options: LoadOptions,
        report: &mut LoadReport,
    ) -> Result<CloudSet, DataError> {
        // Read the CSV first: it is small, and a bad one should fail before a long HDF5 read.
        let rows = csv.map(|(path, with_labels)| read_labels(path, with_labels)).transpose()?;
        let file = CloudFile::open(h5_path)?;
        let mut skipper = Skipper { path: h5_path, strict: options.strict, report };
        let csv_name = csv
            .and_then(|(path, _)| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();

        let present = present_ids(&file, h5_path, &mut skipper)?;
        let order = match &rows {
            Some(rows) => listed_order(rows, &present, &csv_name, &mut skipper)?,
            None => {
                let mut ids: Vec<u32> = present.iter().copied().collect();
                ids.sort_unstable();
                ids.into_iter().map(|id| (id, None)).collect()
            }
        };

        let labelled = matches!(csv, Some((_, true)));
        let mut set = CloudSet {
            role,
            h5_path: h5_path.to_owned(),
            csv_path: csv.map(|(p, _)| p.to_owned()),
            ids: Vec::with_capacity(order.len()),
            labels: labelled.then(|| Vec::with_capacity(order.len())),
            offsets: Vec::with_capacity(order.len() + 1),
            points: Vec::new(),
            positions: HashMap::with_capacity(order.len()),
        };
        set.offsets.push(0);
        for (id, label) in order {
            match file.read_cloud(h5_path, &id.to_string(), &mut set.points)? {
                Ok(()) => set.push_loaded(id, label),
                Err(problem) => skipper.skip(id.to_string(), problem)?,
            }
        }

        if set.ids.is_empty() {
            return Err(DataError::NoSamples {
                path: h5_path.to_owned(),
                skipped: skipper.report.skipped.len(),
            });
        }
        // NOTE: the points grew by doubling; give back the unused tail (a cheap remap for an
        // allocation this large).
        set.points.shrink_to_fit();
        Ok(set)
    }

    /// Records a sample whose points were just appended.
    fn push_loaded(&mut self, id: u32, label: Option<u8>) {
        self.positions.insert(id, self.ids.len());
        self.ids.push(id);
        if let (Some(labels), Some(label)) = (self.labels.as_mut(), label) {
            labels.push(label);
        }
        self.offsets.push(self.points.len());
    }

    /// A set built from clouds in memory (for tests and tools); labels are kept when every
    /// sample has one.
    pub fn from_samples(
        role: Role,
        h5_path: PathBuf,
        samples: Vec<(u32, Option<u8>, Vec<Point>)>,
    ) -> CloudSet {
        let labelled = samples.iter().all(|(_, label, _)| label.is_some());
        let mut set = CloudSet {
            role,
            h5_path,
            csv_path: None,
            ids: Vec::new(),
            labels: labelled.then(Vec::new),
            offsets: vec![0],
            points: Vec::new(),
            positions: HashMap::new(),
        };
        for (id, label, cloud) in samples {
            set.points.extend(cloud);
            set.push_loaded(id, label);
        }
        set
    }

    /// Whether these are training or test clouds.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The HDF5 file the clouds came from.
    pub fn h5_path(&self) -> &Path {
        &self.h5_path
    }

    /// The CSV file that gave the order (and labels), if any.
    pub fn csv_path(&self) -> Option<&Path> {
        self.csv_path.as_deref()
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no samples (a loaded set never is empty).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The IDs, in the set's order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The labels, in the set's order, when the set is labelled.
    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }

    /// The sample at `index`.
    ///
    /// # Panics
    ///
    /// When `index >= len()`.
    pub fn get(&self, index: usize) -> Sample<'_> {
        Sample {
            id: self.ids[index],
            label: self.labels.as_ref().map(|l| l[index]),
            cloud: &self.points[self.offsets[index]..self.offsets[index + 1]],
        }
    }

    /// The index of the sample with ID `id`, if the set has it.
    pub fn position(&self, id: u32) -> Option<usize> {
        self.positions.get(&id).copied()
    }

    /// Every sample, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Sample<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// All points of all clouds, back to back.
    pub fn points(&self) -> &[Point] {
        &self.points
    }
}

/// Where skipped samples go: into the report, or (in strict mode) out as the error that stops
/// loading.
struct Skipper<'a> {
    path: &'a Path,
    strict: bool,
    report: &'a mut LoadReport,
}

impl Skipper<'_> {
    fn skip(&mut self, id: String, problem: SampleProblem) -> Result<(), DataError> {
        let skipped = SkippedSample { path: self.path.to_owned(), id, problem };
        if self.strict {
            return Err(DataError::Sample(skipped));
        }
        tracing::debug!("skipping {}: {skipped}", self.path.display());
        self.report.skipped.push(skipped);
        Ok(())
    }
}

/// The sample IDs among the file's members; members that are not samples are skipped.
fn present_ids(
    file: &CloudFile,
    path: &Path,
    skipper: &mut Skipper,
) -> Result<HashSet<u32>, DataError> {
    let mut present = HashSet::new();
    for name in file.member_names(path)? {
        match parse_id(&name) {
            Some(id) => {
                present.insert(id);
            }
            None => {
                let problem = SampleProblem::NotASample(format!("{name:?} is not a decimal ID"));
                skipper.skip(name, problem)?;
            }
        }
    }
    Ok(present)
}

/// The samples to read, in the CSV's order, with their labels. Clouds the CSV does not list and
/// rows without a cloud are skipped.
fn listed_order(
    rows: &[LabelRow],
    present: &HashSet<u32>,
    csv_name: &str,
    skipper: &mut Skipper,
) -> Result<Vec<(u32, Option<u8>)>, DataError> {
    let listed: HashSet<u32> = rows.iter().map(|r| r.id).collect();
    let mut unlisted: Vec<u32> =
        present.iter().copied().filter(|id| !listed.contains(id)).collect();
    unlisted.sort_unstable();
    for id in unlisted {
        skipper.skip(id.to_string(), SampleProblem::NotListed { csv: csv_name.to_owned() })?;
    }

    let mut order = Vec::with_capacity(rows.len());
    for row in rows {
        if present.contains(&row.id) {
            order.push((row.id, row.label));
        } else {
            skipper
                .skip(row.id.to_string(), SampleProblem::NoCloud { csv: csv_name.to_owned() })?;
        }
    }
    Ok(order)
}

/// A dataset folder (or a single HDF5 file) loaded into memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The folder or file that was opened.
    pub path: PathBuf,
    /// The training clouds, when present.
    pub train: Option<CloudSet>,
    /// The test clouds, when present.
    pub test: Option<CloudSet>,
}

impl Dataset {
    /// Opens a dataset folder or a single HDF5 file.
    ///
    /// A folder needs `train.h5` or `test.h5` (or both). `train.csv` beside `train.h5` labels
    /// it; `sample_submission.csv` beside `test.h5` orders it. A single file `NAME.h5` is a test
    /// set when `NAME` is `test` (ordered by `sample_submission.csv` beside it, if present) and a
    /// training set otherwise (labelled by `NAME.csv` beside it, if present).
    pub fn open(path: &Path, options: LoadOptions) -> Result<(Dataset, LoadReport), DataError> {
        let mut report = LoadReport::default();
        let mut dataset = Dataset { path: path.to_owned(), train: None, test: None };
        for part in parts(path)? {
            let index = part.csv.as_deref().map(|csv| (csv, part.role == Role::Train));
            let set = CloudSet::load(part.role, &part.h5, index, options, &mut report)?;
            match part.role {
                Role::Train => dataset.train = Some(set),
                Role::Test => dataset.test = Some(set),
            }
        }
        Ok((dataset, report))
    }

    /// Reads the one sample with ID `id` from a dataset folder or file (as [`Dataset::open`]
    /// finds them), without loading the others. A bad cloud is an error here, not a skip.
    pub fn read_sample(path: &Path, id: u32) -> Result<OwnedSample, DataError> {
        let name = id.to_string();
        for part in parts(path)? {
            let file = CloudFile::open(&part.h5)?;
            if !file.has(&name) {
                continue;
            }
            let mut cloud = Vec::new();
            if let Err(problem) = file.read_cloud(&part.h5, &name, &mut cloud)? {
                return Err(DataError::Sample(SkippedSample { path: part.h5, id: name, problem }));
            }
            let label = match (&part.csv, part.role) {
                (Some(csv), Role::Train) => {
                    read_labels(csv, true)?.iter().find(|r| r.id == id).and_then(|r| r.label)
                }
                _ => None,
            };
            return Ok(OwnedSample { role: part.role, h5_path: part.h5, id, label, cloud });
        }
        Err(DataError::UnknownId { path: path.to_owned(), id })
    }

    /// The sets present, training first.
    pub fn sets(&self) -> impl Iterator<Item = &CloudSet> {
        self.train.iter().chain(self.test.iter())
    }

    /// The set and index of the sample with ID `id`, searching training then test clouds.
    pub fn find(&self, id: u32) -> Option<(&CloudSet, usize)> {
        self.sets().find_map(|set| set.position(id).map(|i| (set, i)))
    }
}

/// One sample read on its own.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedSample {
    /// Whether it is a training or test sample.
    pub role: Role,
    /// The HDF5 file it came from.
    pub h5_path: PathBuf,
    /// Its ID.
    pub id: u32,
    /// Its label, for a labelled training sample.
    pub label: Option<u8>,
    /// Its points.
    pub cloud: Vec<Point>,
}

/// One HDF5 file of a dataset and the CSV that indexes it, when that exists.
struct Part {
    role: Role,
    h5: PathBuf,
    csv: Option<PathBuf>,
}

/// The parts of the dataset at `path`, a folder or a single HDF5 file (see [`Dataset::open`]).
fn parts(path: &Path) -> Result<Vec<Part>, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let part =
        |role, h5: PathBuf, csv: PathBuf| Part { role, h5, csv: csv.exists().then_some(csv) };
    if !meta.is_dir() {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        return Ok(vec![if stem == "test" {
            part(Role::Test, path.to_owned(), path.with_file_name(SUBMISSION_CSV))
        } else {
            part(Role::Train, path.to_owned(), path.with_extension("csv"))
        }]);
    }

    let found: Vec<Part> = [
        part(Role::Train, path.join(TRAIN_H5), path.join(TRAIN_CSV)),
        part(Role::Test, path.join(TEST_H5), path.join(SUBMISSION_CSV)),
    ]
    .into_iter()
    .filter(|p| p.h5.exists())
    .collect();
    if found.is_empty() {
        return Err(DataError::NotADataset { path: path.to_owned() });
    }
    Ok(found)
}
