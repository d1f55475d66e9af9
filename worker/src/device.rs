use tch::Device;

use crate::error::{Result, WorkerError};

/// Parses `cpu` or `cuda:N` (`cuda` means `cuda:0`), checking that the GPU exists.
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(index) => Device::Cuda(index),
            None => {
                return Err(WorkerError::InvalidOptions(format!(
                    "unknown device {other:?}; use cpu or cuda:N"
                )))
            }
        },
    };
    if let Device::Cuda(index) = device {
        let available = tch::Cuda::device_count();
        if index as i64 >= available {
            return Err(WorkerError::InvalidOptions(format!(
                "device {name} is not available ({available} CUDA devices visible)"
            )));
        }
    }
    Ok(device)
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".to_string(),
    }
}
