//! ResNet-18/34/50 with torchvision's parameter names and layout, so that
//! torchvision state dicts load as they are (minus `num_batches_tracked`).

use atelier_proto::Arch;
use tch::nn::{self, ConvConfig, Init, ModuleT};
use tch::Tensor;

/// Residual blocks per stage.
fn stage_blocks(arch: Arch) -> [i64; 4] {
    match arch {
        Arch::Resnet18 => [2, 2, 2, 2],
        Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
    }
}

/// Whether the blocks are bottlenecks (1x1, 3x3, 1x1) rather than basic (3x3, 3x3).
fn uses_bottlenecks(arch: Arch) -> bool {
    matches!(arch, Arch::Resnet50)
}

/// torchvision initialises convolutions with Kaiming normal over fan-out.
fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let fan_out = (c_out * k * k) as f64;
    let config = ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_out).sqrt(),
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, config)
}

/// torchvision's batch-norm epsilon; folding needs it, and tch keeps its own copy private.
const BN_EPS: f64 = 1e-5;

fn batch_norm(p: nn::Path, c: i64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        eps: BN_EPS,
        ws_init: Init::Const(1.0),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, config)
}

/// A convolution and the batch norm after it.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    fn new(conv: nn::Conv2D, bn: nn::BatchNorm) -> Self {
        Self { conv, bn }
    }

    fn forward(&self, xs: &Tensor, train: bool, folded: bool) -> Tensor {
        let ys = xs.apply(&self.conv);
        if folded {
            return ys;
        }
        // One value per channel (a training batch of one item whose maps are
        // down to 1x1: small images, an epoch's last batch): its unbiased
        // variance is 0/0, which would make the running variance NaN for
        // good and every later prediction NaN (PyTorch refuses such a batch).
        // It is normalised with the running statistics instead, as in
        // evaluation, so the step still counts and a gang's ranks stay in step.
        let values_per_channel = ys.numel() / ys.size().get(1).map_or(1, |&c| c.max(1) as usize);
        ys.apply_t(&self.bn, train && values_per_channel > 1)
    }

    /// Scales the convolution's weights in place (their storage and layout
    /// stay) and gives it the batch norm's shift as a bias.
    fn fold(&mut self) {
        let bn = &self.bn;
        let (Some(gamma), Some(beta)) = (&bn.ws, &bn.bs) else {
            return;
        };
        tch::no_grad(|| {
            let scale = gamma / (&bn.running_var + BN_EPS).sqrt();
            let shift = beta - &bn.running_mean * &scale;
            let _ = self.conv.ws.g_mul_(&scale.view([-1, 1, 1, 1]));
            self.conv.bs = Some(shift);
        });
    }

    fn cast_bias(&mut self, kind: tch::Kind) {
        if let Some(bias) = &self.conv.bs {
            self.conv.bs = Some(bias.to_kind(kind));
        }
    }
}

#[derive(Debug)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn basic(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let convs = vec![
            ConvBn::new(
                conv(p / "conv1", c_in, c_out, 3, stride, 1),
                batch_norm(p / "bn1", c_out),
            ),
            ConvBn::new(
                conv(p / "conv2", c_out, c_out, 3, 1, 1),
                batch_norm(p / "bn2", c_out),
            ),
        ];
        Self {
            convs,
            downsample: Self::downsample(p, c_in, c_out, stride),
        }
    }

    fn bottleneck(p: &nn::Path, c_in: i64, width: i64, stride: i64) -> Self {
        let c_out = width * 4;
        // torchvision (v1.5) puts the stride on the 3x3 convolution.
        let convs = vec![
            ConvBn::new(
                conv(p / "conv1", c_in, width, 1, 1, 0),
                batch_norm(p / "bn1", width),
            ),
            ConvBn::new(
                conv(p / "conv2", width, width, 3, stride, 1),
                batch_norm(p / "bn2", width),
            ),
            ConvBn::new(
                conv(p / "conv3", width, c_out, 1, 1, 0),
                batch_norm(p / "bn3", c_out),
            ),
        ];
        Self {
            convs,
            downsample: Self::downsample(p, c_in, c_out, stride),
        }
    }

    fn downsample(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Option<ConvBn> {
        (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            ConvBn::new(
                conv(&d / "0", c_in, c_out, 1, stride, 0),
                batch_norm(&d / "1", c_out),
            )
        })
    }

    fn conv_bns(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        self.convs.iter_mut().chain(self.downsample.as_mut())
    }

    fn forward(&self, xs: &Tensor, train: bool, folded: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut ys = xs.shallow_clone();
        // In place, as torchvision does: no new activation tensors to
        // allocate and fault in (batch-norm backward needs its input only).
        for (i, conv_bn) in self.convs.iter().enumerate() {
            ys = conv_bn.forward(&ys, train, folded);
            if i != last {
                let _ = ys.relu_();
            }
        }
        let identity = match &self.downsample {
            Some(conv_bn) => conv_bn.forward(xs, train, folded),
            None => xs.shallow_clone(),
        };
        let _ = ys.g_add_(&identity);
        let _ = ys.relu_();
        ys
    }
}

