use serde::{Deserialize, Serialize};

/// What a model learns: one attribute, all of them pooled, or captions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Color,
    Brand,
    Category,
    Pool,
    Caption,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Self::Color => "color",
            Self::Brand => "brand",
            Self::Category => "category",
            Self::Pool => "pool",
            Self::Caption => "caption",
        }
    }

    /// The label columns a classifier for this task predicts.
    pub fn attributes(self) -> &'static [&'static str] {
        match self {
            Self::Color => &["color"],
            Self::Brand => &["brand"],
            Self::Category => &["category"],
            Self::Pool => &["color", "brand", "category"],
            Self::Caption => &[],
        }
    }
}
