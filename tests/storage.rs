//! Integration tests for images with no daemon at all: `containers-storage:NAME` read from a
//! podman storage the test makes in a temp dir (vfs, through `CONTAINERS_STORAGE_CONF`), and the
//! fallback to it for a plain name when no Docker daemon is found anywhere; through podman, or
//! buildah when it is the only one installed. Pushed to the test
//! registry (`scripts/services.sh`) and read back by skopeo; the config digest is podman's
//! image ID.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::home::Home;
use support::*;

/// A containers-storage of the test's own: vfs graph and run roots in a temp dir, and a
/// containers.conf that needs neither systemd nor cgroups.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.join("graph").display(),
                root.join("run").display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("containers.conf"),
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n",
        )
        .unwrap();
        Self { dir }
    }

    /// The variables that point podman (and ocipush's podman) at this store.
    fn env(&self) -> Vec<(&'static str, String)> {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            ("CONTAINERS_STORAGE_CONF", path("storage.conf")),
            ("CONTAINERS_CONF", path("containers.conf")),
        ]
    }

    fn podman(&self, args: &[&str]) -> String {
        let mut c = Command::new("podman");
        c.args(args).envs(self.env());
        run_ok(&mut c)
    }

    /// `podman build` of a FROM scratch image with one file: (name, ID, diff IDs).
    fn build(&self, name: &str) -> (String, String, Vec<String>) {
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("file.txt"), name).unwrap();
        std::fs::write(
            context.path().join("Containerfile"),
            "FROM scratch\nCOPY file.txt /file.txt\nLABEL org.example.test=storage\n",
        )
        .unwrap();
        let image = format!("localhost/{name}:1");
        let context = context.path().display().to_string();
        self.podman(&["build", "-q", "-t", &image, &context]);
        let inspect: Value =
            serde_json::from_str(&self.podman(&["image", "inspect", &image])).unwrap();
        let id = format!("sha256:{}", inspect[0]["Id"].as_str().unwrap());
        let diff_ids = serde_json::from_value(inspect[0]["RootFS"]["Layers"].clone()).unwrap();
        (image, id, diff_ids)
    }

    fn graph(&self) -> PathBuf {
        self.dir.path().join("graph")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // vfs layers can hold read-only directories: make them removable.
        let _ = Command::new("chmod")
            .args(["-R", "u+rwX"])
            .arg(self.graph())
            .status();
    }
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The source image the (unsigned) provenance of `digest` in `repo` names, found through the
/// referrers tag schema.
fn provenance_source(registry: &str, repo: &str, digest: &str) -> Value {
    let get = |path: String, accept| {
        let (status, body) = registry_get(registry, repo, &path, accept);
        assert_eq!(status, 200, "{repo}/{path}");
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let hex = digest.trim_start_matches("sha256:");
    let index = get(
        format!("manifests/sha256-{hex}"),
        Some("application/vnd.oci.image.index.v1+json"),
    );
    let artifact = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let artifact = get(format!("manifests/{artifact}"), Some(OCI_MANIFEST));
    let statement = get(
        format!(
            "blobs/{}",
            artifact["layers"][0]["digest"].as_str().unwrap()
        ),
        None,
    );
    statement["predicate"]["buildDefinition"]["resolvedDependencies"][0].clone()
}

#[test]
fn containers_storage_is_read_through_podman() {
    let s = services();
    let store = Store::new();
    let name = unique("containers-storage");
    let (image, id, diff_ids) = store.build(&name);
    let repo = format!("ocipush-test/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let env = store.env();
    // The test daemon stays named (DOCKER_HOST): the prefix alone sends it to the store.
    let pushed = push_with(
        &format!("containers-storage:{image}"),
        &dest,
        "json",
        &env_refs(&env),
    );
    let digest = pushed.expect_success(&dest);
    verify_pushed(&dest, &digest, &id, &diff_ids);
    assert!(
        !pushed.stderr.contains("\"event\":\"source\""),
        "a named store is no fallback: {}",
        pushed.stderr
    );
}

#[test]
fn a_plain_name_falls_back_to_containers_storage_when_no_daemon_is_found() {
    let s = services();
    let store = Store::new();
    let home = Home::new();
    let name = unique("fallback");
    let (image, id, diff_ids) = store.build(&name);
    let repo = format!("ocipush-test/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let env = store.env();
    let pushed = home.push(&image, &dest, "plain", &["--provenance"], &env_refs(&env));
    let digest = pushed.expect_success(&dest);
    verify_pushed(&dest, &digest, &id, &diff_ids);
    // Provenance names the store, not a daemon: there is none.
    let source = provenance_source(&s.registry, &repo, &digest);
    assert_eq!(
        source["uri"],
        format!("containers-storage:{image}"),
        "{source}"
    );
    assert_eq!(source["annotations"]["source"], "containers-storage");
    assert!(source["annotations"].get("daemon").is_none(), "{source}");
    let said: Vec<&str> = pushed
        .stderr
        .lines()
        .filter(|l| l.starts_with("no Docker daemon found"))
        .collect();
    let home = home.path().display();
    assert_eq!(
        said,
        [format!(
            "no Docker daemon found (no socket at unix:///var/run/docker.sock, unix://{home}/run/docker.sock, unix://{home}/.docker/run/docker.sock, unix://{home}/.colima/default/docker.sock): reading {image} from containers-storage with podman"
        )],
        "{}",
        pushed.stderr
    );
}

#[test]
fn an_image_the_store_lacks_is_one_line_and_nothing_is_pushed() {
    let s = services();
    let store = Store::new();
    let name = unique("storage-missing");
    let repo = format!("ocipush-test/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let env = store.env();
    let line = push_with(
        "containers-storage:localhost/no-such-image:1",
        &dest,
        "none",
        &env_refs(&env),
    )
    .expect_failure();
    assert!(
        line.contains(
            "reading image localhost/no-such-image:1 from containers-storage with podman: exit status: 125"
        ),
        "{line}"
    );
    assert_tag_absent(&s.registry, &repo, "v1");
    // No podman or buildah on PATH: said so, before anything else.
    let bare = tempfile::tempdir().unwrap();
    let path = bare.path().display().to_string();
    let mut env = env_refs(&env);
    env.push(("PATH", &path));
    let line =
        push_with("containers-storage:localhost/app:1", &dest, "none", &env).expect_failure();
    assert!(
        line.contains(
            "containers-storage, which ocipush reads with podman or buildah: neither is on PATH"
        ),
        "{line}"
    );
}

#[test]
fn with_only_buildah_installed_it_reads_the_store() {
    let s = services();
    let store = Store::new();
    let name = unique("buildah");
    let (image, id, diff_ids) = store.build(&name);
    let repo = format!("ocipush-test/{name}");
    let env = store.env();
    let source = format!("containers-storage:{image}");
    let dest = format!("{}/{repo}:podman", s.registry);
    let by_podman = push_with(&source, &dest, "none", &env_refs(&env)).expect_success(&dest);
    // A PATH holding buildah alone.
    let bin = tempfile::tempdir().unwrap();
    let buildah = run_ok(Command::new("sh").args(["-c", "command -v buildah"]));
    std::os::unix::fs::symlink(&buildah, bin.path().join("buildah")).unwrap();
    let path = bin.path().display().to_string();
    let mut env = env_refs(&env);
    env.push(("PATH", &path));
    let dest = format!("{}/{repo}:v1", s.registry);
    let digest = push_with(&source, &dest, "none", &env).expect_success(&dest);
    verify_pushed(&dest, &digest, &id, &diff_ids);
    assert_eq!(
        digest, by_podman,
        "buildah's export gives the manifest podman's does"
    );
}
