//! Resize, crop, flip and normalise: RGB bytes in, a CHW float slice out.

use atelier_proto::Framing;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::decode::RgbImage;

/// Per-channel mean and standard deviation on the 0..1 scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// One table per channel from byte value to normalised float.
    fn tables(&self) -> [[f32; 256]; 3] {
        std::array::from_fn(|c| {
            std::array::from_fn(|v| (v as f32 / 255.0 - self.mean[c]) / self.std[c])
        })
    }
}

/// How an image becomes a `size`×`size` input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Augment {
    /// Centre crop of the shorter side: the evaluation and tagging transform.
    CenterCrop,
    /// Random resized crop (area share and aspect-ratio ranges), a random
    /// horizontal flip with probability `flip`, and an optional random affine
    /// warp: the training transform.
    RandomResizedCrop {
        scale: (f32, f32),
        ratio: (f32, f32),
        flip: f32,
        affine: Option<RandomAffine>,
    },
}

/// torchvision's RandomAffine, minus shear: rotation within ±`degrees`,
/// translation within ±`translate` of the side, scaling within 1 ± `scale`.
/// Pixels warped in from outside the image repeat the nearest edge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomAffine {
    pub degrees: f32,
    pub translate: f32,
    pub scale: f32,
}

impl Augment {
    /// The training transform: a random resized crop of at least
    /// `crop_scale` of the area (at most all of it), at torchvision's aspect
    /// ratios, flipped half the time, then `affine` if given.
    pub fn train(crop_scale: f32, affine: Option<RandomAffine>) -> Self {
        Self::RandomResizedCrop {
            scale: (crop_scale.clamp(0.01, 1.0), 1.0),
            ratio: (0.75, 1.333),
            flip: 0.5,
            affine,
        }
    }
}

/// A reusable transformer; holds the resizer's scratch buffers and lookup tables.
pub struct Transformer {
    size: usize,
    augment: Augment,
    framing: Framing,
    tables: [[f32; 256]; 3],
    resizer: Resizer,
    resized: Image<'static>,
    warped: Vec<u8>,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("size", &self.size)
            .field("augment", &self.augment)
            .finish_non_exhaustive()
    }
}

/// A crop window in source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub flip: bool,
    /// Output-to-input affine map `[a, b, c, d, tx, ty]` around the centre, if warping.
    pub warp: Option<[f32; 6]>,
}

impl Crop {
    /// The largest centred square.
    fn center(w: f64, h: f64, flip: bool, warp: Option<[f32; 6]>) -> Self {
        let side = w.min(h);
        Self {
            left: (w - side) / 2.0,
            top: (h - side) / 2.0,
            width: side,
            height: side,
            flip,
            warp,
        }
    }
}

impl Transformer {
    pub fn new(size: usize, augment: Augment, normalization: Normalization) -> Self {
        Self {
            size,
            augment,
            framing: Framing::CenterCrop,
            tables: normalization.tables(),
            resizer: Resizer::new(),
            resized: Image::new(size as u32, size as u32, PixelType::U8x3),
            warped: Vec::new(),
        }
    }

    /// Fits photos to the square as `framing` says (centre crop unless set).
    pub fn with_framing(self, framing: Framing) -> Self {
        Self { framing, ..self }
    }

    /// The crop window for an image of `width`×`height`, drawn from `rng` when training.
    pub fn crop(&self, width: usize, height: usize, rng: &mut impl Rng) -> Crop {
        let (w, h) = (width as f64, height as f64);
        match self.framing {
            Framing::CenterCrop => self.crop_within(w, h, rng),
            // The window is drawn on the photo squashed to a square, then
            // mapped back onto the photo: the whole photo when not training.
            Framing::Squash => {
                let side = w.max(h);
                let square = self.crop_within(side, side, rng);
                let (x, y) = (w / side, h / side);
                Crop {
                    left: square.left * x,
                    top: square.top * y,
                    width: square.width * x,
                    height: square.height * y,
                    ..square
                }
            }
        }
    }

    /// The window within a `w`×`h` frame.
    fn crop_within(&self, w: f64, h: f64, rng: &mut impl Rng) -> Crop {
        match self.augment {
            Augment::CenterCrop => Crop::center(w, h, false, None),
            Augment::RandomResizedCrop {
                scale,
                ratio,
                flip,
                affine,
            } => {
                let flip = rng.random::<f32>() < flip;
                let warp = affine.map(|a| warp_matrix(a, self.size as f32, rng));
                let area = w * h;
                // torchvision's algorithm: ten tries at a random window, then the centre.
                for _ in 0..10 {
                    let target = area * f64::from(rng.random_range(scale.0..=scale.1));
                    let log_ratio = rng.random_range(ratio.0.ln()..=ratio.1.ln());
                    let aspect = f64::from(log_ratio.exp());
                    let cw = (target * aspect).sqrt();
                    let ch = (target / aspect).sqrt();
                    if cw <= w && ch <= h && cw >= 1.0 && ch >= 1.0 {
                        return Crop {
                            left: rng.random_range(0.0..=(w - cw)),
                            top: rng.random_range(0.0..=(h - ch)),
                            width: cw,
                            height: ch,
                            flip,
                            warp,
                        };
                    }
                }
                Crop::center(w, h, flip, warp)
            }
        }
    }

