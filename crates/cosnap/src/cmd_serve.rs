//! `cosnap serve` and `cosnap user …`.
//!
//! `serve` opens the host on the data directory (recovering interrupted work), binds the
//! listeners and serves CIM-XML at `/cimom` until SIGTERM or SIGINT. Shutdown order:
//! stop accepting, let running requests finish, then let the jobs this process runs
//! finish for up to `--shutdown-grace` seconds, cancel the ones still running
//! (RequestStateChange 4, rolled back by the host and recorded as Terminated) and wait
//! until every job has recorded its end. A job past its point of no return is not
//! cancellable; the server waits for it rather than leave it half done.
//!
//! Trust options reach the host as a typed [`HostOptions`] at open: `--storage-root DIR`
//! (repeatable) = where disk images named over the API may lie (none = no disk may be
//! named over the API); `--export-root DIR` (repeatable) adds allowed export roots for
//! method calls (`<data-dir>/exports` and `<data-dir>/export-roots` always apply);
//! `--export-mode MODE` = the mode of exported files (octal, default 0600; directories get
//! the matching search bits, 0700).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};
use cosnap_host::{Host, HostOptions};
use cosnap_wbem::auth;
use cosnap_wbem::server::{ServeConfig, Server, ServerLimits};
use cosnap_wbem::tls::TlsFiles;

use crate::exit::{CmdResult, Context, Failure, USAGE};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Plain-HTTP address (loopback only unless --insecure-allow-plain-http).
    #[arg(long, default_value = "127.0.0.1:5988")]
    pub listen: SocketAddr,
    /// Serve no plain HTTP at all (HTTPS only).
    #[arg(long, conflicts_with = "listen")]
    pub no_http: bool,
    /// HTTPS address (conventionally port 5989); off unless given.
    #[arg(long)]
    pub https_listen: Option<SocketAddr>,
    // Help given as an attribute: in a doc comment rustdoc reads `<data-dir>` as an HTML tag.
    #[arg(
        long,
        requires = "tls_key",
        help = "PEM certificate chain for HTTPS (default: generated into <data-dir>/tls/)"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (credentials then cross the network in clear).
    #[arg(long)]
    pub insecure_allow_plain_http: bool,
    /// A directory ExportSnapshot may write under (repeatable).
    #[arg(long = "export-root", value_name = "DIR")]
    pub export_roots: Vec<PathBuf>,
    /// A directory disk images named over the API (DefineSystem's HostResource) must lie
    /// under, symlinks resolved (repeatable; none = no disk may be named over the API).
    #[arg(long = "storage-root", value_name = "DIR")]
    pub storage_roots: Vec<PathBuf>,
    /// Mode of exported files, octal (directories get the matching search bits).
    #[arg(long = "export-mode", value_name = "MODE", default_value = "0600", value_parser = cosnap_host::options::parse_mode)]
    pub export_mode: u32,
    /// Digest of export manifests: sha256 (OVF's, the default) or blake3 (faster; verified
    /// by `cosnap export verify`, not by OVF tools).
    #[arg(
        long = "export-digest",
        value_name = "ALGORITHM",
        default_value = "sha256"
    )]
    pub export_digest: cosnap_export::DigestAlgorithm,
    /// Host name written into returned object paths (default: the host's own).
    #[arg(long)]
    pub host_name: Option<String>,
    /// Seconds running jobs get to finish on shutdown before they are cancelled.
    #[arg(long, default_value_t = 20)]
    pub shutdown_grace: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body: usize,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user, or set an existing user's password.
    Add {
        name: String,
        /// Read the password from standard input (one line; a trailing newline is dropped).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users' names.
    List,
    /// Remove a user.
    Remove { name: String },
}

pub fn run_user(ctx: &Context, cmd: UserCmd) -> CmdResult {
    match cmd {
        UserCmd::Add {
            name,
            password_stdin,
        } => {
            if !password_stdin {
                return Err(Failure::new(
                    USAGE,
                    anyhow!("give the password on standard input with --password-stdin"),
                ));
            }
            let mut text = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .context("reading the password from standard input")?;
            let password = auth::password_from_stdin_text(&text);
            auth::add_user(&ctx.data_dir, &name, password)?;
            if ctx.json {
                println!("{}", serde_json::json!({ "user": name, "added": true }));
            } else {
                println!(
                    "user {name} saved in {}",
                    auth::users_path(&ctx.data_dir).display()
                );
            }
            Ok(0)
        }
        UserCmd::List => {
            let users = auth::list_users(&ctx.data_dir)?;
            if ctx.json {
                println!("{}", serde_json::json!({ "users": users }));
            } else {
                for u in users {
                    println!("{u}");
                }
            }
            Ok(0)
        }
        UserCmd::Remove { name } => match auth::remove_user(&ctx.data_dir, &name) {
            Ok(()) => Ok(0),
            Err(e @ auth::UserError::NoSuchUser(_)) => Err(Failure::new(crate::exit::NOT_FOUND, e)),
            Err(e) => Err(e.into()),
        },
    }
}

