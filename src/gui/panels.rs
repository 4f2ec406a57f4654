//! The egui panels: files and messages on top, the sample and its rotation on the left, the
//! views, training and mistakes on the right; what is left in the middle is the 3D view.

use std::f64::consts::{FRAC_PI_2, PI};

use bevy::prelude::*;
use bevy_egui::{EguiContexts, egui};
use clap::ValueEnum;
use digit3d::align::Alignment;
use digit3d::nn::head::CLASSES;
use digit3d::rotation::Angles;
use digit3d::train::eval::{TtaTurns, argmax};
use digit3d::views::{Boards, VIEW_COUNT, VIEW_SIZE, ViewKind, grid_side};
use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions, Vec2};
use egui_plot::{Bar, BarChart, Plot};

use super::jobs::Dialog;
use super::scene::Scene;
use super::session::{Part, Session};
use super::training::TrainingPanel;

/// How much larger than life the 24 views are drawn.
const VIEW_SCALE: f32 = 1.75;

/// The right panel's tabs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Resource)]
pub enum Tab {
    #[default]
    Views,
    Training,
    Mistakes,
}

/// The images of the views, refreshed when the session's views change.
pub struct Textures {
    generation: u64,
    canonical_version: u64,
    grid: TextureHandle,
    canonical: TextureHandle,
    views: Vec<TextureHandle>,
}

impl Textures {
    fn new(ctx: &egui::Context) -> Self {
        let side = grid_side(VIEW_SIZE);
        let blank = |name: &str, size: usize| {
            ctx.load_texture(
                name,
                ColorImage::filled([size; 2], Color32::BLACK),
                TextureOptions::NEAREST,
            )
        };
        Textures {
            generation: 0,
            canonical_version: 0,
            grid: blank("grid", side),
            canonical: blank("canonical grid", side),
            views: (0..VIEW_COUNT).map(|i| blank(&format!("view {i}"), VIEW_SIZE)).collect(),
        }
    }

    fn update(&mut self, session: &Session) {
        if session.show_canonical && self.canonical_version != session.canonical_version {
            self.canonical_version = session.canonical_version;
            self.canonical.set(grid_image(&session.canonical), TextureOptions::NEAREST);
        }
        if self.generation == session.views_generation {
            return;
        }
        self.generation = session.views_generation;
        self.grid.set(grid_image(&session.boards), TextureOptions::NEAREST);
        let views = session.boards.views();
        for (i, texture) in self.views.iter_mut().enumerate() {
            let image = ColorImage::from_gray(
                [VIEW_SIZE; 2],
                &views.view(i).iter().map(|&v| v * 255).collect::<Vec<u8>>(),
            );
            texture.set(image, TextureOptions::NEAREST);
        }
    }
}

/// The 256 x 256 grid of `boards`, white on black as the network sees it.
fn grid_image(boards: &Boards) -> ColorImage {
    let grid = boards.grid();
    let pixels: Vec<u8> = grid.as_slice().iter().map(|&v| v * 255).collect();
    ColorImage::from_gray([grid.side(); 2], &pixels)
}

/// Draws every panel, then recomputes the views if anything in them changed the view.
pub fn draw(
    mut contexts: EguiContexts,
    mut session: NonSendMut<Session>,
    mut training: NonSendMut<TrainingPanel>,
    mut scene: ResMut<Scene>,
    mut textures: Local<Option<Textures>>,
    mut tab: ResMut<Tab>,
) -> Result {
    let ctx = contexts.ctx_mut()?.clone();
    session.refresh_views();
    let textures = textures.get_or_insert_with(|| Textures::new(&ctx));
    textures.update(&session);

    let mut root = egui::Ui::new(
        ctx.clone(),
        "root".into(),
        egui::UiBuilder::new().layer_id(egui::LayerId::background()).max_rect(ctx.viewport_rect()),
    );
    egui::Panel::top("files").show(&mut root, |ui| top_bar(ui, &mut session));
    egui::Panel::left("sample").resizable(false).exact_size(300.0).show(&mut root, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            browser(ui, &mut session);
            ui.separator();
            rotation(ui, &mut session, &training, &mut scene);
            ui.separator();
            prediction(ui, &mut session);
        });
    });
    egui::Panel::right("work").resizable(false).exact_size(560.0).show(&mut root, |ui| {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut *tab, Tab::Views, "Views");
            ui.selectable_value(&mut *tab, Tab::Training, "Training");
            let mistakes = session.mistakes.as_ref().map_or(0, |m| m.list.len());
            ui.selectable_value(&mut *tab, Tab::Mistakes, format!("Mistakes ({mistakes})"));
        });
        ui.separator();
        match *tab {
            Tab::Views => views(ui, &mut session, textures, &mut scene),
            Tab::Training => training.ui(ui, &mut session),
            Tab::Mistakes => mistakes(ui, &mut session),
        }
    });
    // What the panels left is the 3D view's.
    let free = root.available_rect_before_wrap();
    scene.viewport = Some(free);
    overlay(&ctx, free, &session);

    session.refresh_views();
    textures.update(&session);
    Ok(())
}

