//! The durable state: SQLite in WAL mode, one JSON record per job and task,
//! and each task's immutable work once in a table of its own, so the two or
//! three writes of a task's life carry only its small changing part.
//!
//! `synchronous=FULL` syncs the WAL at every commit, so a committed
//! transaction survives a power cut as well as a killed process: an attempt
//! number, once handed out, is never handed out again (NORMAL would keep it
//! across a kill only, and a power cut could lease one (task, attempt) twice).
//! Writes come in batches from the event loop, one transaction per batch, so
//! a commit costs one WAL append and one sync, not one per change
//! (BENCHMARKS.md, "The coordinator at scale", has what the sync costs).
//!
//! A 10^6-item job's task records outgrow SQLite's default 2 MiB page cache,
//! and its default checkpoint every 1,000 WAL pages fsyncs every few dozen
//! batches under 1,000 workers: a 64 MiB cache and a checkpoint every 16,384
//! pages took the scale benchmark's page reads from 30,000 to 4,500 and its
//! fsyncs from 53 to 11. Rows are updated in place (an upsert, not
//! `INSERT OR REPLACE`, which deletes and re-inserts under a new rowid).
//!
//! New state files use 1 KiB pages, not SQLite's 4 KiB: a commit appends every
//! page it changed to the WAL whole, and a batch's task updates land on
//! pages of their own (a thousand tasks in flight span the table), so each
//! changed record cost a 4 KiB frame, written, checksummed and later
//! checkpointed. With 1 KiB pages the event loop spent 25-35% less time
//! saving (BENCHMARKS.md). A file made before keeps its page size: SQLite
//! fixes it at creation.
//!
//! The coordinator holds its state file exclusively (`locking_mode=EXCLUSIVE`)
//! for as long as it runs. Two coordinators on one file would each lease the
//! same tasks under the same attempt numbers, which defeats fencing; the
//! second one is refused at start-up instead, after waiting `BUSY_WAIT` for a
//! predecessor that is still shutting down. The lock dies with the process,
//! so a `kill -9`ed coordinator's replacement starts at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode};

use crate::error::{CoordinatorError, Result};
use atelier_proto::TaskId;

use crate::records::{JobRecord, TaskRecord};

/// How long a coordinator starting up waits for another process to let go
/// of the state file before giving up.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    connection: Connection,
    /// Tasks whose work row is written.
    work_saved: rustc_hash::FxHashSet<TaskId>,
}

/// Everything the store holds, as loaded at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub jobs: Vec<JobRecord>,
    pub tasks: Vec<TaskRecord>,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| CoordinatorError::Io {
                what: format!("creating the state directory {}", parent.display()),
                error,
            })?;
        }
        let connection = Connection::open(path).map_err(|error| CoordinatorError::Store {
            path: path.display().to_string(),
            error,
        })?;
        let store = Self {
            path: path.to_path_buf(),
            connection,
            work_saved: Default::default(),
        };
        store
            .connection
            .busy_timeout(BUSY_WAIT)
            .map_err(|e| store.error(e))?;
        store
            .connection
            .execute_batch(
                "PRAGMA page_size=1024;
                 PRAGMA locking_mode=EXCLUSIVE;
                 PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=FULL;
                 PRAGMA cache_size=-65536;
                 PRAGMA wal_autocheckpoint=16384;
                 CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, data TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS tasks (
                     id TEXT PRIMARY KEY, job_id TEXT NOT NULL, data TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS task_work (id TEXT PRIMARY KEY, work TEXT NOT NULL);",
            )
            .map_err(|e| store.error(e))?;
        Ok(store)
    }

    fn error(&self, error: rusqlite::Error) -> CoordinatorError {
        store_error(&self.path, error)
    }

    pub fn load(&mut self) -> Result<Loaded> {
        let mut works: HashMap<String, serde_json::Value> = self
            .load_table::<serde_json::Value>("SELECT id, work FROM task_work")?
            .into_iter()
            .collect();
        let mut tasks = Vec::new();
        let rows = self.load_table::<serde_json::Map<String, serde_json::Value>>(
            "SELECT id, data FROM tasks",
        )?;
        for (id, mut fields) in rows {
            // The work lives in its own table; a record written before that
            // table existed carries it inline, and the next save moves it.
            let work = match works.remove(&id) {
                Some(work) => {
                    self.work_saved.insert(TaskId::new(id.clone()));
                    work
                }
                None => match fields.remove("work") {
                    Some(inline) => inline,
                    None => {
                        return Err(CoordinatorError::Internal(format!(
                            "state store {}: task {id} has no work record",
                            self.path.display()
                        )))
                    }
                },
            };
            fields.insert("work".into(), work);
            let task = serde_json::from_value::<TaskRecord>(fields.into())
                .map_err(|source| CoordinatorError::Record { id, source })?;
            tasks.push(task);
        }
        let jobs = self.load_table::<JobRecord>("SELECT id, data FROM jobs")?;
        Ok(Loaded {
            jobs: jobs.into_iter().map(|(_, job)| job).collect(),
            tasks,
        })
    }

    fn load_table<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<(String, T)>> {
        let mut statement = self.connection.prepare(sql).map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.error(e))?;
        let mut records = Vec::new();
        for row in rows {
            let (id, data) = row.map_err(|e| self.error(e))?;
            let record =
                serde_json::from_str(&data).map_err(|source| CoordinatorError::Record {
                    id: id.clone(),
                    source,
                })?;
            records.push((id, record));
        }
        Ok(records)
    }

    /// Writes `jobs` and `tasks` in one transaction.
    pub fn save(&mut self, jobs: &[&JobRecord], tasks: &[&TaskRecord]) -> Result<()> {
        if jobs.is_empty() && tasks.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let failed = |error| store_error(&path, error);
        let transaction = self.connection.transaction().map_err(failed)?;
        {
            let mut put_job = transaction
                .prepare_cached(
                    "INSERT INTO jobs (id, data) VALUES (?1, ?2) \
                     ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                )
                .map_err(failed)?;
            for job in jobs {
                let data =
                    serde_json::to_string(job).map_err(|source| CoordinatorError::Record {
                        id: job.id.to_string(),
                        source,
                    })?;
                put_job
                    .execute(params![job.id.as_str(), data])
                    .map_err(failed)?;
            }
            let mut put_work = transaction
                .prepare_cached("INSERT OR REPLACE INTO task_work (id, work) VALUES (?1, ?2)")
                .map_err(failed)?;
            for task in tasks.iter().filter(|t| !self.work_saved.contains(&t.id)) {
                let work = serde_json::to_string(&task.work).map_err(|source| {
                    CoordinatorError::Record {
                        id: task.id.to_string(),
                        source,
                    }
                })?;
                put_work
                    .execute(params![task.id.as_str(), work])
                    .map_err(failed)?;
            }
            let mut put_task = transaction
                .prepare_cached(
                    "INSERT INTO tasks (id, job_id, data) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                )
                .map_err(failed)?;
            for task in tasks {
                let data =
                    serde_json::to_string(task).map_err(|source| CoordinatorError::Record {
                        id: task.id.to_string(),
                        source,
                    })?;
                put_task
                    .execute(params![task.id.as_str(), task.job_id.as_str(), data])
                    .map_err(failed)?;
            }
        }
        transaction.commit().map_err(failed)?;
        // Only once committed: a failed batch writes the work again.
        self.work_saved.extend(tasks.iter().map(|t| t.id.clone()));
        Ok(())
    }
}

fn store_error(path: &Path, error: rusqlite::Error) -> CoordinatorError {
    let path = path.display().to_string();
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            CoordinatorError::StateInUse { path }
        }
        _ => CoordinatorError::Store { path, error },
    }
}