/// Canonical forms of configured root directories; a root that does not resolve to a
/// directory is a usage error (refused before anything is served).
fn existing_dirs(dirs: &[PathBuf], what: &str) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    for d in dirs {
        let canon = std::fs::canonicalize(d).with_context(|| format!("{what} {}", d.display()))?;
        if !canon.is_dir() {
            return Err(Failure::new(
                USAGE,
                anyhow!("{what} {} is not a directory", d.display()),
            ));
        }
        out.push(canon);
    }
    Ok(out)
}

pub fn run_serve(ctx: &Context, args: ServeArgs) -> CmdResult {
    // Refuse a bad listen address before touching the data directory.
    if !args.no_http && !args.listen.ip().is_loopback() && !args.insecure_allow_plain_http {
        return Err(Failure::new(
            USAGE,
            cosnap_wbem::ServeError::PlainHttpNotLoopback(args.listen),
        ));
    }
    let options = HostOptions {
        storage_roots: existing_dirs(&args.storage_roots, "storage root")?,
        export_roots: existing_dirs(&args.export_roots, "export root")?,
        export_file_mode: args.export_mode,
        export_digest: args.export_digest,
        ..HostOptions::default()
    };

    std::fs::create_dir_all(&ctx.data_dir)
        .with_context(|| format!("creating {}", ctx.data_dir.display()))?;
    let host = Host::open_with(&ctx.data_dir, options)
        .with_context(|| format!("opening the repository in {}", ctx.data_dir.display()))?;
    let host_name = args
        .host_name
        .clone()
        .unwrap_or_else(|| host.host_name().to_string());
    let config = ServeConfig {
        http_listen: (!args.no_http).then_some(args.listen),
        https_listen: args.https_listen,
        tls_files: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        insecure_allow_plain_http: args.insecure_allow_plain_http,
        data_dir: host.data_dir().to_path_buf(),
        host_name,
        limits: ServerLimits {
            decode: cosnap_wbem::DecodeLimits {
                max_body: args.max_body,
                ..Default::default()
            },
            ..Default::default()
        },
    };

    cosnap_wbem::memory::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cosnap-serve")
        .build()
        .context("starting the async runtime")?;
    let provider: Arc<dyn cosnap_cim::CimProvider> = Arc::new(host.clone());
    runtime.block_on(async {
        let server = Server::bind(config, provider).await?;
        if let Some(a) = server.http_addr() {
            eprintln!("cosnap: serving CIM-XML at http://{a}/cimom");
        }
        if let Some(a) = server.https_addr() {
            eprintln!("cosnap: serving CIM-XML at https://{a}/cimom");
        }
        server.run(shutdown_signal()).await;
        Ok::<_, anyhow::Error>(())
    })?;
    // Requests still running after the drain are on blocking threads; give them a moment.
    runtime.shutdown_timeout(Duration::from_secs(10));
    if finish_jobs(&host, Duration::from_secs(args.shutdown_grace)) {
        eprintln!("cosnap: server stopped");
        Ok(0)
    } else {
        Err(anyhow!(
            "stopped with jobs still running; the next start recovers them from the journal"
        )
        .into())
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How long shutdown waits, after cancelling, for jobs to record their end. A job that
/// never ends is a defect; the repository's intent journal makes exiting anyway safe (the
/// next `Host::open` rolls it back or forward and marks the job), so the wait is bounded.
const MAX_JOB_WAIT: Duration = Duration::from_secs(300);

/// Lets this process's jobs finish within `grace`, cancels the rest and waits until each
/// has recorded its end. Returns false when some job still had not ended.
fn finish_jobs(host: &Host, grace: Duration) -> bool {
    let running = host.running_jobs();
    if running.is_empty() {
        return true;
    }
    eprintln!(
        "cosnap: waiting up to {}s for {} running job(s)",
        grace.as_secs(),
        running.len()
    );
    let done = |id: &str| host.job(id).map(|j| j.is_finished()).unwrap_or(true);
    let start = Instant::now();
    while start.elapsed() < grace && running.iter().any(|id| !done(id)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in running.iter().filter(|id| !done(id)) {
        match host.request_job_state(id, 4) {
            Ok(4096) => eprintln!("cosnap: cancelling job {id}"),
            Ok(code) => eprintln!(
                "cosnap: job {id} cannot be cancelled now (code {code}); waiting for it to finish"
            ),
            Err(e) => eprintln!("cosnap: cancelling job {id}: {e}"),
        }
    }
    let mut last_note = Instant::now();
    let cancelled_at = Instant::now();
    while running.iter().any(|id| !done(id)) {
        if cancelled_at.elapsed() > MAX_JOB_WAIT {
            for id in running.iter().filter(|id| !done(id)) {
                eprintln!(
                    "cosnap: job {id} did not end within {}s",
                    MAX_JOB_WAIT.as_secs()
                );
            }
            return false;
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            eprintln!("cosnap: still waiting for jobs to record their end");
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in &running {
        if let Ok(j) = host.job(id) {
            eprintln!("cosnap: job {id} ended in state {}", j.state);
        }
    }
    true
}
