//! The desktop program as the automated look sees it: a screenshot of the window under a virtual
//! X server with software Vulkan must show the cloud and the panels, with the grid image exactly
//! as `digit3d views` draws it for the same sample and angles.
//!
//! Needs `xvfb-run` and Mesa's Vulkan driver (scripts/install-deps installs both).
#![cfg(feature = "gui")]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};

use image::{GrayImage, RgbImage};

const ID: &str = "17";
const ANGLES: &str = "0.4,-0.3,1.2";

fn digit3d(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_digit3d"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DIGIT3D_LOG", "warn")
        .output()
        .expect("running digit3d")
}

/// Runs the window under a virtual X server of 1280 x 720 pixels.
fn in_virtual_display(args: &[&str]) -> Output {
    let output = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x720x24", env!("CARGO_BIN_EXE_digit3d")])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DIGIT3D_LOG", "warn")
        .output();
    output.expect("running xvfb-run (scripts/install-deps installs it)")
}

/// The (x, y, width, height) the window printed for the grid image.
fn grid_rect(stdout: &str) -> (u32, u32, u32, u32) {
    let line = stdout.lines().find(|l| l.starts_with("grid at ")).expect("a grid line");
    let numbers: Vec<u32> =
        line.split_whitespace().filter_map(|w| w.parse::<f64>().ok()).map(|v| v as u32).collect();
    let [x, y, w, h] = numbers[..] else { panic!("unexpected grid line {line:?}") };
    (x, y, w, h)
}

#[test]
fn the_screenshot_shows_the_cloud_the_panels_and_the_grid_the_network_sees() {
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("window.png");
    let expected = dir.path().join("grid.png");
    let output = in_virtual_display(&[
        "gui",
        "--data",
        "data",
        "--id",
        ID,
        "--rotate",
        ANGLES,
        "--screenshot",
        shot.to_str().unwrap(),
        "--after-frames",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "gui failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let window: RgbImage = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(window.dimensions(), (1280, 720));

    // Not blank, not one colour: text, plots and the cloud give many colours.
    let colours: HashSet<[u8; 3]> = window.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "only {} colours", colours.len());

    // The grid region matches `digit3d views` pixel for pixel.
    let views = digit3d(&[
        "views",
        "data",
        "--id",
        ID,
        "--rotate",
        ANGLES,
        "--out",
        expected.to_str().unwrap(),
    ]);
    assert!(views.status.success(), "{}", String::from_utf8_lossy(&views.stderr));
    let grid: GrayImage = image::open(&expected).unwrap().to_luma8();
    let (x, y, w, h) = grid_rect(&stdout);
    assert_eq!((w, h), grid.dimensions());
    let mut lit = 0;
    for (gx, gy, pixel) in grid.enumerate_pixels() {
        let shown = window.get_pixel(x + gx, y + gy).0;
        let on = pixel.0[0] == 255;
        lit += usize::from(on);
        let expected = if on { [255; 3] } else { [0; 3] };
        assert_eq!(shown, expected, "grid pixel ({gx}, {gy})");
    }
    assert!(lit > 100, "the grid has only {lit} lit pixels");

    // The 3D view, between the side panels, shows the cloud in depth colours, whose middle
    // is a blue-green found neither in the grey interface nor in the red, green and blue axes.
    let teal = (320..700)
        .flat_map(|px| (100..700).map(move |py| (px, py)))
        .filter(|&(px, py)| {
            let [r, g, b] = window.get_pixel(px, py).0.map(i32::from);
            g > 80 && b > 80 && r + 40 < g.min(b)
        })
        .count();
    assert!(teal > 100, "only {teal} blue-green pixels in the 3D view");
}

#[test]
fn a_bad_dataset_is_an_error_not_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let output = digit3d(&["gui", "--data", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing-here"), "{stderr}");
    assert!(!Path::new(&missing).exists());
}
