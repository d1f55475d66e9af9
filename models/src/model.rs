//! A whole model: backbone plus classifier heads or the captioner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::annotator::Annotator;
use crate::error::{ModelError, Result};
use crate::labels::{LabelMap, IGNORE_INDEX};
use atelier_proto::{Arch, Task};

use crate::resnet::ResNet;
use crate::vocab::Vocab;

/// Everything needed to rebuild a model's structure; stored in the checkpoint manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    pub task: Task,
    /// One label map per predicted attribute (classifiers).
    #[serde(default)]
    pub labels: BTreeMap<String, LabelMap>,
    /// The attributes the heads predict, in order (`--targets`, or those of
    /// the task the catalogue labels). Checkpoints from before targets
    /// existed have none: their heads are the task's own.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The caption vocabulary (captioner).
    #[serde(default)]
    pub vocab: Option<Vocab>,
    /// Train the backbone too; otherwise only the heads learn and the backbone
    /// runs frozen (eval-mode batch norm, no gradients), as the research code's
    /// `features(x).detach()`.
    pub finetune: bool,
    #[serde(default = "default_max_caption_len")]
    pub max_caption_len: usize,
}

fn default_max_caption_len() -> usize {
    16
}

impl ModelSpec {
    /// The attributes the classifier heads predict, in order.
    pub fn attributes(&self) -> Vec<&str> {
        if self.targets.is_empty() {
            self.task.attributes().to_vec()
        } else {
            self.targets.iter().map(String::as_str).collect()
        }
    }

    /// Restores lookup tables after deserialising.
    pub fn reindexed(mut self) -> Self {
        self.labels = self
            .labels
            .into_iter()
            .map(|(k, v)| (k, v.reindexed()))
            .collect();
        self.vocab = self.vocab.map(Vocab::reindexed);
        self
    }
}

/// The outputs of one forward pass of a classifier: logits per attribute.
pub type Logits = Vec<(String, Tensor)>;

pub struct Model {
    pub spec: ModelSpec,
    pub vs: nn::VarStore,
    backbone: ResNet,
    heads: Vec<(String, nn::Linear)>,
    annotator: Option<Annotator>,
    /// Element type the backbone computes in (float, or bfloat16 for inference).
    backbone_kind: Kind,
    channels_last: bool,
}

