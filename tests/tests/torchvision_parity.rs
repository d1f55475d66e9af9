//! torchvision's resnet50 (random init, pinned torchvision), converted with
//! scripts/convert_torchvision.py, loads into atelier's backbone and gives the
//! same features and logits on the same input.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::Command;

use atelier_models::LabelMap;
use atelier_models::Model;
use atelier_models::{ModelSpec, BACKBONE_PREFIX};
use atelier_proto::{Arch, Task};
use atelier_tests::{venv_python, workspace_root};
use tch::{Device, Tensor};

const SCRIPT: &str = r#"
import sys, torch, torchvision
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[1])
from convert_torchvision import convert
out = sys.argv[2]
torch.manual_seed(0)
model = torchvision.models.resnet50()
# Non-trivial batch-norm statistics, so that eval-mode normalisation is exercised.
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.1, 0.1)
model.eval()
torch.save(model.state_dict(), out + "/resnet50.pth")
convert(out + "/resnet50.pth", out + "/backbone.safetensors")
x = torch.randn(2, 3, 96, 96)
with torch.no_grad():
    logits = model(x)
    model.fc = torch.nn.Identity()
    features = model(x)
save_file({"x": x, "features": features.contiguous(), "logits": logits.contiguous()}, out + "/io.safetensors")
print(torchvision.__version__)
"#;

#[test]
fn torchvision_resnet50_weights_give_the_same_features_and_logits() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(venv_python())
        .args([
            "-c",
            SCRIPT,
            workspace_root().join("scripts").to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("0.26"),
        "pinned torchvision"
    );

    let weights = Tensor::read_safetensors(dir.path().join("backbone.safetensors")).unwrap();
    let io: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let classes: Vec<String> = (0..1000).map(|i| format!("class{i}")).collect();
    let spec = ModelSpec {
        arch: Arch::Resnet50,
        task: Task::Color,
        labels: [("color".to_string(), LabelMap::from_classes(classes))]
            .into_iter()
            .collect(),
        targets: Vec::new(),
        vocab: None,
        finetune: false,
        max_caption_len: 16,
    };
    let mut model = Model::new(spec, Device::Cpu).unwrap();
    let loaded = model
        .load(
            &weights,
            Some(BACKBONE_PREFIX),
            &["fc.", "num_batches_tracked"],
        )
        .unwrap();
    // 53 convolution and batch-norm layers: 53 conv weights + 53 × 4 batch-norm tensors.
    assert_eq!(loaded, 53 + 53 * 4);

    let features = model.features(&io["x"], false);
    let diff = (&features - &io["features"]).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "features differ by {diff}");

    let by_name: std::collections::HashMap<&str, &Tensor> =
        weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let logits = features.matmul(&by_name["fc.weight"].tr()) + by_name["fc.bias"];
    let diff = (&logits - &io["logits"]).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "logits differ by {diff}");
}

#[test]
fn mismatched_weights_are_refused_with_the_tensor_named() {
    let spec = ModelSpec {
        arch: Arch::Resnet18,
        task: Task::Color,
        labels: [(
            "color".to_string(),
            LabelMap::from_classes(vec!["<unknown>".into(), "red".into()]),
        )]
        .into_iter()
        .collect(),
        targets: Vec::new(),
        vocab: None,
        finetune: true,
        max_caption_len: 16,
    };
    let mut model = Model::new(spec, Device::Cpu).unwrap();
    let wrong = vec![(
        "conv1.weight".to_string(),
        Tensor::zeros([64, 3, 3, 3], (tch::Kind::Float, Device::Cpu)),
    )];
    let err = model
        .load(&wrong, Some(BACKBONE_PREFIX), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cnn.conv1.weight") && err.contains("[64, 3, 3, 3]"),
        "{err}"
    );
    let unknown = vec![(
        "layer9.weight".to_string(),
        Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)),
    )];
    let err = model
        .load(&unknown, Some(BACKBONE_PREFIX), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer9.weight"), "{err}");
}
