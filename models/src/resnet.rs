//! ResNet-18/34/50 with torchvision's parameter names and layout, so that
//! torchvision state dicts load as they are (minus `num_batches_tracked`).

use serde::{Deserialize, Serialize};
use tch::nn::{self, ConvConfig, Init, ModuleT};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Self::Resnet18 => "resnet18",
            Self::Resnet34 => "resnet34",
            Self::Resnet50 => "resnet50",
        }
    }

    /// Width of the pooled features before the classifier.
    pub fn feature_dim(self) -> i64 {
        match self {
            Self::Resnet18 | Self::Resnet34 => 512,
            Self::Resnet50 => 2048,
        }
    }

    fn blocks(self) -> [i64; 4] {
        match self {
            Self::Resnet18 => [2, 2, 2, 2],
            Self::Resnet34 | Self::Resnet50 => [3, 4, 6, 3],
        }
    }

    fn bottleneck(self) -> bool {
        matches!(self, Self::Resnet50)
    }
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

fn batch_norm(p: nn::Path, c: i64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        ws_init: Init::Const(1.0),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, config)
}

#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn basic(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let convs = vec![
            (
                conv(p / "conv1", c_in, c_out, 3, stride, 1),
                batch_norm(p / "bn1", c_out),
            ),
            (
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
            (
                conv(p / "conv1", c_in, width, 1, 1, 0),
                batch_norm(p / "bn1", width),
            ),
            (
                conv(p / "conv2", width, width, 3, stride, 1),
                batch_norm(p / "bn2", width),
            ),
            (
                conv(p / "conv3", width, c_out, 1, 1, 0),
                batch_norm(p / "bn3", c_out),
            ),
        ];
        Self {
            convs,
            downsample: Self::downsample(p, c_in, c_out, stride),
        }
    }

    fn downsample(
        p: &nn::Path,
        c_in: i64,
        c_out: i64,
        stride: i64,
    ) -> Option<(nn::Conv2D, nn::BatchNorm)> {
        (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (
                conv(&d / "0", c_in, c_out, 1, stride, 0),
                batch_norm(&d / "1", c_out),
            )
        })
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut ys = xs.shallow_clone();
        // In place, as torchvision does: no new activation tensors to
        // allocate and fault in (batch-norm backward needs its input only).
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            ys = ys.apply(conv).apply_t(bn, train);
            if i != last {
                let _ = ys.relu_();
            }
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => xs.apply(conv).apply_t(bn, train),
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
    arch: Arch,
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    pub fn new(p: &nn::Path, arch: Arch) -> Self {
        let conv1 = conv(p / "conv1", 3, 64, 7, 2, 3);
        let bn1 = batch_norm(p / "bn1", 64);
        let expansion = if arch.bottleneck() { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::new();
        for (index, (&count, width)) in arch.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
            let lp = p / format!("layer{}", index + 1);
            let stride = if index == 0 { 1 } else { 2 };
            let mut blocks = Vec::new();
            for b in 0..count {
                let bp = &lp / b.to_string();
                let s = if b == 0 { stride } else { 1 };
                let block = if arch.bottleneck() {
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
            arch,
            conv1,
            bn1,
            layers,
        }
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// `[N, 3, H, W]` normalised images to `[N, feature_dim]` features.
    pub fn features(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu_()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for layer in &self.layers {
            for block in layer {
                ys = block.forward(&ys, train);
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
}
