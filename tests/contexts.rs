//! Integration tests for finding the daemon as the Docker CLI does, with `DOCKER_HOST` unset: a
//! context made by `docker context create` and made current by `docker context use`, one named
//! by `DOCKER_CONTEXT` or `--context`, and the sockets rootless Docker, Docker Desktop and Colima
//! use, a daemon over TLS (`DOCKER_TLS_VERIFY`, a context's TLS material, `SkipTLSVerify`);
//! and the one line an unreachable daemon gets. Each push goes to the test daemon
//! (`scripts/services.sh`) through what names it, and is read back by skopeo.

mod support;

use support::home::Home;
use support::tls_daemon::TlsDaemon;
use support::*;

/// A one-layer image in the test daemon: (tag, image ID, diff IDs).
fn small_image(name: &str) -> (String, String, Vec<String>) {
    let tag = format!("{name}:1.0");
    build_image(&tag, None, &[("ctx.txt", name.as_bytes())]);
    (tag.clone(), image_id(&tag), rootfs_layers(&tag))
}

/// Pushes `tag` as `args` and `envs` say and reads it back through skopeo.
fn pushes_through(home: &Home, name: &str, args: &[&str], envs: &[(&str, &str)]) {
    let s = services();
    let (tag, id, diff_ids) = small_image(name);
    let repo = format!("ocipush-test/{name}");
    let dest = format!("{}/{repo}:v1", s.registry);
    let digest = home
        .push(&tag, &dest, "none", args, envs)
        .expect_success(&dest);
    verify_pushed(&dest, &digest, &id, &diff_ids);
}

#[test]
fn the_current_context_names_the_daemon() {
    let home = Home::new();
    let name = unique("current-context");
    home.context_for_test_daemon(&name);
    home.docker_cli(&["context", "use", &name]);
    // What `docker context use` wrote is what ocipush reads: ~/.docker/config.json.
    let config = std::fs::read_to_string(home.path().join(".docker/config.json")).unwrap();
    assert!(config.contains(&name), "{config}");
    pushes_through(&home, &name, &[], &[]);
}

#[test]
fn docker_context_and_the_flag_name_a_context() {
    let home = Home::new();
    let name = unique("named-context");
    home.context_for_test_daemon(&name);
    pushes_through(&home, &name, &[], &[("DOCKER_CONTEXT", &name)]);
    // --context wins over DOCKER_HOST and DOCKER_CONTEXT, as docker's does.
    let other = unique("flag");
    home.context_for_test_daemon(&other);
    pushes_through(
        &home,
        &other,
        &["--context", &other],
        &[
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            ("DOCKER_CONTEXT", "no-such-context"),
        ],
    );
}

#[test]
fn docker_host_wins_over_docker_context_and_the_current_context() {
    let home = Home::new();
    let name = unique("host-wins");
    home.create_context(&name, "unix:///nonexistent/ctx.sock");
    home.docker_cli(&["context", "use", &name]);
    let docker_host = services().docker_host;
    pushes_through(
        &home,
        &name,
        &[],
        &[("DOCKER_HOST", &docker_host), ("DOCKER_CONTEXT", &name)],
    );
}

#[test]
fn rootless_dockers_socket_is_found_when_nothing_names_a_daemon() {
    let home = Home::new();
    std::os::unix::fs::symlink(
        Home::daemon_socket(),
        home.runtime_dir().join("docker.sock"),
    )
    .unwrap();
    pushes_through(&home, &unique("rootless"), &[], &[]);
}

