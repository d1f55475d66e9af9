//! The places a submitted job names, as the coordinator resolves them before
//! anything else looks at them: spelled one way (`/x`, `file:///x` and
//! `file:///x/` are one place), and writable only inside the coordinator's
//! allowed output roots and never over its own state file.

use atelier_catalog::StoreLocation;
use atelier_proto::JobSpec;

use crate::error::{CoordinatorError, Result};
use crate::state::places_overlap;

/// `url` as its store addresses it: an absolute `file://` URL for a path.
pub fn resolved(url: &str) -> Result<String> {
    StoreLocation::parse(url)
        .map(|location| location.url().trim_end_matches('/').to_string())
        .map_err(|e| CoordinatorError::InvalidArgument(format!("{url}: {e}")))
}

/// `spec` with every place it names resolved.
pub fn resolve(spec: JobSpec) -> Result<JobSpec> {
    Ok(match spec {
        JobSpec::Tag(mut tag) => {
            tag.catalog = resolved(&tag.catalog)?;
            tag.output = resolved(&tag.output)?;
            for checkpoint in &mut tag.checkpoints {
                *checkpoint = resolved(checkpoint)?;
            }
            JobSpec::Tag(tag)
        }
        JobSpec::Train(mut train) => {
            train.catalog = resolved(&train.catalog)?;
            train.checkpoint = resolved(&train.checkpoint)?;
            if let Some(weights) = &mut train.options.backbone_weights {
                *weights = resolved(weights)?;
            }
            JobSpec::Train(train)
        }
        JobSpec::Eval(mut eval) => {
            eval.catalog = resolved(&eval.catalog)?;
            eval.checkpoint = resolved(&eval.checkpoint)?;
            JobSpec::Eval(eval)
        }
    })
}

/// Where a job may write: inside one of `roots` when there are any, and
/// never where `protected` places are (the coordinator's state file), which
/// `--overwrite` would delete.
#[derive(Debug, Clone, Default)]
pub struct WritePolicy {
    pub roots: Vec<String>,
    pub protected: Vec<String>,
}

impl WritePolicy {
    /// Refuses a resolved `spec` that would write outside the roots or over
    /// a protected place.
    pub fn check(&self, spec: &JobSpec) -> Result<()> {
        let Some(place) = (match spec {
            JobSpec::Tag(tag) => Some(&tag.output),
            JobSpec::Train(train) => Some(&train.checkpoint),
            JobSpec::Eval(_) => None,
        }) else {
            return Ok(());
        };
        if let Some(protected) = self.protected.iter().find(|p| places_overlap(p, place)) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "{place} holds {protected}, the coordinator's own; write elsewhere"
            )));
        }
        let inside = |root: &String| {
            let root = root.trim_end_matches('/');
            place == root
                || place
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        if !self.roots.is_empty() && !self.roots.iter().any(inside) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "{place} is outside the places this coordinator writes ({}); see its --output-root",
                self.roots.join(", ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use atelier_proto::{TagJobSpec, TrainJobSpec};

    use super::*;

    fn tag(output: &str) -> JobSpec {
        JobSpec::Tag(TagJobSpec {
            catalog: "/shop/catalog".into(),
            columns: Default::default(),
            checkpoints: vec!["file:///shop/model/".into()],
            output: output.into(),
            target_shard_rows: None,
            max_attempts: None,
            inference: Default::default(),
            overwrite: true,
        })
    }

    #[test]
    fn one_place_is_one_spelling() {
        let JobSpec::Tag(a) = resolve(tag("/shop/tags/")).unwrap() else {
            unreachable!()
        };
        let JobSpec::Tag(b) = resolve(tag("file:///shop/./tags")).unwrap() else {
            unreachable!()
        };
        assert_eq!(a.output, "file:///shop/tags");
        assert_eq!(a, b);
        assert_eq!(a.catalog, "file:///shop/catalog");
        assert_eq!(a.checkpoints, vec!["file:///shop/model".to_string()]);
    }

    #[test]
    fn writes_stay_inside_the_roots_and_off_the_state_file() {
        let policy = WritePolicy {
            roots: vec!["file:///shop/tags".into(), "s3://bucket/models/".into()],
            protected: vec!["file:///var/lib/atelier/coordinator.db".into()],
        };
        assert!(policy
            .check(&resolve(tag("/shop/tags/2026-12-03")).unwrap())
            .is_ok());
        let error = policy
            .check(&resolve(tag("/shop/tagsx")).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("--output-root"), "{error}");
        let error = policy
            .check(&resolve(tag("/var/lib")).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("coordinator.db"), "{error}");
        let train = JobSpec::Train(TrainJobSpec {
            catalog: "s3://bucket/catalog".into(),
            columns: Default::default(),
            checkpoint: "s3://bucket/models/pool".into(),
            ..Default::default()
        });
        assert!(policy.check(&train).is_ok());
        // Without roots anywhere goes, but the state file stays protected.
        let open = WritePolicy {
            roots: Vec::new(),
            ..policy
        };
        assert!(open.check(&resolve(tag("/anywhere")).unwrap()).is_ok());
        assert!(open.check(&resolve(tag("/var")).unwrap()).is_err());
    }
}
