//! The 3D view: the cloud as small solid points coloured by depth, the box the views are taken
//! in, and the axes they project along. Dragging turns the cloud itself, so its views follow.
//!
//! Screen and cloud axes are matched so that the view straight on looks like the first of the 24
//! views, the (x, y) projection: x runs down the screen, y to the right and z towards the viewer.

use bevy::asset::RenderAssetUsages;
use bevy::camera::visibility::RenderLayers;
use bevy::camera::{CameraOutputMode, Viewport};
use bevy::input::mouse::{AccumulatedMouseMotion, AccumulatedMouseScroll, MouseScrollUnit};
use bevy::mesh::{Indices, PrimitiveTopology};
use bevy::prelude::*;
use bevy::render::render_resource::BlendState;
use bevy::window::PrimaryWindow;
use bevy_egui::input::EguiWantsInput;
use bevy_egui::{EguiGlobalSettings, PrimaryEguiContext, egui};
use digit3d::Point;
use digit3d::rotation::Rotation;
use digit3d::views::EXTENT;

use super::session::Session;

pub const BACKGROUND: Color = Color::srgb(0.075, 0.08, 0.095);

/// Half the width of the solid drawn for each point, in cloud units (the box is 1.5 wide).
const POINT_RADIUS: f32 = 0.009;
/// Radians turned per pixel dragged.
const DRAG_SPEED: f64 = 0.008;
/// The camera's distance from the centre at launch, and how far zoom may take it.
const DISTANCE: f32 = 3.4;
const DISTANCE_RANGE: (f32, f32) = (1.2, 12.0);

/// Rows of the map from cloud axes to screen axes (x down, y right, z out of the screen), in
/// bevy's world where y is up and the camera looks down -z.
const TO_WORLD: [[f64; 3]; 3] = [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];

/// The scene's handles and where the egui panels left room for it.
#[derive(Resource)]
pub struct Scene {
    mesh: Handle<Mesh>,
    /// The generation of the session shown, and the sample whose points the mesh holds.
    shown: u64,
    points_of: u64,
    distance: f32,
    dragging: bool,
    /// The part of the window left for the 3D view, in logical pixels.
    pub viewport: Option<egui::Rect>,
    /// Where the grid image was drawn, in logical pixels.
    pub grid_rect: Option<egui::Rect>,
    /// Whether the default view should be restored.
    pub reset: bool,
}

#[derive(Component)]
pub struct Cloud;

#[derive(Component)]
pub struct MainCamera;

pub fn setup(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    mut egui_settings: ResMut<EguiGlobalSettings>,
) {
    // The 3D camera draws into the free part of the window; egui gets a camera of its own that
    // covers the whole window, drawn on top.
    egui_settings.auto_create_primary_context = false;
    let mesh = meshes.add(Mesh::new(PrimitiveTopology::TriangleList, RenderAssetUsages::default()));
    let material =
        materials.add(StandardMaterial { base_color: Color::WHITE, unlit: true, ..default() });
    commands.spawn((Mesh3d(mesh.clone()), MeshMaterial3d(material), Transform::default(), Cloud));
    commands.spawn((
        Camera3d::default(),
        Msaa::Off,
        Transform::from_xyz(0.0, 0.0, DISTANCE).looking_at(Vec3::ZERO, Vec3::Y),
        MainCamera,
    ));
    commands.spawn((
        PrimaryEguiContext,
        Camera2d,
        Msaa::Off,
        RenderLayers::none(),
        Camera {
            order: 1,
            output_mode: CameraOutputMode::Write {
                blend_state: Some(BlendState::ALPHA_BLENDING),
                clear_color: ClearColorConfig::None,
            },
            clear_color: ClearColorConfig::Custom(Color::NONE),
            ..default()
        },
    ));
    commands.insert_resource(Scene {
        mesh,
        shown: 0,
        points_of: 0,
        distance: DISTANCE,
        dragging: false,
        viewport: None,
        grid_rect: None,
        reset: false,
    });
}

