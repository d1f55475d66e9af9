//! Silhouettes and logo glyphs in unit coordinates (x right, y down, 0..1).

use std::f32::consts::{PI, TAU};

use super::attributes::{Category, Glyph};
use super::raster::{ellipse, rect, Contour};

/// Mask labels: which paint a pixel gets.
pub const BODY: u8 = 1;
pub const DARK_TRIM: u8 = 2;
pub const LOGO: u8 = 3;
pub const LIGHT_TRIM: u8 = 4;

/// One filled part of a silhouette.
#[derive(Debug)]
pub struct Part {
    pub contours: Vec<Contour>,
    pub label: u8,
}

fn part(label: u8, contours: Vec<Contour>) -> Part {
    Part { contours, label }
}

fn poly(points: &[[f32; 2]]) -> Contour {
    points.to_vec()
}

/// The parts of a silhouette, drawn in order (later parts paint over earlier ones).
#[rustfmt::skip]
pub fn silhouette(category: Category) -> Vec<Part> {
    match category {
        Category::TShirt => vec![part(
            BODY,
            vec![poly(&[
                [0.30, 0.15], [0.42, 0.12], [0.50, 0.17], [0.58, 0.12], [0.70, 0.15],
                [0.90, 0.30], [0.82, 0.42], [0.72, 0.36], [0.72, 0.90], [0.28, 0.90],
                [0.28, 0.36], [0.18, 0.42], [0.10, 0.30],
            ])],
        )],
        Category::Shirt => vec![
            part(
                BODY,
                vec![poly(&[
                    [0.32, 0.12], [0.44, 0.10], [0.50, 0.20], [0.56, 0.10], [0.68, 0.12],
                    [0.82, 0.20], [0.95, 0.85], [0.86, 0.87], [0.72, 0.40], [0.72, 0.92],
                    [0.28, 0.92], [0.28, 0.40], [0.14, 0.87], [0.05, 0.85], [0.18, 0.20],
                ])],
            ),
            part(
                DARK_TRIM,
                vec![poly(&[[0.43, 0.10], [0.50, 0.22], [0.39, 0.19]])],
            ),
            part(
                DARK_TRIM,
                vec![poly(&[[0.57, 0.10], [0.61, 0.19], [0.50, 0.22]])],
            ),
            part(DARK_TRIM, vec![rect(0.495, 0.22, 0.505, 0.92)]),
        ],
        Category::Hoodie => vec![
            part(BODY, vec![ellipse(0.50, 0.16, 0.15, 0.12, 0.0, TAU, 32)]),
            part(
                BODY,
                vec![poly(&[
                    [0.30, 0.18], [0.70, 0.18], [0.86, 0.26], [0.96, 0.86], [0.84, 0.88],
                    [0.74, 0.44], [0.74, 0.92], [0.26, 0.92], [0.26, 0.44], [0.16, 0.88],
                    [0.04, 0.86], [0.14, 0.26],
                ])],
            ),
            part(DARK_TRIM, vec![ellipse(0.50, 0.17, 0.08, 0.07, 0.0, TAU, 24)]),
            part(DARK_TRIM, vec![rect(0.36, 0.64, 0.64, 0.78)]),
        ],
        Category::Dress => vec![part(
            BODY,
            vec![poly(&[
                [0.37, 0.06], [0.42, 0.06], [0.45, 0.20], [0.55, 0.20], [0.58, 0.06],
                [0.63, 0.06], [0.65, 0.38], [0.60, 0.45], [0.86, 0.95], [0.14, 0.95],
                [0.40, 0.45], [0.35, 0.38],
            ])],
        )],
        Category::Skirt => vec![
            part(
                BODY,
                vec![poly(&[[0.32, 0.28], [0.68, 0.28], [0.90, 0.82], [0.10, 0.82]])],
            ),
            part(DARK_TRIM, vec![rect(0.31, 0.22, 0.69, 0.30)]),
        ],
        Category::Trousers => vec![
            part(
                BODY,
                vec![poly(&[
                    [0.30, 0.08], [0.70, 0.08], [0.75, 0.95], [0.56, 0.95], [0.50, 0.34],
                    [0.44, 0.95], [0.25, 0.95],
                ])],
            ),
            part(DARK_TRIM, vec![rect(0.30, 0.06, 0.70, 0.11)]),
        ],
        Category::Shorts => vec![
            part(
                BODY,
                vec![poly(&[
                    [0.24, 0.26], [0.76, 0.26], [0.84, 0.72], [0.56, 0.74], [0.50, 0.46],
                    [0.44, 0.74], [0.16, 0.72],
                ])],
            ),
            part(DARK_TRIM, vec![rect(0.24, 0.23, 0.76, 0.29)]),
        ],
        Category::Sneakers => vec![
            part(
                BODY,
                vec![poly(&[
                    [0.08, 0.56], [0.14, 0.42], [0.34, 0.40], [0.48, 0.28], [0.62, 0.28],
                    [0.67, 0.44], [0.90, 0.54], [0.93, 0.65], [0.08, 0.65],
                ])],
            ),
            part(LIGHT_TRIM, vec![rect(0.06, 0.64, 0.95, 0.72)]),
        ],
        Category::Handbag => vec![
            part(
                DARK_TRIM,
                vec![
                    ellipse(0.50, 0.42, 0.24, 0.24, PI, TAU, 32),
                    ellipse(0.50, 0.42, 0.18, 0.18, PI, TAU, 32),
                ],
            ),
            part(
                BODY,
                vec![poly(&[[0.20, 0.40], [0.80, 0.40], [0.88, 0.88], [0.12, 0.88]])],
            ),
        ],
        Category::Cap => vec![
            part(BODY, vec![ellipse(0.45, 0.58, 0.30, 0.30, PI, TAU, 32)]),
            part(
                DARK_TRIM,
                vec![poly(&[[0.40, 0.54], [0.90, 0.56], [0.95, 0.63], [0.40, 0.62]])],
            ),
        ],
    }
}