#[test]
fn an_unreachable_daemon_is_one_line_naming_what_was_tried() {
    let s = services();
    let home = Home::new();
    let name = unique("unreachable");
    let dest = format!("{}/ocipush-test/{name}:v1", s.registry);
    home.create_context(&name, "unix:///nonexistent/ctx.sock");
    let line = home
        .push("app:1", &dest, "none", &[], &[("DOCKER_CONTEXT", &name)])
        .expect_failure();
    assert!(
        line.contains(&format!(
            "cannot reach the Docker daemon at unix:///nonexistent/ctx.sock (context {name} from DOCKER_CONTEXT)"
        )),
        "{line}"
    );
    let line = home
        .push(
            "app:1",
            &dest,
            "none",
            &["--context", "no-such-context"],
            &[],
        )
        .expect_failure();
    assert!(
        line.contains("Docker context no-such-context from --context does not exist"),
        "{line}"
    );

    // Nothing names a daemon; Colima's socket is there but nothing answers on it.
    let colima = home.path().join(".colima/default");
    std::fs::create_dir_all(&colima).unwrap();
    std::fs::write(colima.join("docker.sock"), "").unwrap();
    let line = home.push("app:1", &dest, "none", &[], &[]).expect_failure();
    let tried = format!(
        "cannot reach the Docker daemon at unix://{home}/.colima/default/docker.sock (no socket at unix:///var/run/docker.sock, unix://{home}/run/docker.sock, unix://{home}/.docker/run/docker.sock)",
        home = home.path().display()
    );
    assert!(line.contains(&tried), "{line}");
    assert_tag_absent(&s.registry, &format!("ocipush-test/{name}"), "v1");
}

#[test]
fn a_daemon_over_tls_through_the_environment_or_a_context() {
    let home = Home::new();
    let daemon = TlsDaemon::start(&Home::daemon_socket());
    let certs = daemon.certs().display().to_string();
    let host = daemon.host();
    let name = unique("tls-env");
    pushes_through(
        &home,
        &name,
        &[],
        &[
            ("DOCKER_HOST", &host),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", &certs),
        ],
    );

    // docker context create copies the files into contexts/tls/<sha256>/docker/.
    let name = unique("tls-context");
    let file = |f: &str| daemon.file(f).display().to_string();
    home.docker_cli(&[
        "context",
        "create",
        &name,
        "--docker",
        &format!(
            "host={host},ca={},cert={},key={}",
            file("ca.pem"),
            file("cert.pem"),
            file("key.pem")
        ),
    ]);
    pushes_through(&home, &name, &["--context", &name], &[]);

    // SkipTLSVerify: no CA, the daemon's certificate taken as it is.
    let name = unique("tls-skip");
    home.docker_cli(&[
        "context",
        "create",
        &name,
        "--docker",
        &format!(
            "host={host},cert={},key={},skip-tls-verify=true",
            file("cert.pem"),
            file("key.pem")
        ),
    ]);
    pushes_through(&home, &name, &[], &[("DOCKER_CONTEXT", &name)]);
}

#[test]
fn a_tls_daemon_that_is_not_trusted_or_wants_a_certificate_is_one_line() {
    let s = services();
    let home = Home::new();
    let daemon = TlsDaemon::start(&Home::daemon_socket());
    let host = daemon.host();
    let dest = format!("{}/ocipush-test/{}:v1", s.registry, unique("tls-refused"));
    // Only the CA: the daemon wants a client certificate.
    let ca_only = tempfile::tempdir().unwrap();
    std::fs::copy(daemon.file("ca.pem"), ca_only.path().join("ca.pem")).unwrap();
    let ca_only = ca_only.path().display().to_string();
    let tls = |certs: &str| {
        home.push(
            "app:1",
            &dest,
            "none",
            &[],
            &[
                ("DOCKER_HOST", &host),
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", certs),
            ],
        )
        .expect_failure()
    };
    let line = tls(&ca_only);
    assert!(
        line.contains(&format!("cannot reach the Docker daemon at {host}: ")),
        "{line}"
    );
    // No CA: the daemon's certificate is not trusted.
    let none = tempfile::tempdir().unwrap();
    let line = tls(&none.path().display().to_string());
    assert!(
        line.contains(&format!("cannot reach the Docker daemon at {host}: ")),
        "{line}"
    );
}