/// Left-drag in the 3D view turns the cloud; the wheel zooms.
pub fn drag_and_zoom(
    buttons: Res<ButtonInput<MouseButton>>,
    motion: Res<AccumulatedMouseMotion>,
    scroll: Res<AccumulatedMouseScroll>,
    wants: Res<EguiWantsInput>,
    mut scene: ResMut<Scene>,
    mut session: NonSendMut<Session>,
) {
    if buttons.just_pressed(MouseButton::Left) {
        scene.dragging = !wants.is_pointer_over_area();
    }
    if !buttons.pressed(MouseButton::Left) {
        scene.dragging = false;
    }
    if scene.dragging && motion.delta != Vec2::ZERO {
        // Right turns about the screen's up axis, down about its right axis; both written in
        // the cloud's axes (the columns of TO_WORLD's transpose).
        let [dx, dy] = [f64::from(motion.delta.x), f64::from(motion.delta.y)];
        session.turn(&screen_turn(dx * DRAG_SPEED, dy * DRAG_SPEED));
    }
    if scroll.delta.y != 0.0 && !wants.is_pointer_over_area() {
        let lines = match scroll.unit {
            MouseScrollUnit::Line => scroll.delta.y,
            MouseScrollUnit::Pixel => scroll.delta.y / 40.0,
        };
        scene.distance =
            (scene.distance * (-0.12 * lines).exp()).clamp(DISTANCE_RANGE.0, DISTANCE_RANGE.1);
    }
}

/// The turn of a drag: `right` radians about the screen's up axis (positive turns the front to
/// the right), then `down` radians about its right axis; written in the cloud's axes.
pub fn screen_turn(right: f64, down: f64) -> Rotation {
    let up_axis = Rotation::about(world_to_cloud([0.0, 1.0, 0.0]), right);
    let right_axis = Rotation::about(world_to_cloud([1.0, 0.0, 0.0]), down);
    right_axis.then_apply(&up_axis)
}

/// A vector given in screen (world) axes, written in the cloud's axes.
fn world_to_cloud(v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|j| (0..3).map(|i| TO_WORLD[i][j] * v[i]).sum())
}

/// Brings the mesh, its rotation and colours, and the camera up to date with the session.
pub fn show_cloud(
    mut session: NonSendMut<Session>,
    mut scene: ResMut<Scene>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut cloud: Single<&mut Transform, (With<Cloud>, Without<MainCamera>)>,
    camera: Single<(&mut Camera, &mut Transform), With<MainCamera>>,
    window: Single<&Window, With<PrimaryWindow>>,
) {
    let (mut camera, mut camera_transform) = camera.into_inner();
    if std::mem::take(&mut scene.reset) {
        scene.distance = DISTANCE;
    }
    *camera_transform =
        Transform::from_xyz(0.0, 0.0, scene.distance).looking_at(Vec3::ZERO, Vec3::Y);
    camera.viewport = scene.viewport.and_then(|rect| physical_viewport(rect, &window));

    session.refresh_views();
    if scene.shown == session.generation {
        return;
    }
    scene.shown = session.generation;
    let raw = session.cloud();
    let Some(mut mesh) = meshes.get_mut(&scene.mesh) else { return };
    if scene.points_of != session.sample_key {
        scene.points_of = session.sample_key;
        *mesh = point_solids(raw);
    }
    mesh.insert_attribute(Mesh::ATTRIBUTE_COLOR, depth_colours(raw, &session.rotation));
    cloud.rotation = world_rotation(&session.rotation);
}

/// The box the views are taken in (points outside it land on its border) and the axes they
/// project along, both fixed on screen while the cloud turns inside them.
pub fn draw_frame(mut gizmos: Gizmos) {
    let frame = Transform::from_rotation(world_rotation(&Rotation::IDENTITY));
    gizmos.cube(frame.with_scale(Vec3::splat(2.0 * EXTENT)), Color::srgba(0.6, 0.65, 0.75, 0.35));
    gizmos.axes(frame, 0.35);
}

