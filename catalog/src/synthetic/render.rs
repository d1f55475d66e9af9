//! Drawing one product photo: background, silhouette, pattern, logo, lighting, noise.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::attributes::{Product, BRANDS, COLORS};
use super::raster::Mask;
use super::shapes::{self, DARK_TRIM, LIGHT_TRIM, LOGO};

/// The random placement and lighting of one photo, drawn from the item's RNG.
#[derive(Debug, Clone, Copy)]
struct Scene {
    /// Pixels per garment unit.
    scale: f32,
    cos: f32,
    sin: f32,
    center: [f32; 2],
    background: [f32; 3],
    gradient: f32,
    brightness: f32,
    light_dir: [f32; 2],
    light_strength: f32,
    noise: f32,
    pattern_period: f32,
    pattern_angle: f32,
}

impl Scene {
    fn draw(rng: &mut ChaCha8Rng, width: usize, height: usize) -> Self {
        let short = width.min(height) as f32;
        let angle: f32 = rng.random_range(-0.22..0.22);
        let grey: f32 = rng.random_range(188.0..236.0);
        let tint = [
            rng.random_range(-8.0..8.0),
            rng.random_range(-8.0..8.0),
            rng.random_range(-8.0..8.0),
        ];
        let light: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        Self {
            scale: short * rng.random_range(0.68..0.95),
            cos: angle.cos(),
            sin: angle.sin(),
            center: [
                width as f32 * (0.5 + rng.random_range(-0.08..0.08)),
                height as f32 * (0.5 + rng.random_range(-0.08..0.08)),
            ],
            background: [grey + tint[0], grey + tint[1], grey + tint[2]],
            gradient: rng.random_range(0.0..0.14),
            brightness: rng.random_range(0.85..1.1),
            light_dir: [light.cos(), light.sin()],
            light_strength: rng.random_range(0.1..0.3),
            noise: rng.random_range(3.0..10.0),
            pattern_period: rng.random_range(0.055..0.1),
            pattern_angle: rng.random_range(-0.4..0.4),
        }
    }

    fn to_pixel(self, [u, v]: [f32; 2]) -> [f32; 2] {
        let (du, dv) = (u - 0.5, v - 0.5);
        [
            self.center[0] + self.scale * (du * self.cos - dv * self.sin),
            self.center[1] + self.scale * (du * self.sin + dv * self.cos),
        ]
    }

    fn to_unit(self, x: f32, y: f32) -> [f32; 2] {
        let (dx, dy) = (
            (x - self.center[0]) / self.scale,
            (y - self.center[1]) / self.scale,
        );
        [
            0.5 + dx * self.cos + dy * self.sin,
            0.5 - dx * self.sin + dy * self.cos,
        ]
    }
}

fn luminance([r, g, b]: [u8; 3]) -> f32 {
    0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
}

/// Renders `product` as an RGB image of `width`×`height`, row-major.
pub fn render(product: &Product, rng: &mut ChaCha8Rng, width: usize, height: usize) -> Vec<u8> {
    let scene = Scene::draw(rng, width, height);
    let mut mask = Mask::new(width, height);
    let to_pixels = |contours: &[Vec<[f32; 2]>]| -> Vec<Vec<[f32; 2]>> {
        contours
            .iter()
            .map(|c| c.iter().map(|&p| scene.to_pixel(p)).collect())
            .collect()
    };
    for part in shapes::silhouette(product.category) {
        mask.fill(&to_pixels(&part.contours), part.label);
    }
    let (lx, ly, lr) = shapes::logo_anchor(product.category);
    for piece in shapes::glyph(BRANDS[product.brand].1, lx, ly, lr) {
        mask.fill(&to_pixels(&piece), LOGO);
    }

    let base = COLORS[product.color].1;
    let contrast: [f32; 3] = if luminance(base) > 140.0 {
        [40.0, 40.0, 48.0]
    } else {
        [236.0, 236.0, 230.0]
    };
    let base = base.map(f32::from);
    let (pc, ps) = (scene.pattern_angle.cos(), scene.pattern_angle.sin());
    let period = scene.pattern_period;
    let mut noise_state: u32 = rng.random::<u32>() | 1;
    let mut pixels = vec![0u8; width * height * 3];

    for y in 0..height {
        let row_shade = 1.0 - scene.gradient * y as f32 / height as f32;
        for x in 0..width {
            let label = mask.get(x, y);
            let mut rgb = if label == 0 {
                scene.background.map(|c| c * row_shade)
            } else {
                let [u, v] = scene.to_unit(x as f32 + 0.5, y as f32 + 0.5);
                let paint = match label {
                    LOGO => contrast,
                    LIGHT_TRIM => [232.0, 232.0, 226.0],
                    DARK_TRIM => base.map(|c| c * 0.7),
                    _ => pattern_paint(
                        product,
                        base,
                        contrast,
                        u * pc + v * ps,
                        v * pc - u * ps,
                        period,
                    ),
                };
                let light = scene.brightness
                    * (1.0
                        + scene.light_strength
                            * ((u - 0.5) * scene.light_dir[0] + (v - 0.5) * scene.light_dir[1])
                            * 2.0);
                let edge = if mask.is_edge(x, y) { 0.6 } else { 1.0 };
                paint.map(|c| c * light * edge)
            };
            for channel in &mut rgb {
                noise_state ^= noise_state << 13;
                noise_state ^= noise_state >> 17;
                noise_state ^= noise_state << 5;
                let n = (noise_state >> 24) as f32 / 255.0 - 0.5;
                *channel += n * 2.0 * scene.noise;
            }
            let offset = (y * width + x) * 3;
            for (out, value) in pixels[offset..offset + 3].iter_mut().zip(rgb) {
                *out = value.clamp(0.0, 255.0) as u8;
            }
        }
    }
    pixels
}

/// The body paint at garment coordinates (s, t), rotated into the pattern's frame.
fn pattern_paint(
    product: &Product,
    base: [f32; 3],
    contrast: [f32; 3],
    s: f32,
    t: f32,
    period: f32,
) -> [f32; 3] {
    use super::attributes::Pattern;
    match product.pattern {
        Pattern::Plain => base,
        Pattern::Striped => {
            if (t / period).rem_euclid(1.0) < 0.3 {
                contrast
            } else {
                base
            }
        }
        Pattern::Dotted => {
            let du = (s / period).rem_euclid(1.0) - 0.5;
            let dv = (t / period).rem_euclid(1.0) - 0.5;
            if du * du + dv * dv < 0.06 {
                contrast
            } else {
                base
            }
        }
        Pattern::Checked => {
            let cell = (s / period).floor() as i64 + (t / period).floor() as i64;
            if cell.rem_euclid(2) == 0 {
                base
            } else {
                base.map(|c| c * 0.72)
            }
        }
    }
}