/// The same tensor with channels-last (NHWC) strides; shape and values unchanged.
/// Convolutions on such inputs and weights run oneDNN's and cuDNN's faster
/// NHWC kernels.
pub fn channels_last(tensor: &Tensor) -> Tensor {
    tensor
        .permute([0, 2, 3, 1])
        .contiguous()
        .permute([0, 3, 1, 2])
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Variable names: backbone under `cnn.`, heads under `heads.<attribute>.`,
/// the captioner under `annotator.`.
pub const BACKBONE_PREFIX: &str = "cnn";

impl Model {
    pub fn new(spec: ModelSpec, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let backbone = ResNet::new(&(&root / BACKBONE_PREFIX), spec.arch);
        let feature_dim = spec.arch.feature_dim();
        let mut heads = Vec::new();
        for attribute in spec.attributes() {
            let labels = spec
                .labels
                .get(attribute)
                .ok_or_else(|| ModelError::Spec(format!("no label map for {attribute}")))?;
            let head = nn::linear(
                &root / "heads" / attribute,
                feature_dim,
                labels.len() as i64,
                Default::default(),
            );
            heads.push((attribute.to_string(), head));
        }
        let annotator = match spec.task {
            Task::Caption => {
                let vocab = spec
                    .vocab
                    .as_ref()
                    .ok_or_else(|| ModelError::Spec("a captioner needs a vocabulary".into()))?;
                Some(Annotator::new(
                    &(&root / "annotator"),
                    vocab.len() as i64,
                    feature_dim,
                ))
            }
            _ => None,
        };
        Ok(Self {
            spec,
            vs,
            backbone,
            heads,
            annotator,
            backbone_kind: Kind::Float,
            channels_last: false,
        })
    }

    /// Stores convolution weights channels-last and feeds images that way.
    pub fn use_channels_last(&mut self) {
        for (_, mut var) in self.vs.variables() {
            if var.dim() == 4 {
                let converted = channels_last(&var);
                tch::no_grad(|| var.set_data(&converted));
            }
        }
        self.channels_last = true;
    }

    /// Runs the backbone in bfloat16 for inference; heads and the captioner
    /// stay in float, on float features.
    pub fn use_bf16_backbone(&mut self) {
        for (name, mut var) in self.vs.variables() {
            if name.starts_with(BACKBONE_PREFIX) && var.is_floating_point() {
                let converted = var.to_kind(Kind::BFloat16);
                tch::no_grad(|| var.set_data(&converted));
            }
        }
        self.backbone.cast_folded_biases(Kind::BFloat16);
        self.backbone_kind = Kind::BFloat16;
    }

    /// Folds the backbone's batch norms into its convolutions for inference
    /// (see [`ResNet::fold_batch_norms`]); the model must not be trained or
    /// saved afterwards. Call after loading weights and before
    /// [`Model::use_bf16_backbone`], so that the folding is done in float.
    pub fn fold_batch_norms(&mut self) {
        self.backbone.fold_batch_norms();
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Image features; frozen (no gradient, eval batch norm) unless finetuning.
    pub fn features(&self, images: &Tensor, train: bool) -> Tensor {
        let mut images = images.to_kind(self.backbone_kind);
        if self.channels_last {
            images = channels_last(&images);
        }
        let features = if self.spec.finetune {
            self.backbone.features(&images, train)
        } else {
            tch::no_grad(|| self.backbone.features(&images, false))
        };
        features.to_kind(Kind::Float)
    }

    pub fn logits(&self, features: &Tensor) -> Logits {
        self.heads
            .iter()
            .map(|(name, head)| (name.clone(), head.forward(features)))
            .collect()
    }

    /// Summed cross-entropy over attributes; targets are `[N]` per attribute with
    /// [`IGNORE_INDEX`] for missing labels. Returns the loss and per-attribute
    /// (correct, counted) pairs for accuracy, which are read back to the host.
    pub fn classification_loss(
        &self,
        logits: &Logits,
        targets: &BTreeMap<String, Tensor>,
    ) -> (Tensor, Vec<(i64, i64)>) {
        let accuracy = logits
            .iter()
            .filter_map(|(name, logit)| {
                let target = targets.get(name)?;
                let counted = target.ne(IGNORE_INDEX);
                let n = counted.sum(Kind::Int64).int64_value(&[]);
                let correct = logit
                    .argmax(-1, false)
                    .eq_tensor(target)
                    .logical_and(&counted)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                Some((correct, n))
            })
            .collect();
        (self.training_loss(logits, targets, 0.0), accuracy)
    }

    /// The loss of [`Model::classification_loss`] alone, with nothing read
    /// back to the host: a training step on a GPU then never waits for the
    /// device, and the host queues the next step while this one runs.
    /// `label_smoothing` spreads that share of each target over every class.
    pub fn training_loss(
        &self,
        logits: &Logits,
        targets: &BTreeMap<String, Tensor>,
        label_smoothing: f64,
    ) -> Tensor {
        logits
            .iter()
            .filter_map(|(name, logit)| {
                Some(attribute_loss(logit, targets.get(name)?, label_smoothing))
            })
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, self.device())))
    }

    pub fn annotator(&self) -> Option<&Annotator> {
        self.annotator.as_ref()
    }

    /// Trainable variables, by name, in a stable order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, t)| {
                t.requires_grad() && (self.spec.finetune || !name.starts_with(BACKBONE_PREFIX))
            })
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Every variable (parameters and batch-norm buffers), by name, sorted.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Copies `tensors` into the variables of the same name. With `prefix`,
    /// tensor `x` is loaded into variable `prefix.x` (backbone weights).
    /// Returns how many variables were loaded; every name of `tensors` outside
    /// `skip` must exist with the right shape.
    pub fn load(
        &mut self,
        tensors: &[(String, Tensor)],
        prefix: Option<&str>,
        skip: &[&str],
    ) -> Result<usize> {
        let mut vars = self.vs.variables();
        let mut loaded = 0;
        for (name, tensor) in tensors {
            loaded += usize::from(load_variable(&mut vars, name, tensor, prefix, skip)?);
        }
        Ok(loaded)
    }

    /// [`Model::load`] straight from a safetensors buffer, one tensor at a
    /// time: besides the buffer, one tensor's copy is in memory at once, not
    /// the whole model's.
    pub fn load_safetensors(&mut self, bytes: &[u8]) -> Result<usize> {
        let mut vars = self.vs.variables();
        let mut loaded = 0;
        crate::checkpoint::each_tensor(bytes, |name, tensor| {
            loaded += usize::from(load_variable(&mut vars, &name, &tensor, None, &[])?);
            Ok(())
        })?;
        Ok(loaded)
    }
}

