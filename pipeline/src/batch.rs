//! What the pipeline yields: a batch of items in input order and their pixels.

use atelier_catalog::Labels;

use bytes::Bytes;

use crate::decode::{DecodeLimits, RgbImage};
use crate::error::{ItemError, ItemFailure};
use crate::jpeg_header::JpegHeader;
use crate::loader::LoaderOptions;
use crate::transform::{Crop, Normalization, Transformer};

/// One input row and what became of it.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub item_id: String,
    pub labels: Labels,
    /// Extra columns requested in [`crate::LoaderOptions::extra_columns`], in that order.
    pub extra: Vec<Option<String>>,
    /// The row of `pixels` holding this item's image, or why there is none.
    pub slot: Result<usize, ItemError>,
}

/// `len` copies of `value`, written by memset rather than asked of the
/// allocator as zeroed memory: `vec![0; n]` is a `calloc`, for which jemalloc
/// zeroes a recycled block by handing its pages back to the kernel
/// (`madvise`), and every page then faults in again on first write. That was
/// a fifth of a decode thread's time in `atelier pipeline`.
pub(crate) fn filled<T: Copy>(len: usize, value: T) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    values.resize(len, value);
    values
}

/// The pixels of a batch's decoded images: `ok_count() × 3 × size × size`
/// values, NCHW.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// Normalised floats, ready for a model.
    Normalized(Vec<f32>),
    /// The bytes as decoded (0..=255), for the receiver to normalise: a
    /// quarter of the bytes to copy to a GPU, which normalises them itself.
    Bytes {
        values: Vec<u8>,
        normalization: Normalization,
    },
    /// One entry per image for a GPU to decode and resize
    /// ([`Batch::decode_on`]): JPEGs as read, and what a GPU decoder does not
    /// take already resized on the CPU.
    Encoded {
        images: Vec<EncodedImage>,
        normalization: Normalization,
        limits: DecodeLimits,
    },
}

/// One image of [`Pixels::Encoded`].
#[derive(Debug, Clone)]
pub enum EncodedImage {
    /// A whole, sequential, colour JPEG (see [`crate::JpegHeader::suits_device`])
    /// and its crop window in the picture's full-size pixels.
    Jpeg { bytes: Bytes, crop: Crop },
    /// Decoded and resized on the CPU: 3 × size × size bytes, CHW.
    Resized(Vec<u8>),
}

impl Pixels {
    /// Room for `images` images of `plane` values each, in the form `options` asks for.
    pub(crate) fn zeroed(options: &LoaderOptions, images: usize, plane: usize) -> Self {
        let normalization = options.normalization;
        if options.decode_on_device {
            Self::Encoded {
                images: Vec::with_capacity(images),
                normalization,
                limits: options.limits,
            }
        } else if options.raw_bytes {
            Self::Bytes {
                values: filled(images * plane, 0),
                normalization,
            }
        } else {
            Self::Normalized(filled(images * plane, 0.0))
        }
    }

    /// Transforms `image` into image slot `slot`.
    pub(crate) fn write(
        &mut self,
        transformer: &mut Transformer,
        image: &RgbImage,
        crop: Crop,
        slot: usize,
        plane: usize,
    ) -> Result<(), String> {
        let range = slot * plane..(slot + 1) * plane;
        match self {
            Self::Normalized(values) => transformer.apply(image, crop, &mut values[range]),
            Self::Bytes { values, .. } => transformer.apply_bytes(image, crop, &mut values[range]),
            Self::Encoded { images, .. } => {
                let mut resized = filled(plane, 0);
                transformer.apply_bytes(image, crop, &mut resized)?;
                images.push(EncodedImage::Resized(resized));
                Ok(())
            }
        }
    }

    /// Appends a JPEG (whose `header` was read) for the device to decode,
    /// once that header is within `limits`, with the window
    /// `crop_for(width, height)` picks.
    pub(crate) fn push_encoded(
        &mut self,
        bytes: Bytes,
        header: JpegHeader,
        limits: &DecodeLimits,
        crop_for: impl FnOnce(usize, usize) -> Crop,
    ) -> Result<(), ItemError> {
        let Self::Encoded { images, .. } = self else {
            return Err(ItemError::Corrupt {
                format: "jpeg",
                reason: "the batch does not hold encoded images".into(),
            });
        };
        limits.check(header.width as u64, header.height as u64)?;
        let crop = crop_for(header.width, header.height);
        images.push(EncodedImage::Jpeg { bytes, crop });
        Ok(())
    }

    /// Keeps the first `images` images.
    pub(crate) fn truncate(&mut self, images: usize, plane: usize) {
        match self {
            Self::Normalized(values) => values.truncate(images * plane),
            Self::Bytes { values, .. } => values.truncate(images * plane),
            Self::Encoded {
                images: encoded, ..
            } => encoded.truncate(images),
        }
    }
}

/// A batch of items, every input row present, in input order.
#[derive(Debug, Clone)]
pub struct Batch {
    pub items: Vec<BatchItem>,
    pub pixels: Pixels,
    pub size: usize,
}

impl Batch {
    /// Items whose image decoded; the leading dimension of [`Batch::tensor`].
    pub fn ok_count(&self) -> usize {
        self.items.iter().filter(|i| i.slot.is_ok()).count()
    }

    pub fn failures(&self) -> impl Iterator<Item = ItemFailure> + '_ {
        self.items.iter().filter_map(|item| match &item.slot {
            Ok(_) => None,
            Err(error) => Some(ItemFailure {
                item_id: item.item_id.clone(),
                error: error.clone(),
            }),
        })
    }

    /// The decoded images as an `[N, 3, size, size]` normalised float
    /// tensor on the CPU. Encoded images are decoded here on the CPU, and
    /// one that fails comes out black (and is logged): a consumer of encoded
    /// batches calls [`Batch::decode_on`], which marks such items failed.
    pub fn tensor(&self) -> tch::Tensor {
        let n = self.ok_count() as i64;
        let s = self.size as i64;
        match &self.pixels {
            Pixels::Normalized(values) => tch::Tensor::from_slice(values).view([n, 3, s, s]),
            Pixels::Bytes {
                values,
                normalization,
            } => normalize(
                &tch::Tensor::from_slice(values).view([n, 3, s, s]),
                normalization,
            ),
            Pixels::Encoded { .. } => self.decoded_on_cpu(),
        }
    }
}

/// `[N, 3, H, W]` bytes (0..=255) to normalised floats, on their device; the
/// same arithmetic as the pipeline's tables.
pub fn normalize(bytes: &tch::Tensor, normalization: &Normalization) -> tch::Tensor {
    let device = bytes.device();
    let channel = |values: &[f32; 3]| {
        tch::Tensor::from_slice(values)
            .view([1, 3, 1, 1])
            .to_device(device)
    };
    (bytes.to_kind(tch::Kind::Float) / 255.0 - channel(&normalization.mean))
        / channel(&normalization.std)
}
