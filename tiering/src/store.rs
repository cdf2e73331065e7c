//! Object store access: opening a store from a URL, manifests (load,
//! conditional commit, pruning old generations), uploads and deletes.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::io::AsyncReadExt;

use crate::manifest::Manifest;
use crate::{Archive, ArchiveError};

/// Files up to this size are uploaded with one PUT; larger ones in parts.
const SINGLE_PUT_BYTES: u64 = 16 << 20;
const PART_BYTES: usize = 16 << 20;
/// Old manifest generations kept besides the current one (for readers that
/// listed just before a commit, and for forensics).
const KEEP_GENERATIONS: u64 = 3;

/// Opens `file:///abs/dir` (created if missing) or `s3://bucket[/prefix]`.
/// S3 settings come from the standard `AWS_*` environment variables
/// (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_REGION`, credentials). Requests
/// are retried by the client a few times; longer outages are the tierer's
/// to ride out with its own backoff.
pub fn open_store(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), ArchiveError> {
    open_store_at(url).map(|(store, root, _)| (store, root))
}

/// A store, the root path in it, and its directory when it is local.
pub(crate) type OpenedStore = (Arc<dyn ObjectStore>, Path, Option<std::path::PathBuf>);

/// [`open_store`], plus the directory when the store is local (files are
/// then fsynced and renamed into place rather than copied).
pub(crate) fn open_store_at(url: &str) -> Result<OpenedStore, ArchiveError> {
    let bad = |reason: &str| ArchiveError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|_| bad("not an absolute local path"))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| bad(&format!("cannot create {}: {e}", dir.display())))?;
            let store = LocalFileSystem::new_with_prefix(&dir)?;
            Ok((Arc::new(store), Path::default(), Some(dir)))
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("no bucket name"))?;
            let retry = RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            };
            // Timeouts: a dead endpoint fails fast; a slow one is given a
            // minute per request. `AWS_CONNECT_TIMEOUT` / `AWS_TIMEOUT`
            // in the environment take precedence.
            let mut builder = AmazonS3Builder::new();
            for (key, value) in [
                (ClientConfigKey::ConnectTimeout, "5s"),
                (ClientConfigKey::Timeout, "60s"),
            ] {
                builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
            }
            for (name, value) in std::env::vars() {
                if name.starts_with("AWS_") {
                    if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                        builder = builder.with_config(key, value);
                    }
                }
            }
            let store = builder
                .with_bucket_name(bucket)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_retry(retry)
                .build()?;
            let prefix = parsed.path().trim_matches('/');
            Ok((Arc::new(store), Path::from(prefix), None))
        }
        other => Err(bad(&format!(
            "unsupported scheme '{other}': use file:// or s3://"
        ))),
    }
}

fn generation_name(generation: u64) -> String {
    format!("{generation:020}.json")
}

impl Archive {
    fn manifest_dir(&self, topic: &str, partition: i32) -> Path {
        self.partition_dir(topic, partition).join("manifest")
    }

