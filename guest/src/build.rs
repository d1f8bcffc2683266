//! Build, then push: the daemon builds an image from a context directory (its `build`
//! capability), the build's output goes to progress, and the result is pushed by its ID like
//! any image in the daemon.

use anyhow::Result;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::progress::{Event, ProgressSink};
use crate::push::{push, ImageSource, PushRequest, Pushed, Registries, Settings};
use crate::reference::Destination;

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The context directory, as the user named it.
    pub context: String,
    /// The Dockerfile's path in the context; `Dockerfile` when none.
    pub dockerfile: Option<String>,
    /// The `name:tag` the image gets.
    pub tag: String,
    pub build_args: Vec<(String, String)>,
}

/// The daemon's builder.
pub trait ImageBuilder {
    /// Builds, handing each line of the build's output to `output`; returns the image ID.
    fn build(&mut self, request: &BuildRequest, output: &mut dyn FnMut(String)) -> Result<Digest>;
}

/// A build and, with a destination, the push that follows it.
pub struct BuildPushRequest {
    pub build: BuildRequest,
    pub destination: Option<String>,
    pub settings: Settings,
}

/// What was built, and published.
#[derive(Debug, PartialEq, Eq)]
pub struct Built {
    pub id: Digest,
    pub pushed: Option<Pushed>,
}

/// Builds `request.build`, then pushes it to `request.destination` if there is one.
pub fn build_and_push<S: ImageSource + ImageBuilder>(
    request: &BuildPushRequest,
    daemon: &mut S,
    registries: &mut impl Registries,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Built> {
    // What would stop the push stops the build from starting.
    if let Some(destination) = &request.destination {
        Destination::parse(destination)?;
        let settings = &request.settings;
        settings
            .format
            .check(&settings.encoding, &settings.annotations)?;
    }
    let id = daemon.build(&request.build, &mut |line| {
        progress.report(Event::BuildOutput(line))
    })?;
    progress.report(Event::Built {
        tag: request.build.tag.clone(),
        id: id.clone(),
    });
    let pushed = match &request.destination {
        None => None,
        // By ID: the tag could be moved by another build in the meantime.
        Some(destination) => Some(push(
            &PushRequest {
                source: id.to_string(),
                destination: destination.clone(),
                settings: request.settings.clone(),
            },
            daemon,
            registries,
            cache,
            progress,
        )?),
    };
    Ok(Built { id, pushed })
}