fn top_bar(ui: &mut egui::Ui, session: &mut Session) {
    ui.horizontal(|ui| {
        let here = session.data.path.clone();
        if ui.button("Open dataset…").clicked() {
            session.jobs.dialog(Dialog::OpenData, &here);
        }
        if ui.button("Open checkpoint…").clicked() {
            session
                .jobs
                .dialog(Dialog::OpenCheckpoint, &std::env::current_dir().unwrap_or_default());
        }
        let has_model = session.model.is_some();
        if ui.add_enabled(has_model, egui::Button::new("Save model…")).clicked() {
            session
                .jobs
                .dialog(Dialog::SaveCheckpoint, &std::env::current_dir().unwrap_or_default());
        }
        if ui.add_enabled(has_model, egui::Button::new("Export predictions…")).clicked() {
            session.jobs.dialog(Dialog::ExportPredictions, &here);
        }
        ui.separator();
        ui.label(format!("{}", session.data.path.display()));
        if session.busy() {
            ui.spinner();
        }
    });
    // Notes fade after a few seconds; errors stay until dismissed.
    session.messages.retain(|m| m.error || m.at.elapsed().as_secs() < 8);
    let mut dismissed = None;
    for (i, message) in session.messages.iter().enumerate().rev().take(3) {
        ui.horizontal(|ui| {
            let colour =
                if message.error { Color32::from_rgb(255, 110, 100) } else { Color32::GRAY };
            if message.error && ui.small_button("✕").clicked() {
                dismissed = Some(i);
            }
            ui.label(RichText::new(&message.text).color(colour));
        });
    }
    if let Some(i) = dismissed {
        session.messages.remove(i);
    }
}

fn browser(ui: &mut egui::Ui, session: &mut Session) {
    ui.heading("Sample");
    ui.horizontal(|ui| {
        for (part, name) in [(Part::Train, "train"), (Part::Test, "test")] {
            let len = session.data.set(part).map_or(0, |s| s.len());
            let button = egui::Button::selectable(session.part == part, format!("{name} ({len})"));
            if ui.add_enabled(len > 0, button).clicked() && session.part != part {
                session.select(part, 0);
            }
        }
    });
    ui.horizontal(|ui| {
        if ui.button("◀").on_hover_text("previous").clicked() {
            session.step(-1);
        }
        if ui.button("▶").on_hover_text("next").clicked() {
            session.step(1);
        }
        let field = ui.add(
            egui::TextEdit::singleline(&mut session.jump_to).desired_width(70.0).hint_text("ID"),
        );
        let go = ui.button("Go").clicked();
        if go || (field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter))) {
            match session.jump_to.trim().parse::<u32>() {
                Ok(id) if session.select_id(id) => {}
                Ok(id) => session.say(true, format!("no sample with ID {id}")),
                Err(_) => session.say(true, format!("{:?} is not an ID", session.jump_to)),
            }
        }
    });
    ui.horizontal(|ui| {
        ui.label("label");
        let filter = &mut session.filter;
        egui::ComboBox::from_id_salt("label filter")
            .width(50.0)
            .selected_text(filter.label.map_or("any".into(), |l| l.to_string()))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut filter.label, None, "any");
                for digit in 0..CLASSES as u8 {
                    ui.selectable_value(&mut filter.label, Some(digit), digit.to_string());
                }
            });
        ui.checkbox(&mut filter.mistakes_only, "mistakes only");
    });
    let points = session.cloud().len();
    let id = session.id().map_or("-".into(), |id| id.to_string());
    let label = session.label().map_or("unlabelled".into(), |l| format!("label {l}"));
    ui.label(RichText::new(format!("ID {id}, {label}, {points} points")).strong());
}