/// Mean cross-entropy over the labelled items of one attribute, as the sum
/// over the count of labels on the device: zero when nothing is labelled
/// (where a mean would be NaN), without the host having to look first.
fn attribute_loss(logit: &Tensor, target: &Tensor, label_smoothing: f64) -> Tensor {
    let labelled = target.ne(IGNORE_INDEX).sum(Kind::Float).clamp_min(1.0);
    logit.cross_entropy_loss::<Tensor>(
        target,
        None,
        tch::Reduction::Sum,
        IGNORE_INDEX,
        label_smoothing,
    ) / labelled
}

/// Copies `tensor` into its variable; false when `skip` leaves it out.
fn load_variable(
    vars: &mut std::collections::HashMap<String, Tensor>,
    name: &str,
    tensor: &Tensor,
    prefix: Option<&str>,
    skip: &[&str],
) -> Result<bool> {
    if skip
        .iter()
        .any(|s| name.starts_with(s) || name.ends_with(s))
    {
        return Ok(false);
    }
    let full = match prefix {
        Some(prefix) => format!("{prefix}.{name}"),
        None => name.to_string(),
    };
    let var = vars.get_mut(&full).ok_or_else(|| {
        ModelError::Weights(format!("unexpected tensor {name:?} (no variable {full:?})"))
    })?;
    if var.size() != tensor.size() {
        return Err(ModelError::Weights(format!(
            "{full}: shape {:?} in the file, {:?} in the model",
            tensor.size(),
            var.size()
        )));
    }
    tch::no_grad(|| var.f_copy_(&tensor.to_kind(var.kind())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_model() -> Model {
        let map =
            |names: &[&str]| LabelMap::from_classes(names.iter().map(|s| s.to_string()).collect());
        let spec = ModelSpec {
            arch: Arch::Resnet18,
            task: Task::Pool,
            labels: [
                ("color".to_string(), map(&["<unknown>", "red", "blue"])),
                ("brand".to_string(), map(&["<unknown>", "Norda"])),
                (
                    "category".to_string(),
                    map(&["<unknown>", "cap", "dress", "skirt"]),
                ),
            ]
            .into_iter()
            .collect(),
            targets: Vec::new(),
            vocab: None,
            finetune: true,
            max_caption_len: 16,
        };
        Model::new(spec, Device::Cpu).unwrap()
    }

    fn twin(model: &Model) -> Model {
        let mut other = pool_model();
        other.load(&model.state(), None, &[]).unwrap();
        other
    }

    #[test]
    fn channels_last_gives_the_same_features() {
        let model = pool_model();
        let mut nhwc = twin(&model);
        nhwc.use_channels_last();
        let images = Tensor::randn([3, 3, 64, 64], (Kind::Float, Device::Cpu));
        let a = model.features(&images, false);
        let b = nhwc.features(&images, false);
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "features differ by {diff}");
        // Saved weights come out in the ordinary layout.
        let back = twin(&nhwc);
        let diff = (back.features(&images, false) - a)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-4, "reloaded features differ by {diff}");
    }

    /// Batch-norm statistics and affine parameters far from the identity, so
    /// that folding them has something to get wrong.
    fn with_trained_looking_batch_norms(model: &Model) {
        tch::manual_seed(7);
        for (name, mut var) in model.vs.variables() {
            let fill = if name.ends_with("running_var") {
                Tensor::rand_like(&var) + 0.5
            } else if name.contains(".bn") || name.contains("downsample.1") {
                Tensor::randn_like(&var) * 0.5 + name.ends_with("weight") as i64 as f64
            } else {
                continue;
            };
            tch::no_grad(|| var.copy_(&fill));
        }
    }

    #[test]
    fn folded_batch_norms_give_the_same_features() {
        let model = pool_model();
        with_trained_looking_batch_norms(&model);
        let mut folded = twin(&model);
        folded.fold_batch_norms();
        let images = Tensor::randn([3, 3, 64, 64], (Kind::Float, Device::Cpu));
        let a = model.features(&images, false);
        let scale = a.abs().max().double_value(&[]);
        assert!(scale > 1e-3, "features vanish: {scale}");
        let diff = (&a - folded.features(&images, false))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-4 * scale.max(1.0), "features differ by {diff}");
        // Folded, then channels-last and bf16, as `tag --channels-last --bf16` loads.
        folded.use_channels_last();
        folded.use_bf16_backbone();
        let b = folded.features(&images, false);
        assert_eq!(b.kind(), Kind::Float);
        let diff = (&a - &b).abs().max().double_value(&[]) / scale;
        assert!(diff < 0.1, "relative difference {diff}");
    }

    #[test]
    fn weights_load_from_a_safetensors_buffer() {
        let model = pool_model();
        with_trained_looking_batch_norms(&model);
        let bytes = crate::checkpoint::tensors_to_bytes(&model.state()).unwrap();
        let mut other = pool_model();
        let loaded = other.load_safetensors(&bytes).unwrap();
        assert_eq!(loaded, model.state().len());
        for ((name, a), (_, b)) in model.state().iter().zip(other.state()) {
            assert!(a.equal(&b), "{name} differs after loading");
        }
        let error = other
            .load_safetensors(&bytes[..bytes.len() / 2])
            .unwrap_err();
        assert!(error.to_string().contains("safetensors"), "{error}");
    }

    #[test]
    fn a_bf16_backbone_stays_close_and_heads_get_float() {
        let model = pool_model();
        let mut half = twin(&model);
        half.use_bf16_backbone();
        let images = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let a = model.features(&images, false);
        let b = half.features(&images, false);
        assert_eq!(b.kind(), Kind::Float);
        let scale = a.abs().max().double_value(&[]).max(1e-6);
        let diff = (&a - &b).abs().max().double_value(&[]) / scale;
        assert!(diff < 0.1, "relative difference {diff}");
        let logits = half.logits(&b);
        assert_eq!(logits.len(), 3);
        assert_eq!(logits[2].1.size(), vec![2, 4]);
    }

    #[test]
    fn the_pool_loss_counts_only_labelled_items() {
        let model = pool_model();
        let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let logits = model.logits(&model.features(&images, true));
        let targets: BTreeMap<String, Tensor> = [
            (
                "color".to_string(),
                Tensor::from_slice(&[1i64, 2, IGNORE_INDEX, 0]),
            ),
            ("brand".to_string(), Tensor::from_slice(&[IGNORE_INDEX; 4])),
            ("category".to_string(), Tensor::from_slice(&[1i64, 2, 3, 3])),
        ]
        .into_iter()
        .collect();
        let (loss, accuracy) = model.classification_loss(&logits, &targets);
        let counted: Vec<i64> = accuracy.iter().map(|(_, n)| *n).collect();
        assert_eq!(counted, vec![3, 0, 4]);
        // The mean over labelled items per attribute, summed; brand has none
        // and adds nothing (a plain mean over zero items would be NaN).
        let mean = |name: &str| {
            let (_, logit) = logits.iter().find(|(n, _)| n == name).unwrap();
            logit
                .cross_entropy_loss::<Tensor>(
                    &targets[name],
                    None,
                    tch::Reduction::Mean,
                    IGNORE_INDEX,
                    0.0,
                )
                .double_value(&[])
        };
        let expected = mean("color") + mean("category");
        let got = loss.double_value(&[]);
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn label_smoothing_spreads_that_share_of_the_target_over_every_class() {
        let logit = Tensor::from_slice(&[2.0f32, 0.0, -1.0]).view([1, 3]);
        let target = Tensor::from_slice(&[0i64]);
        let log_p: Vec<f32> = Vec::try_from(logit.log_softmax(-1, Kind::Float).view([-1])).unwrap();
        let plain = attribute_loss(&logit, &target, 0.0).double_value(&[]);
        let smoothed = attribute_loss(&logit, &target, 0.3).double_value(&[]);
        let mean_over_classes = -(log_p.iter().sum::<f32>() as f64) / 3.0;
        assert!((plain - -(log_p[0] as f64)).abs() < 1e-6, "{plain}");
        let expected = 0.7 * plain + 0.3 * mean_over_classes;
        assert!(
            (smoothed - expected).abs() < 1e-6,
            "{smoothed} against {expected}"
        );
        assert!(
            smoothed > plain,
            "a confident right answer costs more when smoothed"
        );
    }
}
