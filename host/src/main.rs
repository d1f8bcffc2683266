//! `ocipush`: push an image from a Docker daemon to an OCI registry. The policy core runs as a
//! sandboxed WASI guest (`guest/`); this binary lends it the daemon, credentials, the registry
//! and a progress sink, as `wit/ocipush.wit` describes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ocipush::bindings::ocipush::core::docker::BuildRequest;
use ocipush::bindings::ocipush::core::registry::Compression;
use ocipush::bindings::ocipush::core::types::Platform;
use ocipush::bindings::{ChosenSettings, Evidence, ManifestFormat, PublishSettings};
use ocipush::registries_conf::RegistriesConf;
use ocipush::runner::{self, Guest, Images, Job};
use ocipush::{cache, credentials, files, interrupt, progress, registry, signing, tls};
use ocipush_guest::reference::Destination;
use tracing_subscriber::EnvFilter;

/// `ocipush --version`: the host, the contract it offers and the guest it embeds.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncontract ocipush:core@",
    env!("OCIPUSH_WIT_VERSION"),
    "\nguest sha256:",
    env!("OCIPUSH_GUEST_SHA256"),
    " (embedded)"
);

/// What `--help` and the man page say after the options.
const AFTER_HELP: &str = "\
Exit status: 0 on success; 1 when the push (or any command) fails, after one line \
`ocipush: error: ...` on stderr; 2 for a usage error; 130 after SIGINT (Ctrl-C), 143 after SIGTERM.

Environment: DOCKER_HOST (the daemon), OCIPUSH_LOG (a log filter such as `debug` or \
`ocipush=debug`; -v means `ocipush=debug`), NO_COLOR (no colours in logs), REGISTRY_AUTH_FILE \
(as --authfile), DOCKER_CONFIG, CONTAINERS_REGISTRIES_CONF, OCIPUSH_CACHE_DIR, \
OCIPUSH_CERTS_DIRS, OCIPUSH_GUEST_DIGEST.";

