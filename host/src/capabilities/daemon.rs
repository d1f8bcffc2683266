//! The `docker` capability: inspect, export and build in the daemon found as the Docker CLI finds
//! it (`daemon`); inspect and export also from containers-storage (`daemon::storage`, podman or
//! buildah) for a `containers-storage:NAME` image, for the ID such an inspect gave, and for any
//! name when no Docker daemon is found anywhere (said in one line). A build reads only the
//! context directory the user named.

use std::path::Path;

use bollard::models::ImageInspect;
use wasmtime::component::Resource;

use crate::bindings::ocipush::core::docker::{
    BuildEvent, BuildRequest, DaemonIdentity, Host, HostBuildJob, HostExportStream, ImageSummary,
};
use crate::bindings::ocipush::core::types::{IdKind, Platform};
use crate::daemon::build::{self, BuildJob, Spec, Step};
use crate::daemon::export::{self, ExportStream};
use crate::daemon::storage::{self, StorageImage};
use crate::daemon::{self, Error};
use crate::state::{timed, HostError, HostState};

impl From<daemon::Error> for HostError {
    fn from(e: daemon::Error) -> Self {
        match e {
            Error::Interrupted(interrupted) => interrupted.into(),
            e => HostError::message(e),
        }
    }
}

impl From<export::Error> for HostError {
    fn from(e: export::Error) -> Self {
        match e {
            export::Error::Interrupted(interrupted) => interrupted.into(),
            e => HostError::message(e),
        }
    }
}

impl From<storage::Error> for HostError {
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::Interrupted(interrupted) => interrupted.into(),
            e => HostError::message(e),
        }
    }
}

impl From<build::Error> for HostError {
    fn from(e: build::Error) -> Self {
        match e {
            build::Error::Interrupted(interrupted) => interrupted.into(),
            e => HostError::message(e),
        }
    }
}

impl Host for HostState {
    fn build(&mut self, request: BuildRequest) -> Result<Resource<BuildJob>, HostError> {
        let docker = self.daemon.docker(&self.rt)?;
        let spec = Spec {
            context: Path::new(&request.context),
            dockerfile: request.dockerfile.as_deref(),
            tag: &request.tag,
            build_args: &request.build_args,
        };
        let allowed = self.sandbox.build_context.as_deref();
        let job = BuildJob::start(&self.rt, docker, &self.daemon.address, allowed, &spec)?;
        Ok(self.table.push(job)?)
    }

    fn inspect(&mut self, image: String) -> Result<ImageSummary, HostError> {
        if let Some(name) = self.storage_name(&image) {
            let inspected = self.storage.inspect(&self.rt, &name)?;
            tracing::debug!(image, id = %inspected.id, layers = inspected.diff_ids.len(), "inspected in containers-storage");
            return Ok(storage_summary(inspected));
        }
        let docker = self.daemon.docker(&self.rt)?;
        let inspected = self
            .rt
            .block_on(docker.inspect_image(&image))?
            .map_err(|e| self.daemon.describe(&image, e))?;
        let mut summary = summary(&image, inspected)?;
        summary.id_kind = self.rt.block_on(id_kind(&docker))?;
        tracing::debug!(image, id = %summary.id, layers = summary.diff_ids.len(), size = summary.size, platform = ?summary.platform, "inspected");
        Ok(summary)
    }

    fn identify(&mut self, image: String) -> Result<Option<DaemonIdentity>, HostError> {
        if self.storage_name(&image).is_some() {
            return Ok(None);
        }
        let docker = self.daemon.docker(&self.rt)?;
        let info = self
            .rt
            .block_on(docker.info())?
            .map_err(|e| daemon::Error::Info {
                address: self.daemon.address.clone(),
                cause: e.to_string(),
            })?;
        let stated = |field: Option<String>| field.filter(|v| !v.is_empty());
        Ok(Some(DaemonIdentity {
            id: stated(info.id),
            name: stated(info.name),
            server_version: stated(info.server_version),
            // Connected above, so the resolution named an endpoint.
            endpoint: self.daemon.endpoint().unwrap_or_default(),
        }))
    }

    fn export_image(&mut self, image: String) -> Result<Resource<ExportStream>, HostError> {
        let stream = match self.storage_name(&image) {
            Some(name) => self.storage.export(&self.rt, &name)?,
            None => {
                let docker = self.daemon.docker(&self.rt)?;
                ExportStream::start(&self.rt, docker, &self.daemon.address, image)
            }
        };
        Ok(self.table.push(stream)?)
    }
}

impl HostState {
    /// The name to read from containers-storage, when `image` is read from there: named so
    /// (`containers-storage:NAME`), an ID its inspect gave, or any name when no Docker daemon
    /// is found anywhere and podman or buildah is installed (said once, in one line).
    fn storage_name(&mut self, image: &str) -> Option<String> {
        if let Some(name) = image.strip_prefix(storage::PREFIX) {
            return Some(name.to_string());
        }
        if self.storage.answered_for(image) {
            return Some(image.to_string());
        }
        let tried = self.daemon.absent()?;
        let tool = self.storage.tool()?.name();
        if self.storage.first_fallback() {
            self.progress.notices().source(&format!(
                "no Docker daemon found (no socket at {}): reading {image} from containers-storage with {tool}",
                tried.join(", ")
            ));
        }
        Some(image.to_string())
    }
}

