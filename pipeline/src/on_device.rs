//! Batches whose JPEGs a GPU decodes: the loader hands over the bytes as read
//! ([`crate::Pixels::Encoded`]), and the compute thread decodes, crops and
//! resizes them on the device, so the CPU only reads Parquet. Past what CPU
//! decoding on a machine's cores can feed a GPU.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::batch::{normalize, Batch, EncodedImage, Pixels};
use crate::decode::{decode, decode_for_crop, DecodeLimits};
use crate::error::ItemError;
use crate::transform::{Augment, Crop, Normalization, Transformer};

/// Decodes JPEGs into `[height, width, 3]` uint8 tensors on one device.
pub trait JpegDecoder {
    /// One result per input, in order; an error says why that one failed.
    fn decode(&mut self, jpegs: &[&[u8]]) -> Vec<Result<Tensor, String>>;
}

/// The reference [`JpegDecoder`]: libjpeg-turbo on the calling thread, at
/// full scale, tensors on the CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuJpegDecoder;

impl JpegDecoder for CpuJpegDecoder {
    fn decode(&mut self, jpegs: &[&[u8]]) -> Vec<Result<Tensor, String>> {
        jpegs
            .iter()
            .map(|bytes| {
                let image =
                    decode(bytes, u32::MAX, &DecodeLimits::default()).map_err(|e| e.to_string())?;
                Ok(Tensor::from_slice(&image.pixels).view([
                    image.height as i64,
                    image.width as i64,
                    3,
                ]))
            })
            .collect()
    }
}

impl Batch {
    /// The images as an `[N, 3, size, size]` normalised float tensor on
    /// `device`, JPEGs decoded by `decoder` there. A JPEG the decoder
    /// refuses is decoded on the CPU instead; one that fails there as well
    /// leaves the batch: its item gets the CPU decoder's error and the rows
    /// of the others are renumbered. The encoded pixels are consumed: the
    /// items' slots index the returned tensor from then on. Pixels that are
    /// not encoded are uploaded as they are.
    pub fn decode_on(&mut self, decoder: &mut dyn JpegDecoder, device: Device) -> Tensor {
        let Pixels::Encoded { .. } = &self.pixels else {
            return self.tensor().to_device(device);
        };
        let images = self.decode_images(decoder, device);
        let mut rows = Vec::with_capacity(images.len());
        let mut images = images.into_iter().map(Some).collect::<Vec<_>>();
        for item in &mut self.items {
            let Ok(slot) = item.slot else { continue };
            match images.get_mut(slot).and_then(Option::take) {
                Some(Ok(image)) => {
                    item.slot = Ok(rows.len());
                    rows.push(image);
                }
                Some(Err(error)) => item.slot = Err(error),
                None => {
                    item.slot = Err(ItemError::Corrupt {
                        format: "image",
                        reason: "no decoded image for this row".into(),
                    })
                }
            }
        }
        if let Pixels::Encoded { images, .. } = &mut self.pixels {
            images.clear();
        }
        self.stack(&rows, device)
    }

    /// [`Batch::tensor`] for encoded pixels: each row decoded on the CPU, a
    /// row that fails left black.
    pub(crate) fn decoded_on_cpu(&self) -> Tensor {
        let images = self.decode_images(&mut CpuJpegDecoder, Device::Cpu);
        let side = self.size as i64;
        let rows: Vec<Tensor> = images
            .into_iter()
            .enumerate()
            .map(|(slot, image)| {
                image.unwrap_or_else(|error| {
                    tracing::error!(slot, %error, "encoded image failed to decode; left black");
                    Tensor::zeros([3, side, side], (Kind::Float, Device::Cpu))
                })
            })
            .collect();
        self.stack(&rows, Device::Cpu)
    }

    /// `[3, size, size]` float pixels (0..=255, not yet rounded) per
    /// encoded image, in slot order.
    fn decode_images(
        &self,
        decoder: &mut dyn JpegDecoder,
        device: Device,
    ) -> Vec<Result<Tensor, ItemError>> {
        let Pixels::Encoded {
            images,
            normalization,
            limits,
        } = &self.pixels
        else {
            return Vec::new();
        };
        let side = self.size;
        let jpegs: Vec<(usize, &[u8], Crop)> = images
            .iter()
            .enumerate()
            .filter_map(|(slot, image)| match image {
                EncodedImage::Jpeg { bytes, crop } => Some((slot, bytes.as_ref(), *crop)),
                EncodedImage::Resized(_) => None,
            })
            .collect();
        let decoded = if jpegs.is_empty() {
            Vec::new()
        } else {
            let bytes: Vec<&[u8]> = jpegs.iter().map(|(_, b, _)| *b).collect();
            decoder.decode(&bytes)
        };
        let mut out: Vec<Option<Result<Tensor, ItemError>>> =
            (0..images.len()).map(|_| None).collect();
        // Pictures of one size under one window (the centre crops of a
        // catalogue of same-sized photos) are cropped and resized together.
        let mut groups: HashMap<Window, Vec<(usize, Tensor)>> = HashMap::new();
        for ((slot, bytes, crop), result) in jpegs.iter().zip(decoded) {
            match result.and_then(|image| checked_picture(image, device)) {
                Ok(image) => {
                    let window = Window::new(crop, &image.size());
                    groups.entry(window).or_default().push((*slot, image));
                }
                Err(reason) => {
                    tracing::debug!(slot, %reason, "device decoder refused a jpeg; decoding it on the cpu");
                    out[*slot] = Some(resized_on_cpu(
                        bytes,
                        *crop,
                        side,
                        normalization,
                        limits,
                        device,
                    ));
                }
            }
        }
        for (window, group) in groups {
            let (slots, pictures): (Vec<usize>, Vec<Tensor>) = group.into_iter().unzip();
            // A random crop is a group of one: a view, not a copy.
            let pictures = match pictures.as_slice() {
                [one] => one.unsqueeze(0),
                many => Tensor::stack(many, 0),
            };
            let resized = window.crop_resize(&pictures, side);
            for (index, slot) in slots.into_iter().enumerate() {
                out[slot] = Some(Ok(resized.get(index as i64)));
            }
        }
        for (slot, image) in images.iter().enumerate() {
            if let EncodedImage::Resized(bytes) = image {
                out[slot] = Some(Ok(bytes_to_device(bytes, side, device)));
            }
        }
        out.into_iter()
            .map(|image| {
                image.unwrap_or_else(|| {
                    Err(ItemError::Corrupt {
                        format: "jpeg",
                        reason: "the decoder returned fewer images than it was given".into(),
                    })
                })
            })
            .collect()
    }