#[derive(Parser)]
#[command(name = "ocipush", version = VERSION, about, after_long_help = AFTER_HELP)]
struct Cli {
    /// Print only the pushed references on stdout and nothing on stderr, unless it fails.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log what ocipush does on stderr (debug level; never a secret).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Run this guest component instead of the embedded one.
    #[arg(long, global = true, value_name = "PATH")]
    guest: Option<PathBuf>,
    /// Refuse to run any guest whose sha256 is not this (sha256:HEX), before any traffic.
    #[arg(
        long,
        global = true,
        env = "OCIPUSH_GUEST_DIGEST",
        value_name = "DIGEST"
    )]
    guest_digest: Option<String>,
    /// The Docker context naming the daemon (as docker --context), over DOCKER_HOST,
    /// DOCKER_CONTEXT and the current context of the Docker CLI's config.json.
    #[arg(long = "context", global = true, value_name = "NAME")]
    docker_context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push an image from the Docker daemon, containers-storage, a tarball or an OCI layout to
    /// one or more registries and OCI layouts. With several destinations the image is exported
    /// once, each repository gets each blob once, and the tags are written, in the order given,
    /// only once every destination holds every blob: one failing leaves no tag anywhere.
    Push {
        /// The image: in the Docker daemon (--context, DOCKER_HOST, DOCKER_CONTEXT, the current
        /// Docker context, else the usual sockets), name:tag, name@digest or image ID; in
        /// podman's or buildah's storage, containers-storage:NAME (also where a plain name is
        /// read when no Docker daemon is found anywhere); or a docker save tarball,
        /// docker-archive:PATH[:NAME:TAG or :@N when it holds several]; or an OCI image layout
        /// directory, oci:DIR[:TAG] (TAG needed when it holds several).
        source: String,
        /// Where to push, one or more: host[:port]/repository[:tag] (a registry; loopback hosts
        /// get plain HTTP unless they ask for HTTPS, all others HTTPS), or oci:DIR[:TAG] (an OCI
        /// image layout directory, created if missing; the tag defaults to latest). Each gets
        /// the same manifest and one DEST@DIGEST line on stdout.
        #[arg(required = true, num_args = 1.., value_name = "DEST")]
        destinations: Vec<String>,
        /// The platforms to push of a multi-platform image (one whose ID names an index, or a
        /// tarball or layout holding one): os/arch[/variant], repeatable or comma-separated.
        /// Default: every platform, under the image's own index. One platform puts its
        /// manifest under the tag; several, a new index of them. A platform the source holds
        /// only the index entry of is refused before any upload.
        #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
        platforms: Vec<String>,
        #[command(flatten)]
        options: PushOptions,
    },
    /// Push one image per platform and an image index naming them (a multi-platform image):
    /// each image's manifest is written by digest, the index under DEST's tag, last. One
    /// destination (several are for push).
    Index {
        /// Where the index goes: host[:port]/repository[:tag].
        destination: String,
        /// The images in the daemon, one per platform (os/architecture/variant from each
        /// image's config), in the order the index lists them.
        #[arg(required = true, num_args = 1..)]
        sources: Vec<String>,
        #[command(flatten)]
        options: PushOptions,
    },
    /// Build an image from a context directory with the daemon's classic builder (as
    /// DOCKER_BUILDKIT=0 docker build; .dockerignore honoured), streaming its output, and with
    /// --push push it. Prints the image ID, or DEST@DIGEST when pushed.
    Build {
        /// The context directory.
        context: PathBuf,
        /// The name:tag the image gets in the daemon.
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        tag: String,
        /// The Dockerfile, as a path inside the context (default Dockerfile).
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: Option<String>,
        /// A build argument KEY=VALUE (for ARG); repeatable.
        #[arg(long = "build-arg", value_name = "KEY=VALUE")]
        build_args: Vec<String>,
        /// Push the built image there (as `ocipush push`, one destination), with the options
        /// below.
        #[arg(long, value_name = "DEST")]
        push: Option<String>,
        #[command(flatten)]
        options: PushOptions,
    },
    /// Verify a pushed image: exit 0 only when a signature by KEY (cosign's, under the
    /// sha256-HEX.sig tag) covers the digest DEST's tag names and names DEST's repository (or
    /// layout); print which guest's provenance refers to it. One line and exit 1 otherwise.
    Verify {
        /// The image: host[:port]/repository[:tag] (a registry), or oci:DIR[:TAG] (an OCI image
        /// layout a push wrote; the tag defaults to latest).
        destination: String,
        /// The ECDSA P-256 public key (PEM, PUBLIC KEY) the signature must verify with.
        #[arg(long, value_name = "PUB.pem")]
        key: PathBuf,
        #[command(flatten)]
        registry: RegistryOptions,
    },
    /// Audit the guest component: show it, or write it out.
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// Print a completion script for SHELL on stdout, e.g.
    /// `ocipush completions bash > /etc/bash_completion.d/ocipush`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout, e.g. `ocipush man | man -l -`.
    Man,
}

