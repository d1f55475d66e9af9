//! What a JPEG's markers say before any decoding: enough to decide whether a
//! GPU decoder can take it, without libjpeg.

/// The frame header of a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: usize,
    pub height: usize,
    pub components: u8,
    /// Baseline or extended sequential Huffman coding (SOF0/SOF1): what
    /// nvJPEG's hardware and hybrid decoders take.
    pub sequential: bool,
    /// The data ends with an EOI marker. A truncated file does not, and the
    /// CPU decoder, which reports truncation, should see it instead.
    pub complete: bool,
}

impl JpegHeader {
    /// Whether a GPU decoder should take it: a whole, sequential, colour JPEG.
    pub fn suits_device(&self) -> bool {
        self.sequential && self.complete && self.components == 3
    }
}

/// Reads the markers up to the frame header; `None` if `bytes` is not a JPEG
/// or its markers are malformed before the frame header.
pub fn jpeg_header(bytes: &[u8]) -> Option<JpegHeader> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return None;
    }
    let mut at = 2;
    loop {
        // Markers may be padded with any number of 0xFF bytes.
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if bytes.get(at) != Some(&0xFF) {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        at += 2;
        // Markers without a length: TEM and RSTn.
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            // EOI or the scan data before any frame header.
            return None;
        }
        let length = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
        if length < 2 {
            return None;
        }
        if is_frame_header(marker) {
            let frame = bytes.get(at + 2..at + length)?;
            if frame.len() < 6 {
                return None;
            }
            return Some(JpegHeader {
                height: usize::from(u16::from_be_bytes([frame[1], frame[2]])),
                width: usize::from(u16::from_be_bytes([frame[3], frame[4]])),
                components: frame[5],
                sequential: marker == 0xC0 || marker == 0xC1,
                complete: bytes.ends_with(&[0xFF, 0xD9]),
            });
        }
        at += length;
    }
}

/// SOF0..SOF15 less DHT (C4), JPG (C8) and DAC (CC), which share the range.
fn is_frame_header(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, 90])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// The frame-header marker's offset in `bytes`.
    fn frame_marker(bytes: &[u8]) -> usize {
        (0..bytes.len() - 1)
            .find(|&i| bytes[i] == 0xFF && is_frame_header(bytes[i + 1]))
            .unwrap()
    }

    #[test]
    fn a_baseline_colour_jpeg_suits_the_device() {
        let header = jpeg_header(&jpeg(48, 20)).unwrap();
        assert_eq!(
            (header.width, header.height, header.components),
            (48, 20, 3)
        );
        assert!(header.sequential && header.complete && header.suits_device());
    }

    #[test]
    fn progressive_truncated_and_grey_jpegs_stay_on_the_cpu() {
        let bytes = jpeg(32, 32);
        let mut progressive = bytes.clone();
        progressive[frame_marker(&bytes) + 1] = 0xC2;
        let header = jpeg_header(&progressive).unwrap();
        assert!(!header.sequential && !header.suits_device());

        let truncated = &bytes[..bytes.len() - 10];
        let header = jpeg_header(truncated).unwrap();
        assert!(!header.complete && !header.suits_device());

        let grey = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([x as u8 * 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        grey.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        let header = jpeg_header(out.get_ref()).unwrap();
        assert_eq!((header.width, header.height, header.components), (16, 8, 1));
        assert!(!header.suits_device());
    }

    #[test]
    fn what_is_not_a_jpeg_has_no_header() {
        assert_eq!(jpeg_header(b""), None);
        assert_eq!(jpeg_header(b"\x89PNG\r\n\x1a\n0000"), None);
        let bytes = jpeg(8, 8);
        // Cut inside the markers, before the frame header ends.
        assert_eq!(jpeg_header(&bytes[..frame_marker(&bytes) + 6]), None);
        // A marker where a length should be.
        assert_eq!(jpeg_header(&[0xFF, 0xD8, 0x12, 0x34, 0x00]), None);
    }
}
