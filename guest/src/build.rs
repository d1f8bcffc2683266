//! Build, then push: the daemon builds an image from a context directory (its `build`
//! capability), the build's output goes to progress, and the result is pushed by its ID like
//! any image in the daemon.

use anyhow::Result;

use crate::digest::Digest;
use crate::policy::Policy;
use crate::ports::{Cache, Destinations, ProgressSink, ReadExport};
use crate::progress::Event;
use crate::push::{check_destinations, push, PushRequest, Pushed, Settings};

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

/// Builds `request.build`, then pushes it to `request.destination` if there is one and
/// `policy` allows it.
pub fn build_and_push<S: ReadExport + ImageBuilder>(
    request: &BuildPushRequest,
    policy: &dyn Policy,
    daemon: &mut S,
    destinations: &mut impl Destinations,
    cache: &mut impl Cache,
    progress: &mut impl ProgressSink,
) -> Result<Built> {
    // What would stop the push stops the build from starting.
    if let Some(destination) = &request.destination {
        check_destinations(std::slice::from_ref(destination), &request.settings, policy)?;
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
                destinations: vec![destination.clone()],
                settings: request.settings.clone(),
                platforms: Vec::new(),
            },
            policy,
            daemon,
            destinations,
            cache,
            progress,
        )?),
    };
    Ok(Built { id, pushed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Format;
    use crate::model::Compression;
    use crate::policy::{AllowAll, Refusal};
    use crate::reference::Destination;
    use crate::testing::{Events, Harness, Memory, MemoryCache, MemoryRegistry};

    impl ImageBuilder for Memory {
        fn build(
            &mut self,
            request: &BuildRequest,
            output: &mut dyn FnMut(String),
        ) -> Result<Digest> {
            output(format!("building {}", request.tag));
            Ok(self.image.id.clone())
        }
    }

    #[test]
    fn a_build_reports_its_output_then_pushes_the_image_by_id() {
        let Harness {
            f,
            source: mut daemon,
            registry,
            ..
        } = Harness::default();
        let mut events = Events::default();
        let mut request = BuildPushRequest {
            build: BuildRequest {
                context: "ctx".into(),
                dockerfile: None,
                tag: "app:1".into(),
                build_args: vec![],
            },
            destination: Some("127.0.0.1:5000/team/app:1".into()),
            settings: Settings::new(Compression::Gzip, 6, Format::Oci, vec![], false).unwrap(),
        };
        let built = build_and_push(
            &request,
            &AllowAll,
            &mut daemon,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            &mut events,
        )
        .unwrap();
        assert_eq!(built.id, f.id);
        let pushed = built.pushed.unwrap();
        assert_eq!(
            pushed.digest,
            Digest::of(registry.0.borrow().manifest.as_ref().unwrap())
        );
        assert_eq!(events.0[0], Event::BuildOutput("building app:1".into()));
        assert_eq!(
            events.0[1],
            Event::Built {
                tag: "app:1".into(),
                id: f.id.clone()
            }
        );
        assert!(matches!(&events.0[2], Event::Started { image, .. } if image == f.id.as_str()));

        // A destination the push would refuse stops the build from starting.
        request.destination = Some("127.0.0.1:5000/Team/app:1".into());
        let mut events = Events::default();
        assert!(build_and_push(
            &request,
            &AllowAll,
            &mut daemon,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            &mut events,
        )
        .is_err());
        assert!(events.0.is_empty());
        // So does a destination the policy refuses.
        struct Nowhere;
        impl Policy for Nowhere {
            fn check_destination(&self, _: &Destination, _: &Settings) -> Result<(), Refusal> {
                Err(Refusal::new("nowhere", "no destination is allowed"))
            }
        }
        request.destination = Some("127.0.0.1:5000/team/app:1".into());
        let err = build_and_push(
            &request,
            &Nowhere,
            &mut daemon,
            &mut registry.clone(),
            &mut MemoryCache::default(),
            &mut events,
        )
        .unwrap_err();
        assert!(err.to_string().contains("rule nowhere"), "{err}");
        assert!(events.0.is_empty(), "not built");
        // Without a destination, only the build.
        request.destination = None;
        let built = build_and_push(
            &request,
            &AllowAll,
            &mut daemon,
            &mut MemoryRegistry::default(),
            &mut MemoryCache::default(),
            &mut Events::default(),
        )
        .unwrap();
        assert_eq!(built.pushed, None);
    }
}