/// The rotation that takes cloud points, turned by `rotation`, to the screen.
fn world_rotation(rotation: &Rotation) -> Quat {
    let m = rotation.matrix();
    let rows: [[f64; 3]; 3] =
        TO_WORLD.map(|w| [0, 1, 2].map(|j| (0..3).map(|k| w[k] * m[k][j]).sum()));
    let column = |j: usize| Vec3::new(rows[0][j] as f32, rows[1][j] as f32, rows[2][j] as f32);
    Quat::from_mat3(&Mat3::from_cols(column(0), column(1), column(2)))
}

/// `rect` (logical pixels) as a viewport in the window's physical pixels, when it has an area.
fn physical_viewport(rect: egui::Rect, window: &Window) -> Option<Viewport> {
    let scale = window.scale_factor();
    let size = UVec2::new(window.physical_width(), window.physical_height());
    let min = (Vec2::new(rect.min.x, rect.min.y) * scale).round().as_uvec2().min(size);
    let max = (Vec2::new(rect.max.x, rect.max.y) * scale).round().as_uvec2().min(size);
    let extent = max.saturating_sub(min);
    (extent.x > 0 && extent.y > 0).then(|| Viewport {
        physical_position: min,
        physical_size: extent,
        ..default()
    })
}

/// The corners of the solid drawn for a point, about the point in units of [`POINT_RADIUS`]: a
/// regular tetrahedron.
const CORNERS: [[f32; 3]; 4] =
    [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]];

/// One small tetrahedron per point, all in one mesh: a solid that reads as a dot from every
/// side at a few pixels across, for four triangles. Under software rendering, point primitives
/// cost far more, and an octahedron twice as many triangles.
fn point_solids(cloud: &[Point]) -> Mesh {
    // Wound counter-clockwise seen from outside, so that back faces are culled.
    const FACES: [[u32; 3]; 4] = [[1, 3, 2], [0, 2, 3], [0, 3, 1], [0, 1, 2]];
    let mut positions = Vec::with_capacity(cloud.len() * CORNERS.len());
    let mut indices = Vec::with_capacity(cloud.len() * FACES.len() * 3);
    for (i, p) in cloud.iter().enumerate() {
        let base = (i * CORNERS.len()) as u32;
        positions.extend(CORNERS.map(|c| [0, 1, 2].map(|k| p[k] + POINT_RADIUS * c[k])));
        indices.extend(FACES.iter().flatten().map(|&v| base + v));
    }
    Mesh::new(PrimitiveTopology::TriangleList, RenderAssetUsages::default())
        .with_inserted_attribute(Mesh::ATTRIBUTE_POSITION, positions)
        .with_inserted_indices(Indices::U32(indices))
}

/// A colour per mesh vertex from each point's depth once turned, from the farthest point (cool
/// and dim) to the nearest (warm and bright).
fn depth_colours(cloud: &[Point], rotation: &Rotation) -> Vec<[f32; 4]> {
    let row = rotation.matrix()[2].map(|v| v as f32);
    let depths: Vec<f32> =
        cloud.iter().map(|p| row[0] * p[0] + row[1] * p[1] + row[2] * p[2]).collect();
    let (near, far) =
        depths.iter().fold((f32::MIN, f32::MAX), |(hi, lo), &d| (hi.max(d), lo.min(d)));
    let span = (near - far).max(1e-6);
    depths.iter().flat_map(|d| [ramp((d - far) / span); CORNERS.len()]).collect()
}

/// A perceptually even ramp from deep blue (0) through teal and green to yellow (1), in linear
/// RGB with full opacity.
fn ramp(t: f32) -> [f32; 4] {
    const STOPS: [[f32; 3]; 5] = [
        [0.267, 0.005, 0.329],
        [0.230, 0.322, 0.546],
        [0.128, 0.567, 0.551],
        [0.369, 0.789, 0.383],
        [0.993, 0.906, 0.144],
    ];
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let srgb = [0, 1, 2].map(|k| STOPS[i][k] + f * (STOPS[i + 1][k] - STOPS[i][k]));
    let linear = Color::srgb(srgb[0], srgb[1], srgb[2]).to_linear();
    [linear.red, linear.green, linear.blue, 1.0]
}
