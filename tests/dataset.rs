//! Reading datasets: a round trip through real HDF5 files, and every kind of bad input.

use std::fs;
use std::path::{Path, PathBuf};

use digit3d::Point;
use digit3d::dataset::{
    CsvProblem, DataError, Dataset, LoadOptions, Role, SampleProblem, Storage, write_clouds,
    write_labels,
};

const LENIENT: LoadOptions = LoadOptions { strict: false };
const STRICT: LoadOptions = LoadOptions { strict: true };

/// A small cloud that differs per ID.
fn cloud(id: u32, n: usize) -> Vec<Point> {
    (0..n).map(|k| [id as f32 * 0.01, k as f32 * 0.001 - 0.2, -(k as f32) * 0.002]).collect()
}

/// A folder with train.h5 (IDs 0..4, labels id % 10) and train.csv.
fn train_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let clouds: Vec<(u32, Vec<Point>)> =
        (0..4).map(|id| (id, cloud(id, 5 + id as usize))).collect();
    write_clouds(
        &dir.path().join("train.h5"),
        clouds.iter().map(|(id, c)| (*id, c.as_slice())),
        Storage::Plain,
    )
    .unwrap();
    write_labels(&dir.path().join("train.csv"), (0..4).map(|id| (id, (id % 10) as u8))).unwrap();
    dir
}

/// Adds raw datasets to an HDF5 file with the hdf5 crate directly.
fn with_file(path: &Path, edit: impl FnOnce(&hdf5::File)) {
    let file =
        if path.exists() { hdf5::File::append(path) } else { hdf5::File::create(path) }.unwrap();
    edit(&file);
    file.close().unwrap();
}

fn expect_skip(dir: &Path, want_id: &str, want: impl Fn(&SampleProblem) -> bool) {
    let (dataset, report) = Dataset::open(dir, LENIENT).unwrap();
    let skipped: Vec<_> = report.skipped.iter().filter(|s| s.id == want_id).collect();
    assert_eq!(skipped.len(), 1, "{:?}", report.skipped);
    assert!(want(&skipped[0].problem), "{:?}", skipped[0].problem);
    assert!(
        dataset.train.as_ref().unwrap().position(want_id.parse().unwrap_or(u32::MAX)).is_none()
    );

    // In strict mode the same sample stops loading, with a message naming file and sample.
    let err = Dataset::open(dir, STRICT).unwrap_err();
    assert!(matches!(err, DataError::Sample(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&format!("sample {want_id}")), "{message}");
    assert!(message.contains(".h5"), "{message}");
}

#[test]
fn round_trip_gives_back_the_same_clouds_and_labels() {
    let dir = train_folder();
    let (dataset, report) = Dataset::open(dir.path(), STRICT).unwrap();
    assert!(report.skipped.is_empty());
    assert!(dataset.test.is_none());
    let train = dataset.train.unwrap();
    assert_eq!(train.role(), Role::Train);
    assert_eq!(train.ids(), [0, 1, 2, 3]);
    assert_eq!(train.labels(), Some(&[0u8, 1, 2, 3][..]));
    for (i, sample) in train.iter().enumerate() {
        assert_eq!(sample.cloud, cloud(i as u32, 5 + i).as_slice());
    }
    assert_eq!(train.points().len(), 5 + 6 + 7 + 8);
}

#[test]
fn compressed_and_float64_clouds_read_as_float32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.h5");
    write_clouds(&path, [(0, cloud(0, 4).as_slice())], Storage::Deflate(4)).unwrap();
    let wide: Vec<f64> = cloud(1, 3).as_flattened().iter().map(|&v| f64::from(v)).collect();
    with_file(&path, |f| {
        f.new_dataset::<f64>().shape([3, 3]).create("1").unwrap().write_raw(&wide).unwrap();
    });
    let (dataset, _) = Dataset::open(&path, STRICT).unwrap();
    let train = dataset.train.unwrap();
    assert_eq!(train.labels(), None);
    assert_eq!(train.get(0).cloud, cloud(0, 4).as_slice());
    assert_eq!(train.get(1).cloud, cloud(1, 3).as_slice());
}

