//! JPEG decoding through libjpeg-turbo's own API (the mozjpeg wrapper crate
//! cannot skip rows), whole or only the rows a crop will use. Skipped rows are
//! still entropy-decoded, so corruption there is still caught, but they are
//! not inverse-transformed, upsampled or colour-converted, which is most of a
//! JPEG's decode time. A portrait photo centre-cropped to a square skips a
//! quarter of its rows.

use std::ops::Range;
use std::os::raw::c_ulong;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg_sys as ffi;

use crate::batch::filled;
use crate::decode::{strict_error_manager, DecodeLimits, RgbImage};
use crate::error::ItemError;

/// Rows of a JPEG decoded at a reduced DCT scale: `image` holds rows
/// `first_row..first_row + image.height` of the picture.
#[derive(Debug)]
pub struct JpegRows {
    pub image: RgbImage,
    pub first_row: usize,
}

/// A decompressor destroyed however its use ends, a libjpeg error (an
/// unwinding panic out of the error manager) included.
struct Decompressor {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    /// Pointed to by `cinfo`, so it lives exactly as long.
    errors: Box<ffi::jpeg_error_mgr>,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_decompress, or still zeroed, which
        // jpeg_destroy_decompress takes as nothing to free.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// Decodes the rows `rows(width, height)` of `bytes` at DCT scale
/// `scale(width, height)`/8, where `rows` sees the scaled size.
pub fn decode_rows(
    bytes: &[u8],
    limits: &DecodeLimits,
    scale: impl FnOnce(usize, usize) -> u8,
    rows: impl FnOnce(usize, usize) -> Range<usize>,
) -> Result<JpegRows, ItemError> {
    // libjpeg errors unwind out of the error manager as panics.
    catch_unwind(AssertUnwindSafe(|| read_rows(bytes, limits, scale, rows)))
        .unwrap_or_else(|payload| Err(libjpeg_failure(payload)))
}

/// What a libjpeg error said, from the panic its error manager unwound with.
fn libjpeg_failure(payload: Box<dyn std::any::Any + Send>) -> ItemError {
    ItemError::Corrupt {
        format: "jpeg",
        reason: payload
            .downcast_ref::<String>()
            .map(|m| m.trim_start_matches("libjpeg fatal error: ").to_string())
            .unwrap_or_else(|| "decoder failed".into()),
    }
}

fn read_rows(
    bytes: &[u8],
    limits: &DecodeLimits,
    scale: impl FnOnce(usize, usize) -> u8,
    rows: impl FnOnce(usize, usize) -> Range<usize>,
) -> Result<JpegRows, ItemError> {
    let corrupt = |reason: String| ItemError::Corrupt {
        format: "jpeg",
        reason,
    };
    let mut decompressor = Decompressor {
        // SAFETY: a plain C struct; zeroed is what jpeg_create_decompress expects.
        cinfo: Box::new(unsafe { std::mem::zeroed() }),
        errors: strict_error_manager(),
    };
    let cinfo = &mut *decompressor.cinfo;
    cinfo.common.err = &mut *decompressor.errors;
    // SAFETY: `cinfo` and its error manager live in boxes that outlive every
    // call below; `bytes` outlives the decompressor's use of it.
    unsafe {
        ffi::jpeg_create_decompress(cinfo);
        ffi::jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
        ffi::jpeg_read_header(cinfo, 1);
    }
    let (width, height) = (cinfo.image_width as usize, cinfo.image_height as usize);
    limits.check(width as u64, height as u64)?;
    if matches!(
        cinfo.jpeg_color_space,
        ffi::J_COLOR_SPACE::JCS_CMYK | ffi::J_COLOR_SPACE::JCS_YCCK
    ) {
        return Err(corrupt("CMYK JPEGs are not supported".into()));
    }
    cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
    cinfo.scale_num = u32::from(scale(width, height));
    cinfo.scale_denom = 8;
    // SAFETY: as above.
    unsafe { ffi::jpeg_start_decompress(cinfo) };
    let (width, full_height) = (cinfo.output_width as usize, cinfo.output_height as usize);
    if cinfo.output_components != 3 {
        return Err(corrupt(format!(
            "{} components after conversion to RGB",
            cinfo.output_components
        )));
    }
    let wanted = rows(width, full_height);
    let (first, end) = (wanted.start.min(full_height), wanted.end.min(full_height));
    let end = end.max(first);
    let stride = width * 3;
    let mut pixels = filled((end - first) * stride, 0u8);
    let mut pointers: Vec<*mut u8> = pixels
        .chunks_exact_mut(stride.max(1))
        .map(<[u8]>::as_mut_ptr)
        .collect();
    // SAFETY: every row pointer points at a row of `pixels`, which outlives
    // the calls; libjpeg writes at most `stride` bytes per row and no more
    // rows than it is given pointers for.
    unsafe {
        if first > 0 {
            ffi::jpeg_skip_scanlines(cinfo, first as u32);
        }
        while (cinfo.output_scanline as usize) < end {
            let row = cinfo.output_scanline as usize;
            if row < first {
                return Err(corrupt(format!("skipped to row {row}, not {first}")));
            }
            let remaining = &mut pointers[row - first..];
            let read =
                ffi::jpeg_read_scanlines(cinfo, remaining.as_mut_ptr(), remaining.len() as u32);
            if read == 0 {
                return Err(corrupt(format!("no scanline at row {row}")));
            }
        }
        // Skipping to the very end would not decode the last rows' entropy
        // data at all (libjpeg just stops), and a truncated file would pass:
        // the tail is skipped up to its last row, which is read.
        if end < full_height {
            if full_height - end > 1 {
                ffi::jpeg_skip_scanlines(cinfo, (full_height - end - 1) as u32);
            }
            let mut last = filled(stride, 0u8);
            let mut pointer = last.as_mut_ptr();
            while (cinfo.output_scanline as usize) < full_height {
                if ffi::jpeg_read_scanlines(cinfo, &mut pointer, 1) == 0 {
                    return Err(corrupt("no last scanline".into()));
                }
            }
        }
        ffi::jpeg_finish_decompress(cinfo);
    }
    Ok(JpegRows {
        image: RgbImage {
            width,
            height: end - first,
            pixels,
        },
        first_row: first,
    })
}

#[cfg(test)]
mod tests {
    use atelier_catalog::{render_item, GenerateOptions};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use crate::decode::{decode, decode_for_crop, DecodeLimits};
    use crate::error::ItemError;
    use crate::transform::{Augment, Normalization, Transformer};