/// How `push` and `index` publish.
#[derive(clap::Args)]
struct PushOptions {
    /// Write the manifest digest (sha256:...) to this file on success.
    #[arg(long)]
    digest_file: Option<PathBuf>,
    /// Progress on stderr: bars on a terminal and plain lines otherwise (auto), or JSON lines.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::Mode,
    /// How layers are compressed for the registry (default gzip). Given explicitly, or with a
    /// level, a source's own manifest (Docker's containerd store) is rebuilt, not kept.
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// Compression level: gzip 1-9 (default 1: ISA-L's igzip, the fastest; 2-9: libdeflate's
    /// levels, smaller and slower), zstd 1-19 (default 3). Part of a layer's digest, like the
    /// compression.
    #[arg(long)]
    compression_level: Option<u32>,
    /// The manifest format: OCI (default), or Docker's v2 schema 2 for older registries and
    /// tools (no zstd, no annotations).
    /// Given explicitly and other than a source's own manifest's, that manifest is rebuilt.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// An annotation KEY=VALUE on the manifest (and index); repeatable. Added to those taken
    /// from the image config (org.opencontainers.image.created and org.opencontainers.image.*
    /// labels), replacing one with the same key. OCI format only.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// Before tagging, write the manifest by digest, read it back and check that every blob it
    /// names is in the registry with its size; fail, with no tag written, if anything is off.
    #[arg(long)]
    verify: bool,
    /// Stop the guest when it computes this long without calling the host (a push calls
    /// the host at least every few milliseconds).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    guest_cpu_limit: u64,
    /// The user name for the destination registry; the password is read from stdin.
    /// Takes precedence over every auth file.
    #[arg(short = 'u', long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password (or token) for --username from the first line of stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    #[command(flatten)]
    registry: RegistryOptions,
    /// The largest piece of a layer sent in one request, e.g. 4M or 512K (at least 256K).
    /// Smaller chunks are used on their own when a registry refuses large ones.
    #[arg(long, default_value_t = Size(registry::DEFAULT_CHUNK_SIZE), value_parser = parse_size, value_name = "SIZE")]
    chunk_size: Size,
    /// How many layers may be uploading at once: the guest reads the next layer while the
    /// ones it has read are still compressed and sent. Default: the number of cores, from 2
    /// to 4 (each extra upload costs a sender and its spool on disk, not memory).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    jobs: Option<u32>,
    /// After the tag, publish SLSA provenance v1 (an in-toto statement naming the source image,
    /// the settings and this guest's digest) as an OCI artifact referring to the pushed
    /// manifest: through the registry's referrers API, else under the referrers tag schema's
    /// sha256-HEX tag; or into the OCI layout.
    #[arg(long)]
    provenance: bool,
    /// After the tag, sign the pushed digest with this ECDSA P-256 private key (PKCS#8 or SEC1
    /// PEM) as cosign does (under sha256-HEX.sig, beside signatures already there); with
    /// --provenance, the statement is a DSSE envelope signed with it.
    #[arg(long, value_name = "PATH")]
    sign_key: Option<PathBuf>,
    /// The passphrase of an encrypted --sign-key (ENCRYPTED PRIVATE KEY): this file's first line.
    #[arg(long, value_name = "PATH", requires = "sign_key")]
    sign_key_passphrase_file: Option<PathBuf>,
}

/// How a command reaches registries: the same flags for every command that talks to one.
#[derive(clap::Args)]
struct RegistryOptions {
    /// Credentials from this auth file (podman's auth.json format, or Docker's config.json)
    /// before Docker's config.json and podman's default auth.json; it must exist. Default:
    /// REGISTRY_AUTH_FILE.
    #[arg(long, value_name = "PATH")]
    authfile: Option<PathBuf>,
    /// Speak plain HTTP to the destination registry, whatever its host (no TLS at all).
    #[arg(long)]
    plain_http: bool,
    /// Also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Do not verify registries' TLS certificates (e.g. a self-signed development registry).
    #[arg(long)]
    insecure: bool,
    /// How many times a failed registry request is tried again (lost connections, 408, 429
    /// and 5xx), with exponential backoff and jitter, honouring Retry-After.
    #[arg(long, default_value_t = 5, value_name = "N")]
    retries: u32,
}

impl RegistryOptions {
    /// TLS and plain HTTP per registry: these flags over registries.conf.
    fn tls(&self) -> Result<tls::TlsOptions> {
        Ok(tls::TlsOptions {
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
            plain_http: self.plain_http,
            registries: RegistriesConf::load()?,
        })
    }

    /// The credentials: `--username`'s when given, then the auth files.
    fn credentials(&self, cli: Option<credentials::Credential>) -> Result<credentials::Sources> {
        Ok(credentials::Sources::new(cli, self.authfile.clone())?)
    }
}

/// Layer uploads in flight unless `--jobs` says otherwise: one per core, at least two (so the
/// next layer is read while the last one is sent) and at most four.
fn default_jobs() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4) as u32)
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Show the guest in use: where it comes from, its digest, the contract it speaks, and its
    /// imports and exports.
    Info,
    /// Write the guest component to PATH, to inspect it or compare it with a rebuild.
    Export { path: PathBuf },
    /// Compile the component on stdin into the cache: what a push runs as a child process
    /// when its guest is not compiled yet, so that the compiler's memory is not the push's.
    #[command(hide = true)]
    Compile,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Oci,
    Docker,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

