//! Clouds in HDF5 files: one `(n, 3)` dataset per sample at the root, named by its decimal ID.

use std::fs;
use std::io::Read;
use std::path::Path;

use hdf5::types::TypeDescriptor;

use super::error::{DataError, SampleProblem};
use crate::Point;
use crate::atomic::write_atomically;

/// The eight bytes every HDF5 file starts with (when it has no user block).
const SIGNATURE: [u8; 8] = *b"\x89HDF\r\n\x1a\n";

/// An HDF5 file of clouds, open for reading.
pub(crate) struct CloudFile {
    file: hdf5::File,
}

impl CloudFile {
    /// Opens `path`, telling a missing file, a file that is not HDF5 and a damaged one apart.
    pub(crate) fn open(path: &Path) -> Result<Self, DataError> {
        let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            return Err(DataError::NotHdf5 { path: path.to_owned() });
        }
        match hdf5::File::open(path) {
            Ok(file) => Ok(CloudFile { file }),
            Err(_) if !starts_with_signature(path) => {
                Err(DataError::NotHdf5 { path: path.to_owned() })
            }
            Err(e) => {
                Err(DataError::Damaged { path: path.to_owned(), id: None, detail: e.to_string() })
            }
        }
    }

    /// The names of the root's members, in the file's own order.
    pub(crate) fn member_names(&self, path: &Path) -> Result<Vec<String>, DataError> {
        self.file.member_names().map_err(|e| DataError::Damaged {
            path: path.to_owned(),
            id: None,
            detail: e.to_string(),
        })
    }

    /// Whether the root has a member called `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.file.link_exists(name)
    }

    /// Appends the cloud named `name` to `points`, converted to f32.
    ///
    /// The outer error is a damaged file (loading stops); the inner one a problem with this
    /// sample alone (it can be skipped). On any error `points` is left as it was.
    pub(crate) fn read_cloud(
        &self,
        path: &Path,
        name: &str,
        points: &mut Vec<Point>,
    ) -> Result<Result<(), SampleProblem>, DataError> {
        let damaged = |e: hdf5::Error| DataError::Damaged {
            path: path.to_owned(),
            id: Some(name.to_owned()),
            detail: e.to_string(),
        };
        let dataset = match self.file.dataset(name) {
            Ok(dataset) => dataset,
            Err(_) if self.file.group(name).is_ok() => {
                return Ok(Err(SampleProblem::NotASample(format!("{name:?} is a group"))));
            }
            Err(e) => return Err(damaged(e)),
        };

        let shape = dataset.shape();
        if shape.len() != 2 || shape[1] != 3 {
            return Ok(Err(SampleProblem::Shape(shape)));
        }
        let descriptor = dataset.dtype().and_then(|t| t.to_descriptor()).map_err(damaged)?;
        if !is_numeric(&descriptor) {
            return Ok(Err(SampleProblem::DataType(descriptor.to_string())));
        }
        let n = shape[0];
        if n == 0 {
            return Ok(Err(SampleProblem::Empty));
        }

        let start = points.len();
        points.resize(start + n, [0.0; 3]);
        let read = dataset.read_into_raw::<f32>(points[start..].as_flattened_mut());
        if let Err(e) = read {
            points.truncate(start);
            return Err(damaged(e));
        }
        let bad = points[start..].as_flattened().iter().position(|v| !v.is_finite());
        if let Some(k) = bad {
            let value = points[start..].as_flattened()[k];
            points.truncate(start);
            return Ok(Err(SampleProblem::NotFinite { point: k / 3, value }));
        }
        Ok(Ok(()))
    }
}

fn is_numeric(descriptor: &TypeDescriptor) -> bool {
    matches!(
        descriptor,
        TypeDescriptor::Float(_) | TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)
    )
}

fn starts_with_signature(path: &Path) -> bool {
    let mut head = [0u8; 8];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == SIGNATURE
}

/// How a written HDF5 file stores its clouds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// Plain contiguous float32: the fastest to read.
    #[default]
    Plain,
    /// Chunked float32 with the shuffle and deflate filters at this level (1..=9): smaller.
    Deflate(u8),
}

/// Writes clouds as float32 `(n, 3)` datasets named by their IDs, atomically: the file appears
/// whole at `path` or not at all.
pub fn write_clouds<'a>(
    path: &Path,
    clouds: impl IntoIterator<Item = (u32, &'a [Point])>,
    storage: Storage,
) -> Result<(), DataError> {
    write_atomically(path, |tmp| {
        let fail =
            |e: hdf5::Error| DataError::Write { path: path.to_owned(), detail: e.to_string() };
        let file = hdf5::File::create(tmp).map_err(fail)?;
        for (id, cloud) in clouds {
            let builder = file.new_dataset::<f32>().shape([cloud.len(), 3]);
            let dataset = match storage {
                Storage::Plain => builder.create(id.to_string().as_str()),
                Storage::Deflate(level) => builder
                    .chunk([cloud.len().max(1), 3])
                    .shuffle()
                    .deflate(level)
                    .create(id.to_string().as_str()),
            }
            .map_err(fail)?;
            dataset.write_raw(cloud.as_flattened()).map_err(fail)?;
        }
        file.close().map_err(fail)
    })
}