#[test]
fn the_csv_gives_the_order_and_test_ids_follow_the_submission_template() {
    let dir = train_folder();
    write_labels(&dir.path().join("train.csv"), [(3, 7), (1, 2), (0, 0), (2, 9)]).unwrap();
    let test: Vec<(u32, Vec<Point>)> = (10..13).map(|id| (id, cloud(id, 2))).collect();
    write_clouds(
        &dir.path().join("test.h5"),
        test.iter().map(|(id, c)| (*id, c.as_slice())),
        Storage::Plain,
    )
    .unwrap();
    write_labels(&dir.path().join("sample_submission.csv"), [(12, 0), (10, 0), (11, 0)]).unwrap();

    let (dataset, _) = Dataset::open(dir.path(), STRICT).unwrap();
    let train = dataset.train.as_ref().unwrap();
    assert_eq!(train.ids(), [3, 1, 0, 2]);
    assert_eq!(train.labels(), Some(&[7u8, 2, 0, 9][..]));
    assert_eq!(train.get(0).cloud, cloud(3, 8).as_slice());
    let test = dataset.test.as_ref().unwrap();
    assert_eq!(test.ids(), [12, 10, 11]);
    assert_eq!(test.labels(), None);
    assert_eq!(dataset.find(11).map(|(set, i)| (set.role(), i)), Some((Role::Test, 2)));
}

#[test]
fn one_sample_reads_without_the_rest() {
    let dir = train_folder();
    let sample = Dataset::read_sample(dir.path(), 2).unwrap();
    assert_eq!((sample.id, sample.label, sample.role), (2, Some(2), Role::Train));
    assert_eq!(sample.cloud, cloud(2, 7));
    let err = Dataset::read_sample(dir.path(), 99).unwrap_err();
    assert!(matches!(err, DataError::UnknownId { id: 99, .. }), "{err:?}");
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere").join("train.h5");
    let err = Dataset::open(&path, LENIENT).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn a_folder_without_clouds_is_not_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let err = Dataset::open(dir.path(), LENIENT).unwrap_err();
    assert!(matches!(err, DataError::NotADataset { .. }), "{err:?}");
}

#[test]
fn a_file_that_is_not_hdf5_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.h5");
    fs::write(&path, "ID,label\n1,2\n").unwrap();
    let err = Dataset::open(&path, LENIENT).unwrap_err();
    assert!(matches!(err, DataError::NotHdf5 { .. }), "{err:?}");
    assert!(err.to_string().contains("train.h5: not an HDF5 file"), "{err}");
}

