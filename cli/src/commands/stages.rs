//! Where a tagging run's time went, stage by stage, as one line.

use atelier_proto::StageTimes;

/// `None` before any stage has counted time.
pub fn describe(s: &StageTimes) -> Option<String> {
    let values = s.values();
    if values.iter().all(|seconds| *seconds <= 0.0) {
        return None;
    }
    let shown: Vec<String> = StageTimes::NAMES
        .iter()
        .zip(values)
        .map(|(name, seconds)| format!("{name} {seconds:.2}"))
        .collect();
    Some(format!(
        "seconds by stage (pipeline stages summed over its threads): {}",
        shown.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_named_in_pipeline_order() {
        assert_eq!(describe(&StageTimes::default()), None);
        let line = describe(&StageTimes {
            decode: 2.0,
            upload: 0.25,
            forward: 3.5,
            ..StageTimes::default()
        })
        .unwrap();
        assert!(
            line.ends_with(
                "read 0.00, fetch 0.00, decode 2.00, transform 0.00, gpu_decode 0.00, upload 0.25, forward 3.50, write 0.00"
            ),
            "{line}"
        );
    }
}
