//! Decoding JPEG, PNG and WebP into RGB, strictly and within limits.
//!
//! JPEGs go through libjpeg-turbo (mozjpeg-sys; see [`crate::jpeg_rows`]) and are decoded at a reduced
//! DCT scale whenever the source is larger than the pipeline needs: an 8×8
//! block is inverse-transformed straight to M×M pixels, which skips most of the
//! decode work for large photos. Truncated or corrupt entropy data, which
//! libjpeg only warns about and pads with grey, is treated as an error so a
//! damaged photo never reaches a model silently.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use atelier_catalog::ImageFormat;
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error};

use crate::error::ItemError;
use crate::jpeg_rows;
use crate::transform::Crop;

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// Guards against decompression bombs and oversized objects: a header is
/// checked before any allocation, an object's size before its body is read.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_side: u64,
    pub max_pixels: u64,
    /// The most bytes one encoded image (inline or fetched) may have; a
    /// fetched object past it is never read whole into memory.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side: 16_384,
            max_pixels: 64 * 1024 * 1024,
            // A product photo is rarely over a few MiB; 16384² JPEGs fit.
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl DecodeLimits {
    pub(crate) fn check_bytes(&self, bytes: u64) -> Result<(), ItemError> {
        if bytes > self.max_bytes {
            return Err(ItemError::TooManyBytes {
                bytes,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    pub(crate) fn check(&self, width: u64, height: u64) -> Result<(), ItemError> {
        if width == 0 || height == 0 {
            return Err(ItemError::Corrupt {
                format: "image",
                reason: format!("header claims {width}x{height} pixels"),
            });
        }
        if width > self.max_side || height > self.max_side || width * height > self.max_pixels {
            return Err(ItemError::TooLarge {
                width,
                height,
                limit: format!("{} per side, {} pixels", self.max_side, self.max_pixels),
            });
        }
        Ok(())
    }
}

/// Decodes `bytes`, shrinking JPEGs by DCT scaling while the shorter side stays
/// at least `min_short_side` (`u32::MAX` decodes at full size; 0 at 1/8).
pub fn decode(
    bytes: &[u8],
    min_short_side: u32,
    limits: &DecodeLimits,
) -> Result<RgbImage, ItemError> {
    if bytes.is_empty() {
        return Err(ItemError::Empty);
    }
    match ImageFormat::detect(bytes) {
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, min_short_side, limits),
        Some(format) => decode_with_image(bytes, format, limits),
        None => Err(ItemError::UnsupportedFormat(
            bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        )),
    }
}

/// The smallest `M` (of M/8) that keeps the shorter side at least `min_short_side`.
pub fn dct_scale(width: usize, height: usize, min_short_side: u32) -> u8 {
    let short = width.min(height);
    (1..=8u8)
        .find(|&m| (short * usize::from(m)).div_ceil(8) >= min_short_side as usize)
        .unwrap_or(8)
}

fn decode_jpeg(
    bytes: &[u8],
    min_short_side: u32,
    limits: &DecodeLimits,
) -> Result<RgbImage, ItemError> {
    jpeg_rows::decode_rows(
        bytes,
        limits,
        |width, height| dct_scale(width, height, min_short_side),
        |_, height| 0..height,
    )
    .map(|decoded| decoded.image)
}

/// Decodes `bytes` for the crop that `crop_for(width, height)` picks from the
/// decoded size, to be resized to `side` pixels: a JPEG's rows outside the
/// crop, less the resize filter's reach, are skipped rather than decoded. The
/// crop comes back in the coordinates of the returned image, which then holds
/// only those rows; resizing it gives the same pixels as the whole picture.
pub fn decode_for_crop(
    bytes: &[u8],
    min_short_side: u32,
    limits: &DecodeLimits,
    side: usize,
    crop_for: impl FnOnce(usize, usize) -> Crop,
) -> Result<(RgbImage, Crop), ItemError> {
    if ImageFormat::detect(bytes) != Some(ImageFormat::Jpeg) {
        let image = decode(bytes, min_short_side, limits)?;
        let crop = crop_for(image.width, image.height);
        return Ok((image, crop));
    }
    // Drawn once whichever way the picture is decoded: a training crop
    // comes from a random generator.
    let mut crop_for = Some(crop_for);
    let mut chosen = None;
    let decoded = jpeg_rows::decode_rows(
        bytes,
        limits,
        |width, height| dct_scale(width, height, min_short_side),
        |width, height| {
            let Some(pick) = crop_for.take() else {
                return 0..height;
            };
            let crop = *chosen.insert(pick(width, height));
            // A shrinking bilinear filter reads one source pixel per output
            // pixel either side; two more rows of slack.
            let reach = (crop.height / side.max(1) as f64).max(1.0).ceil() + 2.0;
            let first = (crop.top - reach).floor().max(0.0) as usize;
            let end = (crop.top + crop.height + reach).ceil().max(0.0) as usize;
            first..end
        },
    );
    if let (Ok(rows), Some(mut crop)) = (decoded, chosen) {
        crop.top -= rows.first_row as f64;
        return Ok((rows.image, crop));
    }
    // Whatever libjpeg refuses while skipping rows (a coding it cannot skip
    // in, say), the verdict is that of reading every row: a photo that
    // decodes whole is never lost to the shortcut, and a broken one fails
    // with the same message either way.
    let image = decode(bytes, min_short_side, limits)?;
    let crop = chosen
        .or_else(|| crop_for.map(|pick| pick(image.width, image.height)))
        .ok_or_else(|| ItemError::Corrupt {
            format: "jpeg",
            reason: "no crop for the decoded picture".into(),
        })?;
    Ok((image, crop))
}

pub(crate) fn strict_error_manager() -> Box<jpeg_error_mgr> {
    // SAFETY: jpeg_error_mgr is a plain C struct; jpeg_std_error fills every field.
    let mut manager: Box<jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    unsafe { jpeg_std_error(&mut manager) };
    manager.error_exit = Some(unwind_with_message);
    manager.emit_message = Some(escalate_corruption_warnings);
    manager
}

/// Warnings that mean pixels are missing or garbage (truncation, bad entropy
/// data); others, such as stray bytes between markers, are common in real
/// catalogue photos and harmless.
const FATAL_WARNINGS: [i32; 4] = [
    mozjpeg_sys::JWRN_JPEG_EOF,
    mozjpeg_sys::JWRN_HIT_MARKER,
    mozjpeg_sys::JWRN_HUFF_BAD_CODE,
    mozjpeg_sys::JWRN_MUST_RESYNC,
];

unsafe extern "C-unwind" fn escalate_corruption_warnings(
    cinfo: &mut jpeg_common_struct,
    level: std::os::raw::c_int,
) {
    // SAFETY: libjpeg passes its own live common struct with `err` set.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && FATAL_WARNINGS.contains(&code) {
        unsafe { unwind_with_message(cinfo) };
    }
}

unsafe extern "C-unwind" fn unwind_with_message(cinfo: &mut jpeg_common_struct) {
    // SAFETY: as above; libjpeg's message buffer is JMSG_LENGTH_MAX (200) bytes,
    // so 256 leaves room whatever the binding declares.
    let message = unsafe {
        let err = &*cinfo.err;
        match err.format_message {
            Some(format) => {
                let mut buffer = [0u8; 256];
                let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
                    std::mem::transmute(format);
                format(cinfo, buffer.as_mut_ptr());
                let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
                String::from_utf8_lossy(&buffer[..end]).into_owned()
            }
            None => format!("libjpeg error {}", err.msg_code),
        }
    };
    std::panic::resume_unwind(Box::new(message));
}

fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<RgbImage, ItemError> {
    let corrupt = |reason: String| ItemError::Corrupt {
        format: format.name(),
        reason,
    };
    let (width, height) = format.dimensions(bytes).map_err(corrupt)?;
    limits.check(u64::from(width), u64::from(height))?;
    let mut reader = image::ImageReader::with_format(
        Cursor::new(bytes),
        match format {
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        },
    );
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(u32::try_from(limits.max_side).unwrap_or(u32::MAX));
    image_limits.max_image_height = Some(u32::try_from(limits.max_side).unwrap_or(u32::MAX));
    image_limits.max_alloc = Some(limits.max_pixels * 8);
    reader.limits(image_limits);
    let decoded = catch_unwind(AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| corrupt("decoder panicked".into()))?
        .map_err(|e| corrupt(e.to_string()))?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let pixels = if decoded.color().has_alpha() {
        // Product cut-outs are shown on white; transparent pixels become white.
        decoded
            .to_rgba8()
            .pixels()
            .flat_map(|p| {
                let alpha = u16::from(p[3]);
                let blend = |c: u8| ((u16::from(c) * alpha + 255 * (255 - alpha)) / 255) as u8;
                [blend(p[0]), blend(p[1]), blend(p[2])]
            })
            .collect()
    } else {
        decoded.to_rgb8().into_raw()
    };
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_scale_keeps_the_short_side_above_the_target() {
        assert_eq!(dct_scale(384, 512, 224), 5); // 240x320
        assert_eq!(dct_scale(384, 512, 64), 2); // 96x128
        assert_eq!(dct_scale(60, 80, 64), 8); // never upscales
        assert_eq!(dct_scale(384, 512, 0), 1);
    }

    #[test]
    fn limits_reject_huge_headers_before_decoding() {
        let err = DecodeLimits::default().check(50_000, 50_000).unwrap_err();
        assert!(matches!(err, ItemError::TooLarge { width: 50_000, .. }));
    }
}
