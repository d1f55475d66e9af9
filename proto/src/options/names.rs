//! The named choices of a job's options: each spelled once here, parsed with
//! `FromStr`, printed with `Display`, stored by serde under the same name,
//! and offered as the CLI's possible values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is none of an option's choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not {what}; use one of {}", .choices.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub choices: Vec<&'static str>,
}

/// Defines an enum of named choices with its one table of names.
macro_rules! named_choices {
    (
        $(#[$meta:meta])*
        $name:ident ($what:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$variant_meta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every choice, in the order the help lists them.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name users type and serde stores.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(given: &str) -> Result<Self, UnknownName> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|choice| choice.name() == given)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        given: given.to_string(),
                        choices: Self::ALL.iter().map(|c| c.name()).collect(),
                    })
            }
        }

        #[cfg(feature = "cli")]
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

named_choices! {
    /// What a model learns: one attribute, all of them pooled on one
    /// backbone, or captions.
    Task ("a model type") {
        Color = "color",
        Brand = "brand",
        Category = "category",
        Pool = "pool",
        Caption = "caption",
    }
}

impl Task {
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

named_choices! {
    /// The labels atelier learns from a catalogue: the attributes of the
    /// classifier heads and the captioner's text. Each is read from the
    /// column of its name unless `--label-column` maps it to another.
    Label ("a label") {
        Color = "color",
        Brand = "brand",
        Category = "category",
        Caption = "caption",
    }
}

named_choices! {
    /// The ResNet backbone.
    Arch ("a backbone architecture") {
        Resnet18 = "resnet18",
        Resnet34 = "resnet34",
        Resnet50 = "resnet50",
    }
}

impl Arch {
    /// Width of the pooled features before the classifier.
    pub fn feature_dim(self) -> i64 {
        match self {
            Self::Resnet18 | Self::Resnet34 => 512,
            Self::Resnet50 => 2048,
        }
    }
}

named_choices! {
    /// The update rule (the same rules as torch.optim).
    OptimizerKind ("an optimizer") {
        Sgd = "sgd",
        Adam = "adam",
        Adamw = "adamw",
    }
}

named_choices! {
    /// How the learning rate moves over the run.
    ScheduleKind ("a learning-rate schedule") {
        Constant = "constant",
        Cosine = "cosine",
        /// Multiplied by `gamma` every `step_every` steps.
        Step = "step",
        /// Linear warm-up over the first 30% then cosine annealing (as
        /// torch's OneCycleLR).
        Onecycle = "onecycle",
    }
}

named_choices! {
    /// How a photo is fitted to the model's square input, the same in
    /// training (where random crops are drawn from the fitted frame),
    /// evaluation and tagging; a checkpoint records it.
    Framing ("a framing") {
        /// The largest centred square: a portrait photo loses its top and
        /// bottom.
        CenterCrop = "center-crop",
        /// The whole photo, resized to the square: nothing is cut off, and
        /// the product is stretched sideways a little.
        Squash = "squash",
    }
}

named_choices! {
    /// How a tag output stores each item's embedding.
    EmbeddingPrecision ("an embedding precision") {
        Float32 = "float32",
        /// Half the bytes; cosine similarities agree to about 1e-3.
        Float16 = "float16",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_choice_and_serde_agrees() {
        for &task in Task::ALL {
            assert_eq!(task.to_string().parse::<Task>(), Ok(task));
            assert_eq!(
                serde_json::to_string(&task).unwrap(),
                format!("\"{}\"", task.name())
            );
        }
        for &arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>(), Ok(arch));
        }
        for &kind in OptimizerKind::ALL {
            assert_eq!(kind.name().parse::<OptimizerKind>(), Ok(kind));
        }
        for &kind in ScheduleKind::ALL {
            assert_eq!(kind.name().parse::<ScheduleKind>(), Ok(kind));
        }
    }

    #[test]
    fn an_unknown_name_is_refused_naming_the_option_and_the_choices() {
        let error = "lion".parse::<OptimizerKind>().unwrap_err().to_string();
        assert_eq!(
            error,
            "\"lion\" is not an optimizer; use one of sgd, adam, adamw"
        );
    }
}
