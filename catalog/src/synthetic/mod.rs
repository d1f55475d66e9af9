//! Synthetic catalogues a model can actually learn from.
//!
//! Each item is a product-photo-like JPEG of one of ten silhouettes in one of
//! twelve colours, with a pattern and a brand glyph, placed, rotated and lit at
//! random over a noisy studio background. Item `i` of seed `s` is a pure function
//! of `(s, i)`, so catalogues are reproducible and can be rendered in parallel.

pub mod attributes;
mod raster;
pub mod render;
mod shapes;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::runtime::Handle;

use crate::error::{CatalogError, Result};
use crate::item::{CatalogItem, Labels};
use crate::ordered_pool::OrderedPool;
use crate::store::StoreLocation;
use crate::writer::{CatalogWriter, WriterOptions};
use attributes::{Product, BRANDS, CATEGORIES, COLORS, PATTERNS};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub items: usize,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub threads: usize,
    pub jpeg_quality: u8,
    pub overwrite: bool,
    pub writer: WriterOptions,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            items: 1000,
            seed: 0,
            width: 384,
            height: 512,
            threads: std::thread::available_parallelism().map_or(2, usize::from),
            jpeg_quality: 88,
            overwrite: false,
            writer: WriterOptions::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateSummary {
    pub items: usize,
    pub files: usize,
    pub bytes: usize,
    pub seconds: f64,
}

/// Items render in chunks so a thread's work amortises channel traffic.
const CHUNK: usize = 32;

/// The product behind item `index` of catalogue `seed`, and the RNG that draws its photo.
pub fn product(seed: u64, index: u64) -> (Product, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let product = Product {
        color: rng.random_range(0..COLORS.len()),
        brand: rng.random_range(0..BRANDS.len()),
        category: CATEGORIES[rng.random_range(0..CATEGORIES.len())],
        pattern: PATTERNS[rng.random_range(0..PATTERNS.len())],
    };
    (product, rng)
}

/// Renders and encodes item `index`; deterministic in `(options.seed, index)`.
pub fn render_item(options: &GenerateOptions, index: u64) -> Result<CatalogItem> {
    let (product, mut rng) = product(options.seed, index);
    let rgb = render::render(&product, &mut rng, options.width, options.height);
    let jpeg = encode_jpeg(&rgb, options.width, options.height, options.jpeg_quality)?;
    Ok(CatalogItem {
        item_id: format!("syn{}-{index:08}", options.seed),
        image: Some(jpeg),
        image_uri: None,
        labels: Labels::from_pairs([
            (crate::schema::COLOR, Some(product.color_name().to_string())),
            (crate::schema::BRAND, Some(product.brand_name().to_string())),
            (
                crate::schema::CATEGORY,
                Some(product.category.name().to_string()),
            ),
            (crate::schema::CAPTION, Some(product.caption())),
        ]),
        extra: Vec::new(),
    })
}

/// Encodes RGB pixels as a baseline JPEG with libjpeg-turbo's fast settings.
pub fn encode_jpeg(rgb: &[u8], width: usize, height: usize, quality: u8) -> Result<Vec<u8>> {
    // libjpeg reports failure by unwinding out of its error handler.
    catch_unwind(AssertUnwindSafe(|| -> std::io::Result<Vec<u8>> {
        let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        compress.set_fastest_defaults();
        compress.set_size(width, height);
        compress.set_quality(f32::from(quality));
        let mut started = compress.start_compress(Vec::with_capacity(width * height / 4))?;
        started.write_scanlines(rgb)?;
        started.finish()
    }))
    .map_err(|_| CatalogError::Internal("libjpeg failed to encode".into()))?
    .map_err(|e| CatalogError::Internal(format!("jpeg encode: {e}")))
}

/// Generates the catalogue into `out`, calling `progress` with the items written so far.
///
/// Blocking: call it from a thread that may block; `handle` runs the writes.
pub fn generate(
    options: &GenerateOptions,
    out: StoreLocation,
    handle: &Handle,
    mut progress: impl FnMut(usize),
) -> Result<GenerateSummary> {
    let started = Instant::now();
    handle.block_on(crate::output::prepare_output(&out, options.overwrite))?;
    let mut writer = CatalogWriter::new(out, options.writer.clone())?;
    let chunks = options.items.div_ceil(CHUNK);
    let total = options.items;
    let render_options = options.clone();
    let pool = OrderedPool::new(
        "generate",
        0..chunks,
        options.threads,
        options.threads * 2,
        move |chunk| {
            let start = chunk * CHUNK;
            let end = (start + CHUNK).min(total);
            (start..end)
                .map(|i| render_item(&render_options, i as u64))
                .collect::<Result<Vec<_>>>()
        },
    );
    let mut written = 0;
    let mut bytes = 0;
    for chunk in pool {
        let items = chunk.map_err(|e| CatalogError::Internal(e.to_string()))??;
        written += items.len();
        bytes += items
            .iter()
            .map(|i| i.image.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
        handle.block_on(writer.write(items))?;
        progress(written);
    }
    let files = handle.block_on(writer.finish())?;
    Ok(GenerateSummary {
        items: written,
        files: files.len(),
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_deterministic_per_seed_and_index() {
        let options = GenerateOptions {
            width: 96,
            height: 128,
            ..Default::default()
        };
        let a = render_item(&options, 7).unwrap();
        let b = render_item(&options, 7).unwrap();
        let c = render_item(&options, 8).unwrap();
        assert_eq!(a.image, b.image);
        assert_eq!(a.labels, b.labels);
        assert_ne!(a.image, c.image);
        let other_seed = GenerateOptions { seed: 1, ..options };
        assert_ne!(render_item(&other_seed, 7).unwrap().image, a.image);
    }

    #[test]
    fn labels_cover_the_vocabulary() {
        let mut colors = std::collections::HashSet::new();
        let mut categories = std::collections::HashSet::new();
        for i in 0..2000 {
            let (p, _) = product(3, i);
            colors.insert(p.color);
            categories.insert(p.category.name());
        }
        assert_eq!(colors.len(), COLORS.len());
        assert_eq!(categories.len(), CATEGORIES.len());
    }
}