/// Logs go to stderr: `OCIPUSH_LOG` is a filter of its own; otherwise warnings, everything of
/// ocipush's with `-v`, nothing with `-q`. Coloured only on a terminal, and never with
/// `NO_COLOR` (https://no-color.org: set and not empty).
fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_from_env("OCIPUSH_LOG").unwrap_or_else(|_| {
        EnvFilter::new(match (cli.quiet, cli.verbose) {
            (true, _) => "off",
            (false, true) => "warn,ocipush=debug",
            (false, false) => "warn",
        })
    });
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    ocipush::memory::configure();
    // A usage error exits here, with 2.
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the cause chain: logs and CI output stay greppable.
            let message = format!("{e:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("ocipush: error: {message}");
            interrupt::exit_status().map_or(ExitCode::FAILURE, ExitCode::from)
        }
    }
}

/// One manual page for every command, from the same definitions as `--help`: the top-level
/// page, then a section per subcommand with its synopsis, description and options.
fn manual_page() -> std::io::Result<Vec<u8>> {
    use clap_mangen::Man;
    // Built, so subcommands know their full names (`ocipush push`); the title takes the short
    // version (the long one spans lines).
    let mut cli = Cli::command().version(env!("CARGO_PKG_VERSION"));
    cli.build();
    let man = Man::new(cli.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    // clap's own `help` subcommands add nothing to a manual.
    let subcommands = |command: &clap::Command| -> Vec<clap::Command> {
        command
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .cloned()
            .collect()
    };
    let mut commands = subcommands(&cli);
    while !commands.is_empty() {
        // The global options are listed once, at the top.
        let command = commands.remove(0).mut_args(|arg| {
            if arg.is_global_set() {
                arg.hide(true)
            } else {
                arg
            }
        });
        let name = command
            .get_bin_name()
            .unwrap_or(command.get_name())
            .to_uppercase();
        let mut section = Vec::new();
        let man = Man::new(command.clone());
        man.render_synopsis_section(&mut section)?;
        man.render_description_section(&mut section)?;
        man.render_options_section(&mut section)?;
        let section = String::from_utf8_lossy(&section)
            .replacen(".SH SYNOPSIS", &format!(".SH \"{name}\""), 1)
            .replace(".SH DESCRIPTION\n", ".PP\n")
            .replace(".SH OPTIONS", ".SS Options");
        page.extend_from_slice(section.as_bytes());
        commands.splice(0..0, subcommands(&command));
    }
    let mut extra = Vec::new();
    man.render_extra_section(&mut extra)?;
    let extra = String::from_utf8_lossy(&extra).replacen(
        ".SH EXTRA",
        ".SH \"EXIT STATUS AND ENVIRONMENT\"",
        1,
    );
    page.extend_from_slice(extra.as_bytes());
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// A byte count as `--chunk-size` takes and shows it: digits with an optional K, M or G suffix
/// (powers of 1024).
#[derive(Clone, Copy, Debug)]
struct Size(u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Size(bytes) = *self;
        match [(30, 'G'), (20, 'M'), (10, 'K')]
            .into_iter()
            .find(|(shift, _)| bytes != 0 && bytes % (1 << shift) == 0)
        {
            Some((shift, unit)) => write!(f, "{}{unit}", bytes >> shift),
            None => write!(f, "{bytes}"),
        }
    }
}

/// A `Size` from text such as 16M, 512K or 1048576, at least the smallest chunk.
fn parse_size(text: &str) -> Result<Size, String> {
    let upper = text.trim().to_ascii_uppercase();
    let digits = upper.trim_end_matches(['K', 'M', 'G', 'B', 'I']);
    let unit = match upper[digits.len()..].chars().next() {
        None => 1,
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size such as 16M, 512K or 1048576"
            ))
        }
    };
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is not a size such as 16M, 512K or 1048576"))?;
    if size < registry::MIN_CHUNK_SIZE {
        return Err(format!(
            "{text} is below the smallest chunk, {}K",
            registry::MIN_CHUNK_SIZE >> 10
        ));
    }
    Ok(Size(size))
}

