//! Scanline filling of polygon outlines into a label mask.

/// A closed outline; several outlines of one shape fill by the even-odd rule,
/// so an inner outline cuts a hole (a ring, a bag handle).
pub type Contour = Vec<[f32; 2]>;

pub fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32, from: f32, to: f32, steps: usize) -> Contour {
    (0..=steps)
        .map(|i| {
            let t = from + (to - from) * i as f32 / steps as f32;
            [cx + rx * t.cos(), cy + ry * t.sin()]
        })
        .collect()
}

pub fn rect(x0: f32, y0: f32, x1: f32, y1: f32) -> Contour {
    vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
}

/// A one-byte-per-pixel mask of region labels (0 = background).
#[derive(Debug)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u8>,
}

impl Mask {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            labels: vec![0; width * height],
        }
    }

    /// Fills the shape made of `contours` (pixel coordinates) with `label`.
    pub fn fill(&mut self, contours: &[Contour], label: u8) {
        let (mut min_y, mut max_y) = (f32::MAX, f32::MIN);
        for point in contours.iter().flatten() {
            min_y = min_y.min(point[1]);
            max_y = max_y.max(point[1]);
        }
        if min_y > max_y {
            return;
        }
        let first = (min_y.floor().max(0.0)) as usize;
        let last = (max_y.ceil().min(self.height as f32 - 1.0)).max(0.0) as usize;
        let mut crossings: Vec<f32> = Vec::with_capacity(16);
        for y in first..=last.min(self.height.saturating_sub(1)) {
            let sample = y as f32 + 0.5;
            crossings.clear();
            for contour in contours {
                let n = contour.len();
                for i in 0..n {
                    let [x0, y0] = contour[i];
                    let [x1, y1] = contour[(i + 1) % n];
                    if (y0 <= sample) != (y1 <= sample) {
                        crossings.push(x0 + (sample - y0) / (y1 - y0) * (x1 - x0));
                    }
                }
            }
            crossings.sort_by(f32::total_cmp);
            let row = &mut self.labels[y * self.width..(y + 1) * self.width];
            for pair in crossings.chunks_exact(2) {
                let start = (pair[0] - 0.5).ceil().max(0.0) as usize;
                let end = ((pair[1] - 0.5).floor() + 1.0).clamp(0.0, self.width as f32) as usize;
                if start < end {
                    row[start..end].fill(label);
                }
            }
        }
    }

    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.labels[y * self.width + x]
    }

    /// Whether a labelled pixel borders the background (for drawing outlines).
    pub fn is_edge(&self, x: usize, y: usize) -> bool {
        let w = self.width;
        let at = |x: usize, y: usize| self.labels[y * w + x];
        at(x, y) != 0
            && (x == 0
                || y == 0
                || x + 1 == w
                || y + 1 == self.height
                || at(x - 1, y) == 0
                || at(x + 1, y) == 0
                || at(x, y - 1) == 0
                || at(x, y + 1) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_a_rectangle_exactly() {
        let mut mask = Mask::new(10, 10);
        mask.fill(&[rect(2.0, 3.0, 6.0, 8.0)], 1);
        let filled = mask.labels.iter().filter(|&&l| l == 1).count();
        assert_eq!(filled, 4 * 5);
        assert_eq!(mask.get(2, 3), 1);
        assert_eq!(mask.get(6, 3), 0);
    }

    #[test]
    fn inner_contour_cuts_a_hole() {
        let mut mask = Mask::new(40, 40);
        let tau = std::f32::consts::TAU;
        mask.fill(
            &[
                ellipse(20.0, 20.0, 15.0, 15.0, 0.0, tau, 64),
                ellipse(20.0, 20.0, 8.0, 8.0, 0.0, tau, 64),
            ],
            1,
        );
        assert_eq!(mask.get(20, 20), 0, "centre is a hole");
        assert_eq!(mask.get(20, 8), 1, "ring is filled");
        assert!(mask.is_edge(20, 5));
    }
}
