//! The vocabulary of the synthetic catalogue: what a product can be.

/// Garment colours with the sRGB value they are dyed in.
pub const COLORS: &[(&str, [u8; 3])] = &[
    ("black", [28, 28, 32]),
    ("white", [246, 246, 242]),
    ("grey", [128, 128, 132]),
    ("red", [204, 32, 38]),
    ("orange", [240, 128, 24]),
    ("yellow", [246, 214, 40]),
    ("green", [38, 150, 64]),
    ("blue", [44, 104, 214]),
    ("navy", [22, 34, 92]),
    ("purple", [122, 52, 164]),
    ("pink", [246, 142, 184]),
    ("brown", [118, 74, 38]),
];

/// Brands; each one prints its own logo glyph on the product.
pub const BRANDS: &[(&str, Glyph)] = &[
    ("Norda", Glyph::Disc),
    ("Velour", Glyph::Triangle),
    ("Kestrel", Glyph::Cross),
    ("Lumen", Glyph::Star),
    ("Brisa", Glyph::Diamond),
    ("Okto", Glyph::Ring),
    ("Tessa", Glyph::Bars),
    ("Arvo", Glyph::Chevron),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glyph {
    Disc,
    Triangle,
    Cross,
    Star,
    Diamond,
    Ring,
    Bars,
    Chevron,
}

/// Clothing types, each drawn as its own silhouette.
pub const CATEGORIES: &[Category] = &[
    Category::TShirt,
    Category::Shirt,
    Category::Hoodie,
    Category::Dress,
    Category::Skirt,
    Category::Trousers,
    Category::Shorts,
    Category::Sneakers,
    Category::Handbag,
    Category::Cap,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    TShirt,
    Shirt,
    Hoodie,
    Dress,
    Skirt,
    Trousers,
    Shorts,
    Sneakers,
    Handbag,
    Cap,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::TShirt => "t-shirt",
            Category::Shirt => "shirt",
            Category::Hoodie => "hoodie",
            Category::Dress => "dress",
            Category::Skirt => "skirt",
            Category::Trousers => "trousers",
            Category::Shorts => "shorts",
            Category::Sneakers => "sneakers",
            Category::Handbag => "handbag",
            Category::Cap => "cap",
        }
    }
}

pub const PATTERNS: &[Pattern] = &[
    Pattern::Plain,
    Pattern::Striped,
    Pattern::Dotted,
    Pattern::Checked,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Plain,
    Striped,
    Dotted,
    Checked,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Plain => "plain",
            Pattern::Striped => "striped",
            Pattern::Dotted => "dotted",
            Pattern::Checked => "checked",
        }
    }
}

/// Everything that defines one product; the labels and caption derive from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    pub color: usize,
    pub brand: usize,
    pub category: Category,
    pub pattern: Pattern,
}

impl Product {
    pub fn color_name(&self) -> &'static str {
        COLORS[self.color].0
    }

    pub fn brand_name(&self) -> &'static str {
        BRANDS[self.brand].0
    }

    /// "red striped t-shirt by Norda"; plain products omit the pattern.
    pub fn caption(&self) -> String {
        let pattern = match self.pattern {
            Pattern::Plain => String::new(),
            other => format!("{} ", other.name()),
        };
        format!(
            "{} {pattern}{} by {}",
            self.color_name(),
            self.category.name(),
            self.brand_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_distinct_attributes() {
        assert!(COLORS.len() >= 10 && BRANDS.len() >= 8 && CATEGORIES.len() >= 8);
        let mut glyphs: Vec<_> = BRANDS.iter().map(|(_, g)| *g).collect();
        glyphs.dedup();
        assert_eq!(glyphs.len(), BRANDS.len(), "each brand has its own glyph");
    }

    #[test]
    fn captions_compose_attributes() {
        let product = Product {
            color: 3,
            brand: 0,
            category: Category::TShirt,
            pattern: Pattern::Striped,
        };
        assert_eq!(product.caption(), "red striped t-shirt by Norda");
        let plain = Product {
            pattern: Pattern::Plain,
            ..product
        };
        assert_eq!(plain.caption(), "red t-shirt by Norda");
    }
}
