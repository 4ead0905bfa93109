//! Workflows as files, `<dir>/<id>.pb`, for `quarry up` (one process, no etcd): each write
//! goes to a temporary file that is fsynced, then renamed over the old one, then the
//! directory is fsynced, so a crash leaves either the old or the new state.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use quarry_proto::v1::Workflow;

use super::{decode, encode, WorkflowStore};
use crate::error::SchedulerError;

pub struct FileStore {
    directory: PathBuf,
}

fn io_error(path: &Path, error: std::io::Error) -> SchedulerError {
    SchedulerError::Store(format!("{}: {error}", path.display()))
}

/// Ids are written by the scheduler itself; anything else cannot name a file here.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|character| {
            character.is_ascii_alphanumeric() || character == '-' || character == '_'
        })
}

impl FileStore {
    pub fn open(directory: &Path) -> Result<Self, SchedulerError> {
        fs::create_dir_all(directory).map_err(|error| io_error(directory, error))?;
        Ok(Self {
            directory: directory.to_path_buf(),
        })
    }

    fn save_blocking(
        directory: &Path,
        encoded: Vec<(String, Vec<u8>)>,
    ) -> Result<(), SchedulerError> {
        for (id, bytes) in encoded {
            if !safe_id(&id) {
                return Err(SchedulerError::Internal(format!(
                    "unsafe workflow id {id:?}"
                )));
            }
            let path = directory.join(format!("{id}.pb"));
            let temporary = directory.join(format!("{id}.pb.tmp"));
            let mut file = File::create(&temporary).map_err(|error| io_error(&temporary, error))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|error| io_error(&temporary, error))?;
            fs::rename(&temporary, &path).map_err(|error| io_error(&path, error))?;
        }
        File::open(directory)
            .and_then(|handle| handle.sync_all())
            .map_err(|error| io_error(directory, error))
    }
}

#[async_trait::async_trait]
impl WorkflowStore for FileStore {
    async fn save(&self, workflows: &[Workflow]) -> Result<(), SchedulerError> {
        let encoded: Vec<(String, Vec<u8>)> = workflows
            .iter()
            .map(|workflow| (workflow.id.clone(), encode(workflow)))
            .collect();
        let directory = self.directory.clone();
        tokio::task::spawn_blocking(move || Self::save_blocking(&directory, encoded))
            .await
            .map_err(|error| SchedulerError::Internal(error.to_string()))?
    }

    async fn load(&self, id: &str) -> Result<Option<Workflow>, SchedulerError> {
        if !safe_id(id) {
            return Ok(None);
        }
        let path = self.directory.join(format!("{id}.pb"));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(decode(id, &bytes)?)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(&path, error)),
        }
    }

    async fn list(&self) -> Result<Vec<Workflow>, SchedulerError> {
        let entries =
            fs::read_dir(&self.directory).map_err(|error| io_error(&self.directory, error))?;
        let mut workflows = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|error| io_error(&self.directory, error))?
                .path();
            if path.extension().and_then(|extension| extension.to_str()) != Some("pb") {
                continue;
            }
            let bytes = fs::read(&path).map_err(|error| io_error(&path, error))?;
            workflows.push(decode(&path.display().to_string(), &bytes)?);
        }
        Ok(workflows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saves_loads_and_lists() {
        let directory = tempfile::tempdir().unwrap();
        let store = FileStore::open(directory.path()).unwrap();
        let workflow = Workflow {
            id: "wf-1".to_string(),
            name: "n".to_string(),
            version: 3,
            ..Workflow::default()
        };
        store.save(std::slice::from_ref(&workflow)).await.unwrap();
        assert_eq!(store.load("wf-1").await.unwrap(), Some(workflow.clone()));
        assert_eq!(store.load("../etc").await.unwrap(), None);
        assert_eq!(store.load("wf-2").await.unwrap(), None);
        let reopened = FileStore::open(directory.path()).unwrap();
        assert_eq!(reopened.list().await.unwrap(), [workflow]);
    }
}