    /// Crops and resizes `image` in one pass, then writes normalised CHW floats to `out`.
    pub fn apply(&mut self, image: &RgbImage, crop: Crop, out: &mut [f32]) -> Result<(), String> {
        self.resize(image, crop, out.len())?;
        let [tr, tg, tb] = &self.tables;
        write_planes(
            self.resized(crop),
            self.size,
            crop.flip,
            out,
            |channel, value| [tr, tg, tb][channel][usize::from(value)],
        );
        Ok(())
    }

    /// As [`Transformer::apply`], but writes the CHW bytes as they are, for
    /// the receiver to normalise (see [`crate::batch::Pixels::Bytes`]).
    pub fn apply_bytes(
        &mut self,
        image: &RgbImage,
        crop: Crop,
        out: &mut [u8],
    ) -> Result<(), String> {
        self.resize(image, crop, out.len())?;
        write_planes(self.resized(crop), self.size, crop.flip, out, |_, value| {
            value
        });
        Ok(())
    }

    /// Crops, resizes and warps `image` into the scratch buffers.
    fn resize(&mut self, image: &RgbImage, crop: Crop, out_len: usize) -> Result<(), String> {
        if out_len != 3 * self.size * self.size {
            return Err(format!(
                "output holds {out_len} values, need {}",
                3 * self.size * self.size
            ));
        }
        let source = ImageRef::new(
            image.width as u32,
            image.height as u32,
            &image.pixels,
            PixelType::U8x3,
        )
        .map_err(|e| e.to_string())?;
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(crop.left, crop.top, crop.width, crop.height);
        self.resizer
            .resize(&source, &mut self.resized, &options)
            .map_err(|e| e.to_string())?;
        if let Some(matrix) = crop.warp {
            self.warped = warp(self.resized.buffer(), self.size, matrix);
        }
        Ok(())
    }

    /// The interleaved RGB result of the last [`Transformer::resize`] with `crop`.
    fn resized(&self, crop: Crop) -> &[u8] {
        match crop.warp {
            Some(_) => &self.warped,
            None => self.resized.buffer(),
        }
    }
}

/// Interleaved RGB rows to three planes, mirrored when `flip`, each byte
/// through `value(channel, byte)`.
fn write_planes<T: Copy>(
    pixels: &[u8],
    size: usize,
    flip: bool,
    out: &mut [T],
    value: impl Fn(usize, u8) -> T,
) {
    let plane = size * size;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for y in 0..size {
        let row = &pixels[y * size * 3..(y + 1) * size * 3];
        for x in 0..size {
            let src = if flip { size - 1 - x } else { x } * 3;
            let dst = y * size + x;
            r[dst] = value(0, row[src]);
            g[dst] = value(1, row[src + 1]);
            b[dst] = value(2, row[src + 2]);
        }
    }
}

/// Draws an output-to-input affine map for a `side`×`side` image.
fn warp_matrix(affine: RandomAffine, side: f32, rng: &mut impl Rng) -> [f32; 6] {
    fn symmetric(rng: &mut impl Rng, limit: f32) -> f32 {
        if limit > 0.0 {
            rng.random_range(-limit..=limit)
        } else {
            0.0
        }
    }
    let angle = symmetric(rng, affine.degrees).to_radians();
    let scale = 1.0 + symmetric(rng, affine.scale);
    let tx = symmetric(rng, affine.translate) * side;
    let ty = symmetric(rng, affine.translate) * side;
    // Inverse of rotate-and-scale, so each output pixel looks up its source.
    let (sin, cos) = angle.sin_cos();
    [cos / scale, sin / scale, -sin / scale, cos / scale, tx, ty]
}