/// The first line of stdin, without its line ending, like `docker login --password-stdin`.
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin (--password-stdin)")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("--password-stdin: stdin held no password");
    }
    Ok(password.to_string())
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ocipush",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Man => {
            let page = manual_page().context("rendering the manual page")?;
            std::io::Write::write_all(&mut std::io::stdout(), &page)
                .context("writing the manual page")?;
            return Ok(());
        }
        _ => {}
    }
    let verbosity = if cli.quiet {
        progress::Verbosity::Quiet
    } else {
        progress::Verbosity::Normal
    };
    let guest = Guest::load(cli.guest.as_deref(), cli.guest_digest.as_deref())?;
    let daemon = cli.docker_context;
    match cli.command {
        // Answered above, without loading the guest.
        Command::Completions { .. } | Command::Man => {}
        Command::Push {
            source,
            destinations,
            platforms,
            options,
        } => publish(
            &rt,
            &guest,
            daemon,
            Work::Push(Images::One {
                source: &source,
                // Checked here, so a typo is one line before any traffic.
                platforms: &ocipush_guest::platforms::parse_platforms(&platforms)
                    .context("--platform")?
                    .into_iter()
                    .map(|p| Platform {
                        os: p.os,
                        architecture: p.architecture,
                        variant: p.variant,
                    })
                    .collect::<Vec<_>>(),
            }),
            &destinations,
            options,
            verbosity,
        )?,
        Command::Index {
            destination,
            sources,
            options,
        } => publish(
            &rt,
            &guest,
            daemon,
            Work::Push(Images::Index(&sources)),
            std::slice::from_ref(&destination),
            options,
            verbosity,
        )?,
        Command::Build {
            context,
            tag,
            file,
            build_args,
            push,
            options,
        } => {
            let request = BuildRequest {
                context: context
                    .to_str()
                    .with_context(|| {
                        format!("build context {}: not a UTF-8 path", context.display())
                    })?
                    .to_string(),
                dockerfile: file,
                tag,
                build_args: build_args
                    .iter()
                    .map(|arg| match arg.split_once('=') {
                        Some((key, value)) if !key.is_empty() => {
                            Ok((key.to_string(), value.to_string()))
                        }
                        _ => anyhow::bail!("--build-arg {arg:?} is not KEY=VALUE"),
                    })
                    .collect::<Result<_>>()?,
            };
            let destination = push.clone().unwrap_or_default();
            publish(
                &rt,
                &guest,
                daemon,
                Work::Build(&request, push.is_some()),
                std::slice::from_ref(&destination),
                options,
                verbosity,
            )?
        }
        Command::Verify {
            destination,
            key,
            registry,
        } => {
            let tls = registry.tls()?;
            let credentials = registry.credentials(None)?;
            let retries = registry.retries;
            interrupt::catch(rt.handle()).context("catching SIGINT and SIGTERM")?;
            let runtime = interrupt::Runtime::new(rt.handle().clone());
            let verified = ocipush::verify::verify(&runtime, &destination, &key, |target| {
                let scheme = tls.scheme_for(&target.registry, &target.repository);
                let http = tls
                    .client_for(&target.registry, scheme)
                    .map_err(ocipush::verify::Error::Client)?;
                let policy = registry::retry::Policy {
                    retries,
                    notices: progress::Notices::none(),
                };
                let credential = credentials.lookup(&target.registry, &target.repository);
                let opened = runtime.block_on(registry::Repository::open(
                    http,
                    target.registry.clone(),
                    target.repository.clone(),
                    credential,
                    scheme,
                    policy,
                ))??;
                Ok(opened)
            })?;
            print!("{verified}");
        }
        Command::Guest {
            command: GuestCommand::Info,
        } => {
            print!("{}", runner::describe(&guest, cache::dir().as_deref())?);
        }
        Command::Guest {
            command: GuestCommand::Compile,
        } => {
            let dir = cache::dir().context("no cache directory to compile the guest into")?;
            runner::compile_stdin_into(&dir)?;
        }
        Command::Guest {
            command: GuestCommand::Export { path },
        } => {
            files::write_atomic(&path, &guest.bytes)
                .with_context(|| format!("writing the guest to {}", path.display()))?;
            println!("{} {}", guest.digest, path.display());
        }
    }
    Ok(())
}