/// What the daemon's image IDs are the digests of: manifests or indexes with the containerd
/// image store (`/info`'s `DriverStatus` has `driver-type` `io.containerd.snapshotter.v1`),
/// configs otherwise. An `/info` that fails counts as the containerd store: that costs the
/// guest a look over the export, never an upload before it knows the image's platforms.
async fn id_kind(docker: &bollard::Docker) -> IdKind {
    let Ok(info) = docker.info().await else {
        return IdKind::Manifest;
    };
    let containerd = info.driver_status.unwrap_or_default().iter().any(|pair| {
        pair.first().map(String::as_str) == Some("driver-type")
            && pair
                .get(1)
                .is_some_and(|v| v.starts_with("io.containerd.snapshotter"))
    });
    if containerd {
        IdKind::Manifest
    } else {
        IdKind::Config
    }
}

/// What the guest is told of an image in containers-storage.
fn storage_summary(image: StorageImage) -> ImageSummary {
    let platform = match (image.os, image.architecture) {
        (Some(os), Some(architecture)) => Some(Platform {
            os,
            architecture,
            variant: image.variant,
        }),
        _ => None,
    };
    ImageSummary {
        id: image.id,
        diff_ids: image.diff_ids,
        size: image.size,
        platform,
        id_kind: IdKind::Config,
        labels: sorted(image.labels),
    }
}

/// What the guest is told of an image: the daemon's inspect answer, mapped. The platform is
/// there only when the daemon names both an OS and an architecture.
fn summary(image: &str, inspect: ImageInspect) -> Result<ImageSummary, Error> {
    let id = inspect.id.ok_or_else(|| Error::NoId {
        image: image.to_string(),
    })?;
    let platform = match (inspect.os, inspect.architecture) {
        (Some(os), Some(architecture)) if !os.is_empty() && !architecture.is_empty() => {
            Some(Platform {
                os,
                architecture,
                variant: inspect.variant.filter(|v| !v.is_empty()),
            })
        }
        _ => None,
    };
    let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    Ok(ImageSummary {
        id,
        diff_ids: inspect.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        size: inspect.size.unwrap_or(0).max(0) as u64,
        platform,
        // The caller asks the daemon which store it runs.
        id_kind: IdKind::Config,
        labels: sorted(labels),
    })
}

/// Labels as the contract states them: sorted by key, so that a guest sees the same list for
/// the same image whatever order the daemon's JSON map came in.
fn sorted(labels: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut labels: Vec<_> = labels.into_iter().collect();
    labels.sort();
    labels
}

impl HostExportStream for HostState {
    fn read(&mut self, stream: Resource<ExportStream>, max: u32) -> Result<Vec<u8>, HostError> {
        let rt = self.rt.clone();
        let stream = self.table.get_mut(&stream)?;
        Ok(timed(&mut self.waits.export, || stream.read(&rt, max))?)
    }

    fn skip(&mut self, stream: Resource<ExportStream>, n: u64) -> Result<(), HostError> {
        let rt = self.rt.clone();
        let stream = self.table.get_mut(&stream)?;
        Ok(timed(&mut self.waits.export, || stream.skip(&rt, n))?)
    }

    fn drop(&mut self, stream: Resource<ExportStream>) -> wasmtime::Result<()> {
        // Dropping the receiver ends the pump task at its next send.
        self.table.delete(stream)?;
        Ok(())
    }
}

impl HostBuildJob for HostState {
    fn next(&mut self, job: Resource<BuildJob>) -> Result<BuildEvent, HostError> {
        let rt = self.rt.clone();
        Ok(match self.table.get_mut(&job)?.next(&rt)? {
            Step::Output(line) => BuildEvent::Output(line),
            Step::Built(id) => BuildEvent::Built(id),
        })
    }

    fn drop(&mut self, job: Resource<BuildJob>) -> wasmtime::Result<()> {
        self.table.delete(job)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ImageConfig, ImageInspectRootFs};

    #[test]
    fn an_inspect_answer_becomes_the_images_summary() {
        let inspect = ImageInspect {
            id: Some("sha256:abc".into()),
            root_fs: Some(ImageInspectRootFs {
                layers: Some(vec!["sha256:l1".into(), "sha256:l2".into()]),
                ..Default::default()
            }),
            size: Some(1234),
            os: Some("linux".into()),
            architecture: Some("arm64".into()),
            variant: Some("v8".into()),
            config: Some(ImageConfig {
                labels: Some(
                    [("b", "2"), ("a", "1")]
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let summary = summary("app:1", inspect).unwrap();
        assert_eq!(
            summary.labels,
            [("a".to_string(), "1".to_string()), ("b".into(), "2".into())]
        );
        assert_eq!(summary.id, "sha256:abc");
        assert_eq!(summary.diff_ids, ["sha256:l1", "sha256:l2"]);
        assert_eq!(summary.size, 1234);
        let platform = summary.platform.unwrap();
        assert_eq!(
            (platform.os.as_str(), platform.architecture.as_str()),
            ("linux", "arm64")
        );
        assert_eq!(platform.variant.as_deref(), Some("v8"));
    }

    #[test]
    fn missing_or_empty_parts_of_an_inspect_answer() {
        let bare = ImageInspect {
            id: Some("sha256:abc".into()),
            size: Some(-1),
            os: Some("linux".into()),
            architecture: Some(String::new()),
            variant: Some(String::new()),
            ..Default::default()
        };
        let summary = summary("app:1", bare).unwrap();
        assert!(summary.diff_ids.is_empty());
        assert_eq!(summary.size, 0, "a negative size counts as none");
        assert!(summary.platform.is_none(), "no architecture, no platform");
        assert!(summary.labels.is_empty(), "no config, no labels");
        let err = summary_error(ImageInspect::default());
        assert_eq!(err, "the Docker daemon reported no ID for image app:1");
    }

    fn summary_error(inspect: ImageInspect) -> String {
        summary("app:1", inspect).err().unwrap().to_string()
    }
}
