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
//! `--export-root DIR` (repeatable) adds allowed export roots for method calls, for this
//! server process only (they reach the host through `COSNAP_EXPORT_ROOTS`, see
//! `cosnap_host::export`); `<data-dir>/exports` and `<data-dir>/export-roots` always apply.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};
use cosnap_host::Host;
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
    /// PEM certificate chain for HTTPS (default: generated into <data-dir>/tls/).
    #[arg(long, requires = "tls_key")]
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

pub fn run_serve(ctx: &Context, args: ServeArgs) -> CmdResult {
    // Refuse a bad listen address before touching the data directory.
    if !args.no_http && !args.listen.ip().is_loopback() && !args.insecure_allow_plain_http {
        return Err(Failure::new(
            USAGE,
            cosnap_wbem::ServeError::PlainHttpNotLoopback(args.listen),
        ));
    }
    // Export roots first, while the process has a single thread (set_var is only sound then).
    let mut roots: Vec<String> = Vec::new();
    for r in &args.export_roots {
        let canon =
            std::fs::canonicalize(r).with_context(|| format!("export root {}", r.display()))?;
        if !canon.is_dir() {
            return Err(anyhow!("export root {} is not a directory", r.display()).into());
        }
        roots.push(canon.to_string_lossy().into_owned());
    }
    if !roots.is_empty() {
        if let Ok(existing) = std::env::var("COSNAP_EXPORT_ROOTS") {
            roots.extend(
                existing
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
        }
        // SAFETY: no other thread exists yet (the runtime and the host start below).
        unsafe { std::env::set_var("COSNAP_EXPORT_ROOTS", roots.join(":")) };
    }

    std::fs::create_dir_all(&ctx.data_dir)
        .with_context(|| format!("creating {}", ctx.data_dir.display()))?;
    let host = Host::open(&ctx.data_dir)
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