/// What `publish` has the guest do.
enum Work<'a> {
    Push(Images<'a>),
    /// Build, then push to the destination when the flag says so.
    Build(&'a BuildRequest, bool),
}

/// Runs the guest on one image, an index or a build, and reports what was published: one
/// `DEST@DIGEST` line per destination, in the order given.
fn publish(
    rt: &tokio::runtime::Runtime,
    guest: &Guest,
    docker_context: Option<String>,
    work: Work<'_>,
    destinations: &[String],
    options: PushOptions,
    verbosity: progress::Verbosity,
) -> Result<()> {
    let chosen = ChosenSettings {
        compression: options.compression.is_some() || options.compression_level.is_some(),
        format: options.format.is_some(),
    };
    let (compression, default_level) = match options.compression.unwrap_or(CompressionArg::Gzip) {
        CompressionArg::Gzip => (Compression::Gzip, 1),
        CompressionArg::Zstd => (Compression::Zstd, 3),
        CompressionArg::None => (Compression::None, 0),
    };
    let cli_credential = match options.username {
        Some(username) => Some(credentials::Credential::new(
            &username_registry(destinations)?,
            &username,
            &read_password()?,
        )),
        None => None,
    };
    let job = Job {
        destinations,
        settings: PublishSettings {
            compression,
            level: options.compression_level.unwrap_or(default_level),
            format: match options.format.unwrap_or(FormatArg::Oci) {
                FormatArg::Oci => ManifestFormat::Oci,
                FormatArg::Docker => ManifestFormat::Docker,
            },
            // Checked here, so a typo is one line before any traffic.
            annotations: options
                .annotations
                .iter()
                .map(|a| ocipush_guest::manifest::parse_annotation(a).context("--annotation"))
                .collect::<Result<_>>()?,
            verify: options.verify,
            chosen,
            jobs: options.jobs.unwrap_or_else(default_jobs),
            evidence: Evidence {
                provenance: options.provenance,
                guest_digest: guest.digest.clone(),
            },
        },
        compute_limit: std::time::Duration::from_secs(options.guest_cpu_limit),
        tls: options.registry.tls()?,
        transfer: registry::Transfer {
            retries: options.registry.retries,
            chunk_size: options.chunk_size.0,
        },
        docker_context,
        credentials: options.registry.credentials(cli_credential)?,
        // Loaded before any traffic: a key that does not load stops the push here.
        signing_key: match &options.sign_key {
            Some(path) => Some(std::sync::Arc::new(
                signing::Key::load(path, options.sign_key_passphrase_file.as_deref())
                    .context("--sign-key")?,
            )),
            None => None,
        },
    };
    interrupt::catch(rt.handle()).context("catching SIGINT and SIGTERM")?;
    // The guest runs here, outside the runtime: its host calls block on the runtime.
    let progress = progress::Progress::new(options.progress, verbosity);
    let pushed = match work {
        Work::Push(images) => runner::push(rt.handle().clone(), progress, guest, &job, images)?,
        Work::Build(request, push) => {
            let built = runner::build(rt.handle().clone(), progress, guest, &job, request, push)?;
            match built.pushed {
                Some(pushed) => pushed,
                None => {
                    // Built only: its ID, as `docker build -q` prints it.
                    println!("{}", built.image_id);
                    return Ok(());
                }
            }
        }
    };
    if let Some(path) = options.digest_file {
        std::fs::write(&path, &pushed.digest)
            .with_context(|| format!("writing the digest to {}", path.display()))?;
    }
    for destination in destinations {
        println!("{}@{}", canonical(destination)?, pushed.digest);
    }
    Ok(())
}

/// The registry `--username` is for: the one the registry destinations name. Parsed as the
/// guest parses them, so the credential goes to the registry the guest will open; a bad
/// destination is refused here, before any traffic.
fn username_registry(destinations: &[String]) -> Result<String> {
    let mut registries: Vec<String> = Vec::new();
    for destination in destinations {
        if let Destination::Registry(target) = Destination::parse(destination)? {
            if !registries.contains(&target.registry) {
                registries.push(target.registry);
            }
        }
    }
    match &registries[..] {
        [registry] => Ok(registry.clone()),
        [] if destinations.len() == 1 => anyhow::bail!(
            "--username is for registries: destination {} is an OCI layout directory",
            destinations[0]
        ),
        [] => anyhow::bail!("--username is for registries: every destination is an OCI layout directory"),
        [..] => anyhow::bail!(
            "--username is for one registry, but the destinations are on {}: give the credentials in an auth file (--authfile) instead",
            registries.join(" and ")
        ),
    }
}

/// A destination as stdout names it, so scripts can use it as it is: without `docker://`, and
/// with its tag written out (`latest` by default); a Docker Hub name with its registry.
fn canonical(destination: &str) -> Result<String> {
    Ok(match Destination::parse(destination)? {
        Destination::Registry(target) => format!("{}:{}", target.repository_url(), target.tag),
        Destination::Layout(layout) => format!("oci:{}:{}", layout.path, layout.tag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_show_in_the_largest_whole_one() {
        assert_eq!(parse_size("16M").unwrap().0, 16 << 20);
        assert_eq!(parse_size("512k").unwrap().0, 512 << 10);
        assert_eq!(parse_size("1048576").unwrap().0, 1 << 20);
        assert!(parse_size("255K").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(Size(registry::DEFAULT_CHUNK_SIZE).to_string(), "16M");
        assert_eq!(Size(1536 << 10).to_string(), "1536K");
        assert_eq!(Size(1 << 30).to_string(), "1G");
        assert_eq!(Size(300_001).to_string(), "300001");
    }

    #[test]
    fn references_on_stdout_are_canonical() {
        let shown = |d: &str| canonical(d).unwrap();
        assert_eq!(
            shown("docker://127.0.0.1:5000/a/b"),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(shown("127.0.0.1:5000/a:1.0"), "127.0.0.1:5000/a:1.0");
        assert_eq!(shown("alice/app"), "docker.io/alice/app:latest");
        assert_eq!(shown("oci:./out"), "oci:./out:latest");
        assert_eq!(shown("oci:/tmp/x:v2"), "oci:/tmp/x:v2");
    }

    #[test]
    fn the_command_line_is_consistent_and_quiet_excludes_verbose() {
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["ocipush", "-q", "-v", "man"]).is_err());
        let parsed = Cli::try_parse_from(["ocipush", "push", "a", "r/b", "-q"]).unwrap();
        assert!(parsed.quiet);
    }

    #[test]
    fn every_command_that_reaches_a_registry_takes_the_same_registry_flags() {
        let flags = [
            "--authfile",
            "auth.json",
            "--plain-http",
            "--ca-file",
            "ca.pem",
            "--insecure",
            "--retries",
            "2",
        ];
        let commands: [&[&str]; 4] = [
            &["push", "a", "r/b"],
            &["index", "r/b", "a"],
            &["build", ".", "-t", "a"],
            &["verify", "r/b", "--key", "k.pem"],
        ];
        for command in commands {
            let args = ["ocipush"].iter().chain(command).chain(&flags);
            let registry = match Cli::try_parse_from(args).unwrap().command {
                Command::Push { options, .. }
                | Command::Index { options, .. }
                | Command::Build { options, .. } => options.registry,
                Command::Verify { registry, .. } => registry,
                _ => unreachable!("a command that reaches a registry"),
            };
            assert_eq!(registry.authfile, Some(PathBuf::from("auth.json")));
            assert!(registry.plain_http && registry.insecure);
            assert_eq!(registry.ca_file, Some(PathBuf::from("ca.pem")));
            assert_eq!(registry.retries, 2);
        }
        let Command::Verify { registry, .. } =
            Cli::try_parse_from(["ocipush", "verify", "r/b", "--key", "k.pem"])
                .unwrap()
                .command
        else {
            unreachable!("parsed as verify");
        };
        assert_eq!(registry.retries, 5, "the default, as push's");
    }
}