fn rotation(ui: &mut egui::Ui, session: &mut Session, training: &TrainingPanel, scene: &mut Scene) {
    ui.heading("Rotation");
    let mut angles = session.angles;
    let mut moved = false;
    for (value, name, limit) in [
        (&mut angles.a, "a (x)", PI),
        (&mut angles.b, "b (y)", FRAC_PI_2),
        (&mut angles.c, "c (z)", PI),
    ] {
        moved |=
            ui.add(egui::Slider::new(value, -limit..=limit).text(name).fixed_decimals(3)).changed();
    }
    if moved {
        session.set_angles(angles);
    }
    ui.horizontal(|ui| {
        if ui.button("Reset").on_hover_text("no rotation, default zoom").clicked() {
            session.set_angles(Angles::ZERO);
            scene.reset = true;
        }
        let random = ui.button("Random").on_hover_text(format!(
            "draw a rotation as training does ({})",
            training.config.augment
        ));
        if random.clicked() {
            session.set_angles(training.config.augment.sample(&mut rand::rng()));
        }
    });
    ui.label(format!("views recomputed in {:.2} ms", session.views_seconds * 1e3));
}

fn prediction(ui: &mut egui::Ui, session: &mut Session) {
    ui.heading("Model");
    let Some(model) = &session.model else {
        ui.label("No model loaded: open a checkpoint or train one.");
        return;
    };
    ui.label(model.path.display().to_string());
    ui.label(RichText::new(&model.describe).small());
    let mut tta = session.tta;
    ui.add(egui::Slider::new(&mut tta.rotations, 1..=16).text("test-time rotations"));
    egui::ComboBox::from_label("turned copies").selected_text(tta.turns.name()).show_ui(ui, |ui| {
        for &turns in TtaTurns::value_variants() {
            ui.selectable_value(&mut tta.turns, turns, turns.name());
        }
    });
    if tta != session.tta {
        session.tta = tta;
        session.views_generation = 0;
    }
    let evaluate = ui
        .add_enabled(session.data.train.is_some(), egui::Button::new("Score the validation split"));
    if evaluate.clicked()
        && let (Some(model), Some(set)) = (&session.model, session.data.train.clone())
    {
        let path = model.path.clone();
        session.jobs.score(path, set);
    }

    let Some((generation, cosines)) = session.prediction else {
        ui.label("predicting…");
        return;
    };
    let predicted = argmax(&cosines);
    let stale = if generation == session.generation { "" } else { " (updating)" };
    let verdict = match session.label() {
        Some(label) if label == predicted => format!("predicted {predicted}: right{stale}"),
        Some(label) => format!("predicted {predicted}, label {label}: wrong{stale}"),
        None => format!("predicted {predicted}{stale}"),
    };
    ui.label(RichText::new(verdict).strong());
    let bars: Vec<Bar> = cosines
        .iter()
        .enumerate()
        .map(|(digit, &c)| {
            let colour = if digit == usize::from(predicted) {
                Color32::from_rgb(250, 200, 60)
            } else {
                Color32::from_rgb(90, 140, 200)
            };
            Bar::new(digit as f64, f64::from(c)).width(0.7).fill(colour).name(digit.to_string())
        })
        .collect();
    Plot::new("cosines")
        .height(150.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .include_y(-0.2)
        .include_y(1.0)
        .x_axis_label("digit")
        .y_axis_label("cosine")
        .show(ui, |plot| plot.bar_chart(BarChart::new("cosine", bars)));
}

fn views(ui: &mut egui::Ui, session: &mut Session, textures: &Textures, scene: &mut Scene) {
    let side = grid_side(VIEW_SIZE) as f32;
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.label("grid: the network's input");
                let grid = ui.add(egui::Image::new((textures.grid.id(), Vec2::splat(side))));
                scene.grid_rect = Some(grid.rect);
            });
            if session.show_canonical {
                ui.vertical(|ui| {
                    ui.label(format!("{} pose", session.pose.name()));
                    ui.add(egui::Image::new((textures.canonical.id(), Vec2::splat(side))));
                });
            }
        });
        ui.horizontal(|ui| {
            let mut changed =
                ui.checkbox(&mut session.show_canonical, "show the canonical pose").changed();
            egui::ComboBox::from_id_salt("pose").selected_text(session.pose.name()).show_ui(
                ui,
                |ui| {
                    for &pose in Alignment::value_variants().iter().skip(1) {
                        changed |=
                            ui.selectable_value(&mut session.pose, pose, pose.name()).changed();
                    }
                },
            );
            if changed {
                session.changed();
            }
        });
        ui.label("the 24 views: projection, mirrored or not, quarter turns");
        egui::Grid::new("views").spacing([6.0, 4.0]).show(ui, |ui| {
            for (i, texture) in textures.views.iter().enumerate() {
                ui.vertical(|ui| {
                    ui.add(egui::Image::new((
                        texture.id(),
                        Vec2::splat(VIEW_SCALE * VIEW_SIZE as f32),
                    )));
                    ui.label(RichText::new(ViewKind::of(i).label()).small());
                });
                if i % 6 == 5 {
                    ui.end_row();
                }
            }
        });
    });
}

