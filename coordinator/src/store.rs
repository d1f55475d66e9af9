//! The durable state: SQLite in WAL mode, one JSON record per job and task.
//!
//! `synchronous=NORMAL` keeps every committed transaction across a killed
//! process (the WAL is written before commit returns); only a power cut can
//! lose the last ones. Writes come in batches from the event loop, one
//! transaction per batch, so a commit costs one WAL append, not one per change.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::error::{CoordinatorError, Result};
use crate::records::{JobRecord, TaskRecord};

#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    connection: Connection,
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
            std::fs::create_dir_all(parent).map_err(|e| CoordinatorError::Store {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let connection = Connection::open(path).map_err(|source| CoordinatorError::Store {
            path: path.display().to_string(),
            source,
        })?;
        let store = Self {
            path: path.to_path_buf(),
            connection,
        };
        store
            .connection
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=NORMAL;
                 CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, data TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS tasks (
                     id TEXT PRIMARY KEY, job_id TEXT NOT NULL, data TEXT NOT NULL);",
            )
            .map_err(|e| store.error(e))?;
        Ok(store)
    }

    fn error(&self, source: rusqlite::Error) -> CoordinatorError {
        CoordinatorError::Store {
            path: self.path.display().to_string(),
            source,
        }
    }

    pub fn load(&self) -> Result<Loaded> {
        Ok(Loaded {
            jobs: self.load_table("SELECT id, data FROM jobs")?,
            tasks: self.load_table("SELECT id, data FROM tasks")?,
        })
    }

    fn load_table<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>> {
        let mut statement = self.connection.prepare(sql).map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.error(e))?;
        let mut records = Vec::new();
        for row in rows {
            let (id, data) = row.map_err(|e| self.error(e))?;
            records.push(
                serde_json::from_str(&data)
                    .map_err(|source| CoordinatorError::Record { id, source })?,
            );
        }
        Ok(records)
    }

    /// Writes `jobs` and `tasks` in one transaction.
    pub fn save(&mut self, jobs: &[&JobRecord], tasks: &[&TaskRecord]) -> Result<()> {
        if jobs.is_empty() && tasks.is_empty() {
            return Ok(());
        }
        let path = self.path.display().to_string();
        let store_error = |source| CoordinatorError::Store {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(store_error)?;
        {
            let mut put_job = transaction
                .prepare_cached("INSERT OR REPLACE INTO jobs (id, data) VALUES (?1, ?2)")
                .map_err(store_error)?;
            for job in jobs {
                let data =
                    serde_json::to_string(job).map_err(|source| CoordinatorError::Record {
                        id: job.id.clone(),
                        source,
                    })?;
                put_job
                    .execute(params![job.id, data])
                    .map_err(store_error)?;
            }
            let mut put_task = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO tasks (id, job_id, data) VALUES (?1, ?2, ?3)",
                )
                .map_err(store_error)?;
            for task in tasks {
                let data =
                    serde_json::to_string(task).map_err(|source| CoordinatorError::Record {
                        id: task.id.clone(),
                        source,
                    })?;
                put_task
                    .execute(params![task.id, task.job_id, data])
                    .map_err(store_error)?;
            }
        }
        transaction.commit().map_err(store_error)
    }
}