/// A ResNet without its final `fc` layer: images in, pooled features out.
#[derive(Debug)]
pub struct ResNet {
    stem: ConvBn,
    layers: Vec<Vec<Block>>,
    /// Batch norms folded into the convolutions: inference only from then on.
    folded: bool,
}

impl ResNet {
    pub fn new(p: &nn::Path, arch: Arch) -> Self {
        let stem = ConvBn::new(conv(p / "conv1", 3, 64, 7, 2, 3), batch_norm(p / "bn1", 64));
        let expansion = if uses_bottlenecks(arch) { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::new();
        for (index, (&count, width)) in stage_blocks(arch)
            .iter()
            .zip([64, 128, 256, 512])
            .enumerate()
        {
            let lp = p / format!("layer{}", index + 1);
            let stride = if index == 0 { 1 } else { 2 };
            let mut blocks = Vec::new();
            for b in 0..count {
                let bp = &lp / b.to_string();
                let s = if b == 0 { stride } else { 1 };
                let block = if uses_bottlenecks(arch) {
                    Block::bottleneck(&bp, c_in, width, s)
                } else {
                    Block::basic(&bp, c_in, width, s)
                };
                c_in = width * expansion;
                blocks.push(block);
            }
            layers.push(blocks);
        }
        Self {
            stem,
            layers,
            folded: false,
        }
    }

    fn conv_bns(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        std::iter::once(&mut self.stem)
            .chain(self.layers.iter_mut().flatten().flat_map(Block::conv_bns))
    }

    /// Folds every batch norm into the convolution before it, as
    /// `torch.jit.optimize_for_inference` does: one pass over each activation
    /// fewer, and one activation tensor fewer alive at a time. The convolution
    /// weights change in place, so the variables no longer hold the trained
    /// model: for models that only infer from here on, never saved or trained.
    pub fn fold_batch_norms(&mut self) {
        if !self.folded {
            self.conv_bns().for_each(ConvBn::fold);
            self.folded = true;
        }
    }

    /// Folded biases live outside the variable store; they follow the weights' kind.
    pub fn cast_folded_biases(&mut self, kind: tch::Kind) {
        self.conv_bns().for_each(|c| c.cast_bias(kind));
    }

    /// `[N, 3, H, W]` normalised images to `[N, feature_dim]` features.
    /// Batch norms run in training mode when `train` is set, unless folded.
    pub fn features(&self, xs: &Tensor, train: bool) -> Tensor {
        let train = train && !self.folded;
        let mut ys = self
            .stem
            .forward(xs, train, self.folded)
            .relu_()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for layer in &self.layers {
            for block in layer {
                ys = block.forward(&ys, train, self.folded);
            }
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features(xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn parameter_names_follow_torchvision() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = ResNet::new(&vs.root(), Arch::Resnet50);
        let vars = vs.variables();
        for name in [
            "conv1.weight",
            "bn1.running_mean",
            "layer1.0.conv3.weight",
            "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_var",
            "layer4.2.bn3.bias",
        ] {
            assert!(vars.contains_key(name), "{name} missing");
        }
        assert_eq!(vars["layer2.0.conv2.weight"].size(), vec![128, 128, 3, 3]);
        // torchvision resnet50 has 25,557,032 parameters; minus fc (2048*1000+1000).
        let params: i64 = vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum();
        assert_eq!(params, 25_557_032 - 2_049_000);
    }

    #[test]
    fn features_have_the_documented_width() {
        for (arch, dim) in [
            (Arch::Resnet18, 512),
            (Arch::Resnet34, 512),
            (Arch::Resnet50, 2048),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = ResNet::new(&vs.root(), arch);
            let xs = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            assert_eq!(net.features(&xs, false).size(), vec![2, dim]);
        }
    }

    #[test]
    fn a_training_batch_of_one_small_image_leaves_the_running_statistics_finite() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), Arch::Resnet18);
        // 32 px: layer 4's maps are 1x1, so one item is one value per channel.
        let one = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert!(bool::try_from(net.features(&one, true).isfinite().all()).unwrap());
        for (name, tensor) in vs.variables() {
            let finite = bool::try_from(tensor.isfinite().all()).unwrap();
            assert!(finite, "{name} is not finite after a batch of one");
        }
        let later = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert!(bool::try_from(net.features(&later, false).isfinite().all()).unwrap());
    }
}