fn mistakes(ui: &mut egui::Ui, session: &mut Session) {
    let Some(found) = &session.mistakes else {
        ui.label("No validation results yet: train, or load a checkpoint and score it.");
        return;
    };
    ui.label(format!(
        "{}: accuracy {:.4} over {} samples",
        found.source,
        found.confusion.accuracy(),
        found.confusion.total()
    ));
    let mut clicked_cell = None;
    confusion_matrix(ui, &found.confusion.counts, found.cell, &mut clicked_cell);
    let cell = found.cell;
    let shown: Vec<_> = found
        .list
        .iter()
        .filter(|m| cell.is_none_or(|(t, p)| m.label == t && m.predicted == p))
        .copied()
        .collect();
    ui.label(match cell {
        Some((t, p)) => {
            format!("{} samples of {t} taken for {p} (click the cell again for all)", shown.len())
        }
        None => format!("{} mistakes (click a cell to narrow)", shown.len()),
    });
    let mut picked = None;
    egui::ScrollArea::vertical().id_salt("mistake list").show(ui, |ui| {
        let ids = session.data.train.as_ref().map(|s| s.ids().to_vec()).unwrap_or_default();
        for m in &shown {
            let id = ids.get(m.index).map_or("?".into(), |id| id.to_string());
            let current = session.part == Part::Train && session.index == m.index;
            let text = format!("ID {id}: label {}, predicted {}", m.label, m.predicted);
            if ui.selectable_label(current, text).clicked() {
                picked = Some(m.index);
            }
        }
    });
    if let Some(cell) = clicked_cell
        && let Some(found) = &mut session.mistakes
    {
        found.cell = if found.cell == Some(cell) { None } else { Some(cell) };
    }
    if let Some(index) = picked {
        session.select(Part::Train, index);
    }
}

/// A heat map of the matrix (rows: true digit, columns: prediction); off-diagonal cells are
/// clickable.
fn confusion_matrix(
    ui: &mut egui::Ui,
    counts: &[[u64; CLASSES]; CLASSES],
    selected: Option<(u8, u8)>,
    clicked: &mut Option<(u8, u8)>,
) {
    const CELL: f32 = 34.0;
    let largest_error = (0..CLASSES)
        .flat_map(|t| (0..CLASSES).filter(move |&p| p != t).map(move |p| (t, p)))
        .map(|(t, p)| counts[t][p])
        .max()
        .unwrap_or(0)
        .max(1);
    egui::Grid::new("confusion").spacing([2.0, 2.0]).show(ui, |ui| {
        ui.label(RichText::new("true \\ predicted").small());
        for p in 0..CLASSES {
            ui.label(p.to_string());
        }
        ui.end_row();
        for (t, row) in counts.iter().enumerate() {
            ui.label(t.to_string());
            for (p, &n) in row.iter().enumerate() {
                let (rect, response) =
                    ui.allocate_exact_size(Vec2::splat(CELL), egui::Sense::click());
                let fill = if t == p {
                    Color32::from_rgb(40, 90, 60)
                } else {
                    let heat = (n as f32 / largest_error as f32).sqrt();
                    Color32::from_rgb((40.0 + 200.0 * heat) as u8, 40, (60.0 - 20.0 * heat) as u8)
                };
                ui.painter().rect_filled(rect, 2.0, fill);
                if selected == Some((t as u8, p as u8)) {
                    ui.painter().rect_stroke(
                        rect,
                        2.0,
                        (2.0, Color32::WHITE),
                        egui::StrokeKind::Inside,
                    );
                }
                ui.painter().text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    n.to_string(),
                    egui::FontId::proportional(12.0),
                    Color32::WHITE,
                );
                if t != p
                    && n > 0
                    && response.on_hover_text(format!("{n} of {t} taken for {p}")).clicked()
                {
                    *clicked = Some((t as u8, p as u8));
                }
            }
            ui.end_row();
        }
    });
}

/// The angles and a hint, written over the 3D view.
fn overlay(ctx: &egui::Context, free: egui::Rect, session: &Session) {
    let Angles { a, b, c } = session.angles;
    let text = format!("a {a:+.3}  b {b:+.3}  c {c:+.3}\ndrag to turn the cloud, wheel to zoom");
    let painter = ctx.layer_painter(egui::LayerId::new(egui::Order::Foreground, "overlay".into()));
    painter.text(
        free.left_top() + Vec2::new(10.0, 8.0),
        egui::Align2::LEFT_TOP,
        text,
        egui::FontId::monospace(13.0),
        Color32::from_gray(200),
    );
}