#[test]
fn a_truncated_hdf5_file_is_reported_damaged() {
    let dir = train_folder();
    let path = dir.path().join("train.h5");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Dataset::open(dir.path(), LENIENT).unwrap_err();
    assert!(matches!(err, DataError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated or damaged"), "{err}");
}

#[test]
fn a_cloud_that_is_not_n_by_3_is_skipped() {
    let dir = train_folder();
    with_file(&dir.path().join("train.h5"), |f| {
        f.unlink("2").unwrap();
        f.new_dataset::<f32>().shape([4, 2]).create("2").unwrap().write_raw(&[0.0f32; 8]).unwrap();
    });
    expect_skip(dir.path(), "2", |p| *p == SampleProblem::Shape(vec![4, 2]));
}

#[test]
fn a_non_numeric_cloud_is_skipped() {
    let dir = train_folder();
    with_file(&dir.path().join("train.h5"), |f| {
        f.unlink("1").unwrap();
        f.new_dataset::<hdf5::types::VarLenUnicode>().shape([2, 3]).create("1").unwrap();
    });
    expect_skip(dir.path(), "1", |p| matches!(p, SampleProblem::DataType(_)));
}

#[test]
fn an_empty_cloud_is_skipped() {
    let dir = train_folder();
    with_file(&dir.path().join("train.h5"), |f| {
        f.unlink("0").unwrap();
        f.new_dataset::<f32>().shape([0, 3]).create("0").unwrap();
    });
    expect_skip(dir.path(), "0", |p| *p == SampleProblem::Empty);
}

#[test]
fn nan_and_infinite_coordinates_are_skipped() {
    for (bad, id) in [(f64::NAN, "3"), (f64::INFINITY, "1"), (1e300, "2")] {
        let dir = train_folder();
        let mut values = vec![0.1f64; 12];
        values[7] = bad;
        with_file(&dir.path().join("train.h5"), |f| {
            f.unlink(id).unwrap();
            f.new_dataset::<f64>().shape([4, 3]).create(id).unwrap().write_raw(&values).unwrap();
        });
        expect_skip(dir.path(), id, |p| matches!(p, SampleProblem::NotFinite { point: 2, .. }));
    }
}

#[test]
fn members_that_are_not_samples_are_skipped() {
    let dir = train_folder();
    with_file(&dir.path().join("train.h5"), |f| {
        f.new_dataset::<f32>().shape([1, 3]).create("extra").unwrap();
    });
    let (_, report) = Dataset::open(dir.path(), LENIENT).unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert!(matches!(report.skipped[0].problem, SampleProblem::NotASample(_)));
}

#[test]
fn ids_the_csv_lists_but_the_file_lacks_are_skipped() {
    let dir = train_folder();
    write_labels(&dir.path().join("train.csv"), [(0, 0), (1, 1), (2, 2), (3, 3), (42, 5)]).unwrap();
    expect_skip(
        dir.path(),
        "42",
        |p| matches!(p, SampleProblem::NoCloud { csv } if csv == "train.csv"),
    );
}

#[test]
fn clouds_the_csv_lacks_are_skipped() {
    let dir = train_folder();
    write_labels(&dir.path().join("train.csv"), [(0, 0), (1, 1), (3, 3)]).unwrap();
    expect_skip(dir.path(), "2", |p| matches!(p, SampleProblem::NotListed { .. }));
}

#[test]
fn a_file_with_no_usable_cloud_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.h5");
    with_file(&path, |f| {
        f.new_dataset::<f32>().shape([0, 3]).create("0").unwrap();
    });
    let err = Dataset::open(&path, LENIENT).unwrap_err();
    assert!(matches!(err, DataError::NoSamples { skipped: 1, .. }), "{err:?}");
}

fn csv_error(text: &str) -> (PathBuf, u64, CsvProblem) {
    let dir = train_folder();
    fs::write(dir.path().join("train.csv"), text).unwrap();
    match Dataset::open(dir.path(), LENIENT).unwrap_err() {
        DataError::Csv { path, line, problem } => {
            assert!(path.ends_with("train.csv"));
            (path, line, problem)
        }
        other => panic!("expected a CSV error, got {other:?}"),
    }
}

#[test]
fn bad_csv_files_stop_loading_with_the_line() {
    let (_, line, problem) = csv_error("Id,Label\n0,0\n");
    assert_eq!((line, problem), (1, CsvProblem::Header { found: "Id,Label".into() }));
    let (_, line, problem) = csv_error("ID,label\n0,0\nx1,1\n");
    assert_eq!((line, problem), (3, CsvProblem::BadId("x1".into())));
    let (_, line, problem) = csv_error("ID,label\n0,0\n1,1\n0,4\n");
    assert_eq!((line, problem), (4, CsvProblem::DuplicateId { id: 0, first_line: 2 }));
    let (_, line, problem) = csv_error("ID,label\n0,0\n1,-1\n");
    assert_eq!((line, problem), (3, CsvProblem::BadLabel { id: 1, label: "-1".into() }));
}

#[test]
fn messages_name_the_file_the_sample_and_the_problem() {
    let dir = train_folder();
    fs::write(dir.path().join("train.csv"), "ID,label\n0,0\n1,12\n").unwrap();
    let message = Dataset::open(dir.path(), LENIENT).unwrap_err().to_string();
    assert!(
        message.contains("train.csv: line 3: sample 1: label \"12\" is not a digit 0..9"),
        "{message}"
    );
}