/// Bilinear warp of an RGB `side`×`side` image, clamping at the edges.
fn warp(pixels: &[u8], side: usize, [a, b, c, d, tx, ty]: [f32; 6]) -> Vec<u8> {
    let mut out = vec![0u8; pixels.len()];
    let centre = (side as f32 - 1.0) / 2.0;
    let last = side as f32 - 1.0;
    for y in 0..side {
        for x in 0..side {
            let (dx, dy) = (x as f32 - centre - tx, y as f32 - centre - ty);
            let sx = (a * dx + b * dy + centre).clamp(0.0, last);
            let sy = (c * dx + d * dy + centre).clamp(0.0, last);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for ch in 0..3 {
                let at = |xx: usize, yy: usize| f32::from(pixels[(yy * side + xx) * 3 + ch]);
                let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
                let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
                out[(y * side + x) * 3 + ch] = (top * (1.0 - fy) + bottom * fy).round() as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn image(side: usize) -> RgbImage {
        RgbImage {
            width: side,
            height: side,
            pixels: (0..side * side * 3).map(|i| (i % 256) as u8).collect(),
        }
    }

    #[test]
    fn bytes_normalised_later_equal_the_floats() {
        let source = RgbImage {
            width: 40,
            height: 30,
            pixels: (0..40 * 30 * 3).map(|i| (i * 7 % 256) as u8).collect(),
        };
        let normalization = Normalization {
            mean: [0.5, 0.4, 0.3],
            std: [0.2, 0.25, 0.3],
        };
        let mut transformer = Transformer::new(16, Augment::CenterCrop, normalization);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        // Flipped, so that both writers mirror the same way.
        let crop = Crop {
            flip: true,
            ..transformer.crop(40, 30, &mut rng)
        };
        let mut floats = vec![0f32; 3 * 16 * 16];
        transformer.apply(&source, crop, &mut floats).unwrap();
        let mut bytes = vec![0u8; 3 * 16 * 16];
        transformer.apply_bytes(&source, crop, &mut bytes).unwrap();
        let later = crate::batch::normalize(
            &tch::Tensor::from_slice(&bytes).view([1, 3, 16, 16]),
            &normalization,
        );
        let diff = (later - tch::Tensor::from_slice(&floats).view([1, 3, 16, 16]))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6, "differs by {diff}");
        assert!(transformer
            .apply_bytes(&source, crop, &mut bytes[1..])
            .is_err());
    }

    #[test]
    fn identity_warp_changes_nothing() {
        let source = image(8);
        assert_eq!(
            warp(&source.pixels, 8, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
            source.pixels
        );
    }

    #[test]
    fn a_half_turn_reverses_the_image() {
        let source = image(5);
        let turned = warp(&source.pixels, 5, [-1.0, 0.0, 0.0, -1.0, 0.0, 0.0]);
        assert_eq!(&turned[..3], &source.pixels[source.pixels.len() - 3..]);
    }

    #[test]
    fn training_crops_are_reproducible_per_seed() {
        let augment = Augment::RandomResizedCrop {
            scale: (0.35, 1.0),
            ratio: (0.75, 1.333),
            flip: 0.5,
            affine: Some(RandomAffine {
                degrees: 15.0,
                translate: 0.1,
                scale: 0.1,
            }),
        };
        let mut transformer = Transformer::new(16, augment, Normalization::IMAGENET);
        let source = image(40);
        let run = |t: &mut Transformer, seed: u64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let crop = t.crop(40, 40, &mut rng);
            let mut out = vec![0f32; 3 * 16 * 16];
            t.apply(&source, crop, &mut out).unwrap();
            out
        };
        assert_eq!(run(&mut transformer, 1), run(&mut transformer, 1));
        assert_ne!(run(&mut transformer, 1), run(&mut transformer, 2));
    }

    #[test]
    fn squash_keeps_the_whole_portrait_photo_and_centre_crop_cuts_its_ends() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let plain = Transformer::new(16, Augment::CenterCrop, Normalization::IMAGENET);
        let cut = plain.crop(60, 80, &mut rng);
        assert_eq!(
            (cut.left, cut.top, cut.width, cut.height),
            (0.0, 10.0, 60.0, 60.0)
        );
        let whole = Transformer::new(16, Augment::CenterCrop, Normalization::IMAGENET)
            .with_framing(Framing::Squash);
        let all = whole.crop(60, 80, &mut rng);
        assert_eq!(
            (all.left, all.top, all.width, all.height),
            (0.0, 0.0, 60.0, 80.0)
        );
        // Training crops are drawn on the squashed frame: within the photo,
        // and at full scale the whole of it.
        let training = Transformer::new(16, Augment::train(1.0, None), Normalization::IMAGENET)
            .with_framing(Framing::Squash);
        for seed in 0..50 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let crop = training.crop(60, 80, &mut rng);
            assert!(
                crop.left >= 0.0 && crop.left + crop.width <= 60.0 + 1e-9,
                "{crop:?}"
            );
            assert!(
                crop.top >= 0.0 && crop.top + crop.height <= 80.0 + 1e-9,
                "{crop:?}"
            );
            // The area share is of the photo, whatever its shape.
            assert!(
                crop.width * crop.height >= 0.999 * 60.0 * 80.0 * 0.56,
                "{crop:?}"
            );
        }
    }
}