#[cfg(test)]
mod tests {
    use super::StateStore;

    fn page_size(store: &StateStore) -> i64 {
        store
            .connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn every_commit_is_on_disk_before_it_is_answered() {
        // FULL: the WAL is synced at each commit, so a power cut cannot take
        // back an attempt number already handed out (NORMAL syncs only at
        // checkpoints). 2 is FULL.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state.db")).unwrap();
        let synchronous: i64 = store
            .connection
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap();
        assert_eq!(synchronous, 2);
    }

    #[test]
    fn new_state_files_use_small_pages_and_old_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = StateStore::open(&dir.path().join("fresh.db")).unwrap();
        assert_eq!(page_size(&fresh), 1024);

        // A state file from before, with SQLite's default pages and a job.
        let old = dir.path().join("old.db");
        let connection = rusqlite::Connection::open(&old).unwrap();
        connection
            .execute_batch(
                "PRAGMA page_size=4096;
                 PRAGMA journal_mode=WAL;
                 CREATE TABLE jobs (id TEXT PRIMARY KEY, data TEXT NOT NULL);
                 INSERT INTO jobs VALUES ('job-1', 'not loaded here');",
            )
            .unwrap();
        drop(connection);
        let reopened = StateStore::open(&old).unwrap();
        assert_eq!(page_size(&reopened), 4096);
        let rows: i64 = reopened
            .connection
            .query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1, "the old rows are still there");
    }

    #[test]
    fn shard_work_stored_before_row_slices_loads_as_whole_row_groups() {
        use atelier_proto::TaskWork;
        // A tag shard's work as the version before row slices stored it.
        let old = r#"{"Tag":{"catalog":"file:///c","ranges":[{"file":"file:///c/part-00000.parquet","row_groups":[2,3]}],"checkpoints":[],"output":"file:///o/part-00001.parquet","inference":{"batch_size":0,"beams":1,"bf16":false,"channels_last":false},"rows":4096}}"#;
        let TaskWork::Tag(shard) = serde_json::from_str::<TaskWork>(old).unwrap() else {
            panic!("not a tag shard");
        };
        assert_eq!(shard.ranges[0].row_groups, vec![2, 3]);
        assert_eq!(shard.ranges[0].rows, None);
        let mut sliced = shard.clone();
        sliced.ranges[0].rows = Some(512..1024);
        let json = serde_json::to_string(&TaskWork::Tag(sliced.clone())).unwrap();
        assert_eq!(
            serde_json::from_str::<TaskWork>(&json).unwrap(),
            TaskWork::Tag(sliced)
        );
    }
}
