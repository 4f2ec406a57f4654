//! What can be wrong with a dataset, said so that a user can find and fix it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem that stops loading. Every message names the file, and the sample or CSV line where
/// there is one.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The path does not exist.
    #[error("{}: no such file or folder", .path.display())]
    Missing {
        /// What was asked for.
        path: PathBuf,
    },
    /// A folder that holds neither `train.h5` nor `test.h5`.
    #[error("{}: not a dataset: the folder holds neither train.h5 nor test.h5", .path.display())]
    NotADataset {
        /// The folder.
        path: PathBuf,
    },
    /// The file does not start with the HDF5 signature.
    #[error("{}: not an HDF5 file", .path.display())]
    NotHdf5 {
        /// The file.
        path: PathBuf,
    },
    /// An HDF5 file that cannot be opened or read: truncated, or otherwise damaged.
    #[error("{}{}: the HDF5 file is truncated or damaged ({detail})", .path.display(), sample_suffix(.id))]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The sample being read when it failed, if any.
        id: Option<String>,
        /// What the HDF5 library said.
        detail: String,
    },
    /// A sample with bad content, in strict mode (otherwise such samples are skipped).
    #[error("{path}: {skipped}", path = .0.path.display(), skipped = .0)]
    Sample(SkippedSample),
    /// A CSV file with a bad header, ID or label.
    #[error("{}: line {line}: {problem}", .path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The 1-based line.
        line: u64,
        /// What is wrong there.
        problem: CsvProblem,
    },
    /// No sample with the asked-for ID.
    #[error("{}: no sample with ID {id}", .path.display())]
    UnknownId {
        /// Where it was looked for.
        path: PathBuf,
        /// The ID.
        id: u32,
    },
    /// Every sample was skipped, or the file holds none.
    #[error("{}: no usable samples ({skipped} skipped)", .path.display())]
    NoSamples {
        /// The HDF5 file.
        path: PathBuf,
        /// How many were skipped for problems.
        skipped: usize,
    },
    /// Reading or writing failed at the operating-system level.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing an HDF5 file failed.
    #[error("{}: cannot write: {detail}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

fn sample_suffix(id: &Option<String>) -> String {
    id.as_ref().map(|id| format!(", sample {id}")).unwrap_or_default()
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing { path: path.to_owned() }
        } else {
            DataError::Io { path: path.to_owned(), source }
        }
    }
}

/// What is wrong with one line of a CSV file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsvProblem {
    /// The first line is not `ID,label`.
    #[error("the header is {found:?}, expected \"ID,label\"")]
    Header {
        /// The header as found.
        found: String,
    },
    /// A row without exactly two fields.
    #[error("expected two fields (ID,label), found {0}")]
    Fields(usize),
    /// An ID that is not a non-negative decimal integer.
    #[error("ID {0:?} is not a non-negative integer")]
    BadId(String),
    /// The same ID twice.
    #[error("sample {id} is listed twice (first on line {first_line})")]
    DuplicateId {
        /// The repeated ID.
        id: u32,
        /// Where it first appeared.
        first_line: u64,
    },
    /// A label that is not one of 0..=9.
    #[error("sample {id}: label {label:?} is not a digit 0..9")]
    BadLabel {
        /// The sample.
        id: u32,
        /// The label as found.
        label: String,
    },
    /// The text could not be read (for example, it is not UTF-8).
    #[error("unreadable: {0}")]
    Unreadable(String),
}

/// What is wrong with one sample's cloud. Such samples are skipped with a counted warning, or
/// stop loading in strict mode.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SampleProblem {
    /// The dataset's shape is not `(n, 3)`.
    #[error("shape is {0:?}, expected (n, 3)")]
    Shape(Vec<usize>),
    /// The dataset holds something other than numbers.
    #[error("data type is {0}, expected float32 or float64")]
    DataType(String),
    /// The dataset has no points.
    #[error("the cloud is empty")]
    Empty,
    /// A coordinate is NaN or infinite (after conversion to float32).
    #[error("point {point} has a coordinate that is {value} (not finite)")]
    NotFinite {
        /// The 0-based point.
        point: usize,
        /// The bad value.
        value: f32,
    },
    /// The CSV lists the sample but the HDF5 file has no cloud for it.
    #[error("listed in {csv} but the HDF5 file has no cloud for it")]
    NoCloud {
        /// The CSV file's name.
        csv: String,
    },
    /// The HDF5 file has a cloud that the CSV does not list.
    #[error("has a cloud but no row in {csv}")]
    NotListed {
        /// The CSV file's name.
        csv: String,
    },
    /// An HDF5 member that is not a sample: its name is not a decimal ID, or it is a group.
    #[error("not a sample: {0}")]
    NotASample(String),
}

/// A sample left out of a loaded set, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedSample {
    /// The file it was found in (or missing from).
    pub path: PathBuf,
    /// The sample's ID, or the HDF5 member's name when that is not an ID.
    pub id: String,
    /// What is wrong.
    pub problem: SampleProblem,
}

impl fmt::Display for SkippedSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sample {}: {}", self.id, self.problem)
    }
}
