//! Resize, crop, flip and normalise: RGB bytes in, a CHW float slice out.

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
    /// Random resized crop (area share and aspect-ratio ranges) and a random
    /// horizontal flip with probability `flip`: the training transform.
    RandomResizedCrop {
        scale: (f32, f32),
        ratio: (f32, f32),
        flip: f32,
    },
}

impl Augment {
    pub const TRAIN_DEFAULT: Self = Self::RandomResizedCrop {
        scale: (0.35, 1.0),
        ratio: (0.75, 1.333),
        flip: 0.5,
    };
}

/// A reusable transformer; holds the resizer's scratch buffers and lookup tables.
pub struct Transformer {
    size: usize,
    augment: Augment,
    tables: [[f32; 256]; 3],
    resizer: Resizer,
    resized: Image<'static>,
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
}

impl Transformer {
    pub fn new(size: usize, augment: Augment, normalization: Normalization) -> Self {
        Self {
            size,
            augment,
            tables: normalization.tables(),
            resizer: Resizer::new(),
            resized: Image::new(size as u32, size as u32, PixelType::U8x3),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The crop window for an image of `width`×`height`, drawn from `rng` when training.
    pub fn crop(&self, width: usize, height: usize, rng: &mut impl Rng) -> Crop {
        let (w, h) = (width as f64, height as f64);
        match self.augment {
            Augment::CenterCrop => {
                let side = w.min(h);
                Crop {
                    left: (w - side) / 2.0,
                    top: (h - side) / 2.0,
                    width: side,
                    height: side,
                    flip: false,
                }
            }
            Augment::RandomResizedCrop { scale, ratio, flip } => {
                let flip = rng.random::<f32>() < flip;
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
                        };
                    }
                }
                let side = w.min(h);
                Crop {
                    left: (w - side) / 2.0,
                    top: (h - side) / 2.0,
                    width: side,
                    height: side,
                    flip,
                }
            }
        }
    }

    /// Crops and resizes `image` in one pass, then writes normalised CHW floats to `out`.
    pub fn apply(&mut self, image: &RgbImage, crop: Crop, out: &mut [f32]) -> Result<(), String> {
        let plane = self.size * self.size;
        if out.len() != 3 * plane {
            return Err(format!(
                "output holds {} floats, need {}",
                out.len(),
                3 * plane
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
        let pixels = self.resized.buffer();
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let [tr, tg, tb] = &self.tables;
        for y in 0..self.size {
            let row = &pixels[y * self.size * 3..(y + 1) * self.size * 3];
            for x in 0..self.size {
                let src = if crop.flip { self.size - 1 - x } else { x } * 3;
                let dst = y * self.size + x;
                r[dst] = tr[usize::from(row[src])];
                g[dst] = tg[usize::from(row[src + 1])];
                b[dst] = tb[usize::from(row[src + 2])];
            }
        }
        Ok(())
    }
}