    /// Reads the current (highest) manifest generation, if any. One LIST of
    /// the partition's small `manifest/` prefix, at load time only.
    pub(crate) async fn fetch_manifest(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Manifest>, ArchiveError> {
        let dir = self.manifest_dir(topic, partition);
        let listed: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        let newest = listed
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max();
        let Some(generation) = newest else {
            return Ok(None);
        };
        let path = dir.clone().join(generation_name(generation));
        let bytes = self.store.get(&path).await?.bytes().await?;
        let m = Manifest::decode(&bytes)
            .map_err(|e| ArchiveError::Corrupt(format!("manifest {path}: {e}")))?;
        if m.generation != generation {
            return Err(ArchiveError::Corrupt(format!(
                "manifest {path} says it is generation {}",
                m.generation
            )));
        }
        Ok(Some(m))
    }

    /// Stores `next` as a new generation with a create-only put: if the
    /// generation exists, someone else committed and this commit fails
    /// (nothing is overwritten). On success the in-memory manifest moves
    /// on and old generations beyond the few kept are deleted.
    pub(crate) async fn commit_manifest(
        &self,
        next: Manifest,
    ) -> Result<Arc<Manifest>, ArchiveError> {
        let dir = self.manifest_dir(&next.topic, next.partition);
        let path = dir.clone().join(generation_name(next.generation));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let encoded = next.encode();
        match self
            .store
            .put_opts(&path, PutPayload::from(encoded.clone()), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                // A put whose response was lost may have landed: if the
                // stored generation is ours byte for byte, it committed.
                let stored = self.store.get(&path).await?.bytes().await?;
                if stored.as_ref() != encoded.as_slice() {
                    return Err(ArchiveError::Conflict {
                        partition: format!("{}-{}", next.topic, next.partition),
                        generation: next.generation,
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.sync_local(&path).await?;
        let generation = next.generation;
        let committed = self.set_manifest(next);
        if generation > KEEP_GENERATIONS {
            let old = dir
                .clone()
                .join(generation_name(generation - KEEP_GENERATIONS - 1));
            self.delete_quietly(&old).await;
        }
        Ok(committed)
    }

    /// Where an object lives when the store is a local directory.
    fn local_path(&self, path: &Path) -> Option<std::path::PathBuf> {
        self.local_root
            .as_ref()
            .map(|root| root.join(path.as_ref()))
    }

    /// In a local directory, fsyncs the object and its directory: the
    /// archive is the only copy once local retention has run, so it must
    /// survive a power loss like the log does. (Object stores are durable
    /// when they acknowledge.)
    async fn sync_local(&self, path: &Path) -> Result<(), ArchiveError> {
        let Some(file) = self.local_path(path) else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            let io = |e: std::io::Error, p: &std::path::Path| {
                ArchiveError::Io(format!("fsync {}: {e}", p.display()))
            };
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(e, &file))?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io(e, dir))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ArchiveError::Io(format!("fsync task: {e}")))?
    }

    /// Uploads a staged file: into a local directory by fsync and rename
    /// (no second copy on the same disk); otherwise one PUT when small, a
    /// multipart upload in 16 MiB parts when large (aborted on failure, so
    /// no parts linger).
    pub(crate) async fn upload_file(
        &self,
        local: &std::path::Path,
        to: &Path,
    ) -> Result<u64, ArchiveError> {
        let io = |e: std::io::Error| ArchiveError::Io(format!("{}: {e}", local.display()));
        if let Some(target) = self.local_path(to) {
            let (from, dest) = (local.to_path_buf(), target.clone());
            let moved = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                let f = std::fs::File::open(&from)?;
                f.sync_all()?;
                let len = f.metadata()?.len();
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::rename(&from, &dest)?;
                Ok(len)
            })
            .await
            .map_err(|e| ArchiveError::Io(format!("upload task: {e}")))?;
            match moved {
                Ok(len) => {
                    self.sync_local(to).await?;
                    return Ok(len);
                }
                // Another filesystem: copy through the store below.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                Err(e) => return Err(io(e)),
            }
        }
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        if len <= SINGLE_PUT_BYTES {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(io)?;
            self.store.put(to, PutPayload::from(buf)).await?;
            self.sync_local(to).await?;
            return Ok(len);
        }
        let upload = self.store.put_multipart(to).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(e.into());
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await?;
        self.sync_local(to).await?;
        Ok(len)
    }

    /// Deletes an object; a missing one is not an error. Failures are
    /// logged: a leftover is cleaned up by the next load of the partition.
    pub(crate) async fn delete_quietly(&self, path: &Path) -> bool {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "archive: could not delete object; will retry at the next load");
                false
            }
        }
    }

    /// Names of the topics the archive holds data for (one LIST of
    /// `topics/` with a delimiter).
    pub(crate) async fn archived_topics(&self) -> Result<Vec<String>, ArchiveError> {
        let dir = self.root.clone().join("topics");
        let listed = self.store.list_with_delimiter(Some(&dir)).await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Every object under `prefix`.
    pub(crate) async fn list_paths(&self, prefix: &Path) -> Result<Vec<Path>, ArchiveError> {
        let listed: Vec<_> = self.store.list(Some(prefix)).try_collect().await?;
        Ok(listed.into_iter().map(|m| m.location).collect())
    }
}