    fn stack(&self, rows: &[Tensor], device: Device) -> Tensor {
        let side = self.size as i64;
        let normalization = match &self.pixels {
            Pixels::Encoded { normalization, .. } | Pixels::Bytes { normalization, .. } => {
                *normalization
            }
            Pixels::Normalized(_) => Normalization::IMAGENET,
        };
        if rows.is_empty() {
            return Tensor::zeros([0, 3, side, side], (Kind::Float, device));
        }
        // Rounded once for the whole batch (the CPU pipeline's bytes are
        // whole values; rows resized on the CPU already are): one launch
        // instead of one per random crop.
        let rows = Tensor::stack(rows, 0).round().clamp(0.0, 255.0);
        normalize(&rows, &normalization)
    }
}

/// A decoder's output checked for the shape it promised, on `device`.
fn checked_picture(image: Tensor, device: Device) -> Result<Tensor, String> {
    let size = image.size();
    if size.len() != 3 || size[2] != 3 || size[0] == 0 || size[1] == 0 {
        return Err(format!("decoder returned a tensor of shape {size:?}"));
    }
    Ok(image.to_device(device))
}

/// A crop window in whole pixels of a picture of `height`×`width`, and
/// whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Window {
    height: i64,
    width: i64,
    top: i64,
    left: i64,
    rows: i64,
    columns: i64,
    flip: bool,
}

impl Window {
    /// `crop` (drawn from the header's size) on a decoded `[h, w, 3]` picture.
    fn new(crop: &Crop, size: &[i64]) -> Self {
        let (height, width) = (size[0], size[1]);
        let rows = (crop.height.round() as i64).clamp(1, height);
        let columns = (crop.width.round() as i64).clamp(1, width);
        Self {
            height,
            width,
            top: (crop.top.round() as i64).clamp(0, height - rows),
            left: (crop.left.round() as i64).clamp(0, width - columns),
            rows,
            columns,
            flip: crop.flip,
        }
    }

    /// `[n, height, width, 3]` bytes to `[n, 3, side, side]` floats: the
    /// window resized with the antialiased bilinear filter the CPU pipeline
    /// uses (rounded later, in [`Batch::stack`]).
    fn crop_resize(&self, pictures: &Tensor, side: usize) -> Tensor {
        let side = side as i64;
        let resized = pictures
            .narrow(1, self.top, self.rows)
            .narrow(2, self.left, self.columns)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float)
            .internal_upsample_bilinear2d_aa([side, side], false, None, None);
        if self.flip {
            resized.flip([3])
        } else {
            resized
        }
    }
}

/// The CPU pipeline's own decode and resize, for what a device decoder
/// refused: at a reduced DCT scale where it can, the window (drawn for the
/// whole picture) scaled to match.
fn resized_on_cpu(
    bytes: &[u8],
    crop: Crop,
    side: usize,
    normalization: &Normalization,
    limits: &DecodeLimits,
    device: Device,
) -> Result<Tensor, ItemError> {
    let mut transformer = Transformer::new(side, Augment::CenterCrop, *normalization);
    let full = crate::jpeg_header(bytes).map(|h| (h.width as f64, h.height as f64));
    let (image, crop) = decode_for_crop(bytes, side as u32, limits, side, |w, h| match full {
        Some((full_width, full_height)) => {
            let (x, y) = (w as f64 / full_width, h as f64 / full_height);
            Crop {
                left: crop.left * x,
                top: crop.top * y,
                width: crop.width * x,
                height: crop.height * y,
                ..crop
            }
        }
        None => crop,
    })?;
    let mut resized = vec![0u8; 3 * side * side];
    transformer
        .apply_bytes(&image, crop, &mut resized)
        .map_err(|reason| ItemError::Corrupt {
            format: "image",
            reason,
        })?;
    Ok(bytes_to_device(&resized, side, device))
}

fn bytes_to_device(bytes: &[u8], side: usize, device: Device) -> Tensor {
    let side = side as i64;
    Tensor::from_slice(bytes)
        .view([3, side, side])
        .to_device(device)
        .to_kind(Kind::Float)
}