/// Where the logo sits on each silhouette: centre and radius in unit coordinates.
pub fn logo_anchor(category: Category) -> (f32, f32, f32) {
    match category {
        Category::TShirt => (0.60, 0.34, 0.08),
        Category::Shirt => (0.61, 0.34, 0.07),
        Category::Hoodie => (0.50, 0.42, 0.09),
        Category::Dress => (0.50, 0.32, 0.07),
        Category::Skirt => (0.50, 0.55, 0.09),
        Category::Trousers => (0.62, 0.22, 0.06),
        Category::Shorts => (0.64, 0.38, 0.07),
        Category::Sneakers => (0.42, 0.52, 0.07),
        Category::Handbag => (0.50, 0.64, 0.10),
        Category::Cap => (0.45, 0.44, 0.08),
    }
}

/// A glyph's outline, centred on (cx, cy) with radius r.
pub fn glyph(glyph: Glyph, cx: f32, cy: f32, r: f32) -> Vec<Vec<Contour>> {
    let at = |points: &[[f32; 2]]| -> Contour {
        points
            .iter()
            .map(|[x, y]| [cx + r * x, cy + r * y])
            .collect()
    };
    match glyph {
        Glyph::Disc => vec![vec![ellipse(cx, cy, r, r, 0.0, TAU, 32)]],
        Glyph::Triangle => vec![vec![at(&[[0.0, -1.0], [0.95, 0.8], [-0.95, 0.8]])]],
        Glyph::Cross => vec![
            vec![at(&[[-0.3, -1.0], [0.3, -1.0], [0.3, 1.0], [-0.3, 1.0]])],
            vec![at(&[[-1.0, -0.3], [1.0, -0.3], [1.0, 0.3], [-1.0, 0.3]])],
        ],
        Glyph::Star => {
            let points: Vec<[f32; 2]> = (0..10)
                .map(|i| {
                    let radius = if i % 2 == 0 { 1.0 } else { 0.42 };
                    let t = -PI / 2.0 + i as f32 * PI / 5.0;
                    [radius * t.cos(), radius * t.sin()]
                })
                .collect();
            vec![vec![at(&points)]]
        }
        Glyph::Diamond => vec![vec![at(&[
            [0.0, -1.0],
            [0.7, 0.0],
            [0.0, 1.0],
            [-0.7, 0.0],
        ])]],
        Glyph::Ring => vec![vec![
            ellipse(cx, cy, r, r, 0.0, TAU, 32),
            ellipse(cx, cy, r * 0.55, r * 0.55, 0.0, TAU, 32),
        ]],
        Glyph::Bars => vec![
            vec![at(&[[-0.9, -1.0], [-0.3, -1.0], [-0.3, 1.0], [-0.9, 1.0]])],
            vec![at(&[[0.3, -1.0], [0.9, -1.0], [0.9, 1.0], [0.3, 1.0]])],
        ],
        Glyph::Chevron => vec![vec![at(&[
            [-1.0, -0.7],
            [0.0, 0.2],
            [1.0, -0.7],
            [1.0, 0.0],
            [0.0, 0.9],
            [-1.0, 0.0],
        ])]],
    }
}
