//! The ids of jobs, tasks and workers, each its own type, so that a task id
//! cannot be passed where a job id is meant. The coordinator makes them; the
//! wire carries them as strings, and `convert` checks them on the way in.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        // Maps keyed by the id answer lookups by a borrowed `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_string())
            }
        }
    };
}

string_id! {
    /// A job, as the coordinator named it at submit (`job-` and the time).
    JobId
}

string_id! {
    /// A task of a job: the job's id and the task's index (`job-…/00003`).
    TaskId
}

string_id! {
    /// A worker lane, as the coordinator named it when the lane registered.
    WorkerId
}

impl TaskId {
    /// The id of task `index` of `job`.
    pub fn of(job: &JobId, index: u32) -> Self {
        Self(format!("{job}/{index:05}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_id_names_its_job_and_index_and_ids_travel_as_plain_strings() {
        let job = JobId::new("job-1");
        let task = TaskId::of(&job, 3);
        assert_eq!(task.as_str(), "job-1/00003");
        assert_eq!(serde_json::to_string(&task).unwrap(), "\"job-1/00003\"");
        let back: TaskId = serde_json::from_str("\"job-1/00003\"").unwrap();
        assert_eq!(back, task);
        let mut by_id = std::collections::HashMap::new();
        by_id.insert(job.clone(), 1);
        assert_eq!(by_id.get("job-1"), Some(&1));
    }
}