    fn photo(index: u64, width: usize, height: usize) -> Vec<u8> {
        let options = GenerateOptions {
            seed: 7,
            width,
            height,
            jpeg_quality: 88,
            ..GenerateOptions::default()
        };
        render_item(&options, index).unwrap().image.unwrap()
    }

    /// The bytes a transform makes from the whole decoded picture and from
    /// only the rows its crop needs.
    fn both_ways(jpeg: &[u8], side: usize, augment: Augment, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let limits = DecodeLimits::default();
        let mut transformer = Transformer::new(side, augment, Normalization::IMAGENET);
        let whole = decode(jpeg, side as u32, &limits).unwrap();
        let crop = transformer.crop(
            whole.width,
            whole.height,
            &mut ChaCha8Rng::seed_from_u64(seed),
        );
        let mut expected = vec![0u8; 3 * side * side];
        transformer
            .apply_bytes(&whole, crop, &mut expected)
            .unwrap();
        let (rows, crop) = decode_for_crop(jpeg, side as u32, &limits, side, |w, h| {
            transformer.crop(w, h, &mut ChaCha8Rng::seed_from_u64(seed))
        })
        .unwrap();
        let mut got = vec![0u8; 3 * side * side];
        transformer.apply_bytes(&rows, crop, &mut got).unwrap();
        (expected, got)
    }

    #[test]
    fn a_centre_crop_from_the_rows_it_needs_equals_one_from_the_whole_picture() {
        for (width, height, side) in [
            (384, 512, 224),
            (512, 384, 224),
            (384, 512, 64),
            (60, 80, 64),
        ] {
            let jpeg = photo(width as u64, width, height);
            let (expected, got) = both_ways(&jpeg, side, Augment::CenterCrop, 0);
            assert!(expected == got, "{width}x{height} to {side}: pixels differ");
        }
    }

    #[test]
    fn random_resized_crops_from_the_rows_they_need_equal_the_whole_picture() {
        let jpeg = photo(3, 384, 512);
        for seed in 0..20 {
            let (expected, got) = both_ways(&jpeg, 224, Augment::train(0.6, None), seed);
            assert!(expected == got, "seed {seed}: pixels differ");
        }
    }

    #[test]
    fn a_portrait_centre_crop_skips_a_quarter_of_the_rows() {
        let jpeg = photo(1, 384, 512);
        let (rows, crop) = decode_for_crop(&jpeg, 224, &DecodeLimits::default(), 224, |w, h| {
            Transformer::new(224, Augment::CenterCrop, Normalization::IMAGENET).crop(
                w,
                h,
                &mut ChaCha8Rng::seed_from_u64(0),
            )
        })
        .unwrap();
        // 5/8 scale: 240x320, of which the centre 240 rows and a few of slack.
        assert_eq!(rows.width, 240);
        assert!(rows.height < 250, "decoded {} of 320 rows", rows.height);
        assert!(crop.top >= 0.0 && crop.top + crop.height <= rows.height as f64);
    }

    #[test]
    fn damaged_photos_fail_as_they_fail_when_decoded_whole() {
        let limits = DecodeLimits::default();
        let jpeg = photo(4, 384, 512);
        let centre = |w, h| {
            Transformer::new(224, Augment::CenterCrop, Normalization::IMAGENET).crop(
                w,
                h,
                &mut ChaCha8Rng::seed_from_u64(0),
            )
        };
        let mut damaged = Vec::new();
        for tenth in 1..10 {
            damaged.push(jpeg[..jpeg.len() * tenth / 10].to_vec());
            let mut smashed = jpeg.clone();
            let at = jpeg.len() * tenth / 10;
            smashed[at..at + 16].fill(0xff);
            damaged.push(smashed);
        }
        for (i, bytes) in damaged.iter().enumerate() {
            let whole = decode(bytes, 224, &limits).is_ok();
            let rows = decode_for_crop(bytes, 224, &limits, 224, centre).is_ok();
            assert_eq!(
                whole, rows,
                "damage {i}: whole decode ok {whole}, rows ok {rows}"
            );
        }
    }

    #[test]
    fn corruption_in_skipped_rows_is_still_an_error() {
        let mut jpeg = photo(2, 384, 512);
        // Cut the entropy data near its end: those rows are skipped for a
        // centre crop, but the truncation must not pass unnoticed (the
        // caller's fallback to a whole decode is not what catches it).
        jpeg.truncate(jpeg.len() - jpeg.len() / 20);
        let outcome = std::panic::catch_unwind(|| {
            super::decode_rows(&jpeg, &DecodeLimits::default(), |_, _| 5, |_, h| 40..h - 40)
        });
        match outcome {
            Err(_) | Ok(Err(ItemError::Corrupt { format: "jpeg", .. })) => {}
            Ok(Err(other)) => panic!("not a corrupt-jpeg error: {other}"),
            Ok(Ok(rows)) => panic!("decoded {} rows of a truncated file", rows.image.height),
        }
    }
}
