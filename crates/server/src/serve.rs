//! `keel serve`: recover the store, then serve the HTTP API until SIGTERM
//! or Ctrl-C; then stop accepting, finish in-flight requests, sync, exit 0.

use anyhow::Context;
use keel::storage::{BufferedStorage, FaultyStorage, FsStorage, Storage};
use keel::{Db, Options};
use keel_server::auth::AuthToken;
use keel_server::config::{ConfigFile, ServerSection};
use keel_server::guarded::GuardedListener;
use keel_server::http::{router, AppState};
use keel_server::http_server::{self, HttpServeConfig};
use keel_server::resp::remote::Remote;
use keel_server::resp::{RespConfig, RespServer};
use keel_server::tls::TlsListener;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `keel serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TCP port to listen on.
    #[arg(long, default_value_t = 7373)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Data directory (created if missing).
    #[arg(long, default_value = "keel-data")]
    pub working_dir: PathBuf,
    /// Options file (TOML); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Sync policy: always, never, or interval:<duration> (e.g. interval:100ms).
    #[arg(long)]
    pub sync: Option<String>,
    /// Memtable size (bytes, or e.g. 64MiB; default 64MiB): the data is kept
    /// in tables on disk, so it may exceed memory; `0`: every key in memory,
    /// saved by checkpoints.
    #[arg(long)]
    pub memtable_size: Option<String>,
    /// Block cache of the tables (bytes, or e.g. 64MiB; default 64MiB).
    #[arg(long)]
    pub cache_size: Option<String>,
    /// On tables, whether DBSIZE, INFO's `keys` and `keel_keys` are exact
    /// (`true`, the default) or an estimate as RocksDB's (`false`: no
    /// lookup per new key, faster random fills; docs/BENCHMARKS.md).
    #[arg(long)]
    pub exact_key_count: Option<bool>,
    /// How log records are stored: `none` (the default), `snappy` or `zstd`
    /// (records of 64 bytes or more, when that saves an eighth). May change
    /// from run to run: each record says how it is stored.
    #[arg(long)]
    pub wal_compression: Option<keel_wal::Compression>,
    /// Archive each log segment the store no longer needs into this
    /// directory (durably, before deleting it), for `keel restore` to any
    /// point in time. If archiving fails, segments stay in the log and
    /// writes go on (docs/DESIGN.md).
    #[arg(long)]
    pub archive_dir: Option<PathBuf>,
    /// Delete archived segments older than this (e.g. `7d`, `12h`).
    #[arg(long)]
    pub archive_retention_age: Option<String>,
    /// Keep the archive under this size (e.g. `10GiB`), oldest deleted first.
    #[arg(long)]
    pub archive_retention_bytes: Option<String>,
    /// Also serve the Redis protocol (RESP2) on this port (off unless given).
    #[arg(long)]
    pub resp_port: Option<u16>,
    /// After SIGTERM or Ctrl-C: how long complete requests may take to
    /// finish before the connections still open (a client that sent half a
    /// request) are closed, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s")]
    pub shutdown_timeout: String,
    /// A file holding the auth token: HTTP then needs `Authorization:
    /// Bearer <token>` (all but /health), RESP needs `AUTH <token>` first.
    /// Without it, the token comes from KEEL_AUTH_TOKEN if set.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without authentication (anyone who
    /// can reach the port can read and change every key).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Connections each listener keeps open at most; one more is told so
    /// and closed. Default: what the open-files limit leaves after a
    /// reserve for the store, shared between the listeners.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Close a connection that sends and takes nothing for this long (an
    /// idle client, or one sending its request a byte at a time); `0s`: never.
    #[arg(long, default_value = "60s")]
    pub idle_timeout: String,
    /// An HTTP request head must arrive whole within this, however its bytes
    /// are spaced (a slowloris client); `0s`: no limit.
    #[arg(long, default_value = "20s")]
    pub header_timeout: String,
    /// Serve both listeners over TLS only, with this certificate chain (PEM:
    /// the server's certificate first). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Run as node ID of a cluster (issue 14; needs --peers and the
    /// cluster secret). Without it keel runs alone, with no Raft cost.
    #[arg(long, requires = "peers")]
    pub node_id: Option<u64>,
    /// Every voter of the cluster: `1=127.0.0.1:7001,2=127.0.0.1:7002,...`
    /// (this node included; each one's HTTP address).
    #[arg(long, requires = "node_id")]
    pub peers: Option<String>,
    /// The secret every node-to-node request carries; without it, from
    /// KEEL_CLUSTER_SECRET. The same on every node.
    #[arg(long)]
    pub cluster_secret: Option<String>,
    /// Start as a new node of a running cluster: wait to be added (`POST
    /// /cluster/members` on a member) instead of forming a cluster from
    /// --peers.
    #[arg(long, requires = "node_id")]
    pub join: bool,
    /// On a cluster node: take a snapshot of the engine after this many
    /// Raft entries, so the log can be purged (a follower too far behind
    /// is sent the snapshot).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every: u64,
    /// On a cluster node: how long a client's write or linearizable read
    /// may wait (for a quorum, or the leader) before a 503 says so.
    #[arg(long, default_value = "10s")]
    pub cluster_timeout: String,
}

/// Descriptors kept for the store (log segments, the one being prepared,
/// checkpoints, directories, the lock) and the process: connections never
/// take these, so running out of descriptors never fail-stops the log.
const RESERVED_DESCRIPTORS: usize = 128;

/// Connections per listener: `--max-connections`, or the open-files limit
/// less the store's reserve, split between the listeners.
fn connection_limit(args: &ServeArgs) -> anyhow::Result<usize> {
    if let Some(n) = args.max_connections {
        return Ok(n);
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
        .min(1 << 20) as usize;
    let listeners = if args.resp_port.is_some() { 2 } else { 1 };
    let per = limit.saturating_sub(RESERVED_DESCRIPTORS) / listeners;
    if per < 16 {
        anyhow::bail!(
            "the open-files limit ({limit}) leaves no room for connections after the {RESERVED_DESCRIPTORS} descriptors kept for the store: raise it (ulimit -n)"
        );
    }
    Ok(per)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft logs every election and RPC at info: its warnings and
        // errors only, unless RUST_LOG asks for more.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs the server; returns when it has shut down cleanly.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let (mut opts, file) = match &args.config {
        Some(p) => {
            let c = ConfigFile::load(p)?;
            (c.options, c.server)
        }
        None => (Options::default(), ServerSection::default()),
    };
    if let Some(s) = &args.sync {
        opts.sync = keel::parse_sync(s)?;
    }
    if let Some(s) = &args.memtable_size {
        opts.memtable_size =
            Some(keel::parse_size(s).context("--memtable-size")?).filter(|n| *n > 0);
    }
    if let Some(s) = &args.cache_size {
        opts.cache_size = keel::parse_size(s).context("--cache-size")?;
    }
    if let Some(exact) = args.exact_key_count {
        opts.exact_key_count = exact;
    }
    if let Some(c) = args.wal_compression {
        opts.wal_compression = c;
    }
    if let Some(d) = &args.archive_dir {
        opts.archive_dir = Some(d.clone());
    }
    if let Some(a) = &args.archive_retention_age {
        opts.archive_retention_age =
            Some(keel::parse_duration(a).context("--archive-retention-age")?);
    }
    if let Some(b) = &args.archive_retention_bytes {
        opts.archive_retention_bytes =
            Some(keel::parse_size(b).context("--archive-retention-bytes")?).filter(|n| *n > 0);
    }
    let opts = keel_server::refusal::server_options(opts);
    let metrics = keel_server::metrics::install().context("installing the metrics recorder")?;
    let dir = args.working_dir.clone();
    let addr = listen_addr(&args.bind, args.port)?;
    let auth = auth_token(&args, &file)?;
    protected_mode(addr, auth.is_some(), args.insecure_no_auth)?;
    let grace = keel::parse_duration(&args.shutdown_timeout).context("--shutdown-timeout")?;
    let idle = keel::parse_duration(&args.idle_timeout).context("--idle-timeout")?;
    let header = keel::parse_duration(&args.header_timeout).context("--header-timeout")?;
    let bounds = Bounds {
        max_connections: connection_limit(&args)?,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        header_timeout: (!header.is_zero()).then_some(header),
    };
    let tls = tls_configs(&args, &file)?;
    tracing::info!(
        "at most {} connections per listener, idle timeout {:?}",
        bounds.max_connections,
        bounds.idle_timeout
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keel-http")
        .build()
        .context("starting the async runtime")?;
    if let Some(node_id) = args.node_id {
        let config = cluster_config(&args, node_id, opts)?;
        let node = rt.block_on(keel_server::cluster::ClusterNode::start(
            config,
            storage_from_env()?,
        ))?;
        // The RESP event loop hands its commands to Raft on this runtime.
        let remote = keel_server::cluster::resp::ClusterCommands::new(
            Arc::clone(&node),
            rt.handle().clone(),
            Some(metrics.clone()),
        );
        let resp = resp_listener(
            &args,
            &auth,
            &bounds,
            &tls,
            &node.engine.current(),
            Some(remote),
        )?;
        let state = AppState {
            db: node.engine.current(),
            metrics,
            auth,
            cluster: Some(Arc::clone(&node)),
        };
        serve_http(&rt, addr, state, &dir, grace, bounds, tls.map(|t| t.http))?;
        if let Some(r) = resp {
            r.shutdown();
        }
        tracing::info!("shutting down: stopping Raft");
        if let Err(e) = rt.block_on(node.raft.shutdown()) {
            tracing::error!("stopping Raft: {e}");
        }
        let engine = node.engine.current();
        drop(node);
        // Dropping the runtime cancels the connections still open.
        drop(rt);
        return close_store(engine);
    }
    let db = Arc::new(open_store(&dir, opts, storage_from_env()?)?);
    let resp = resp_listener(&args, &auth, &bounds, &tls, &db, None)?;
    let state = AppState {
        db: Arc::clone(&db),
        metrics,
        auth,
        cluster: None,
    };
    serve_http(&rt, addr, state, &dir, grace, bounds, tls.map(|t| t.http))?;
    // Dropping the runtime cancels the connections still open.
    drop(rt);
    if let Some(r) = resp {
        r.shutdown();
    }
    close_store(db)
}

/// A cluster node's configuration from the flags.
fn cluster_config(
    args: &ServeArgs,
    node_id: u64,
    options: Options,
) -> anyhow::Result<keel_server::cluster::ClusterConfig> {
    let peers = keel_server::cluster::parse_peers(args.peers.as_deref().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("--peers: {e}"))?;
    let secret = match &args.cluster_secret {
        Some(s) => s.clone(),
        None => std::env::var("KEEL_CLUSTER_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .context("a cluster node needs the cluster secret: give --cluster-secret S or set KEEL_CLUSTER_SECRET (the same on every node)")?,
    };
    let request_timeout =
        keel::parse_duration(&args.cluster_timeout).context("--cluster-timeout")?;
    tracing::info!(
        "node {node_id} of a cluster of {} voters; data in {}",
        peers.len(),
        args.working_dir.display()
    );
    Ok(keel_server::cluster::ClusterConfig {
        node_id,
        peers,
        secret,
        dir: args.working_dir.clone(),
        options,
        request_timeout,
        join: args.join,
        snapshot_every: args.snapshot_every.max(1),
    })
}

/// TLS configurations of the two listeners (they differ in ALPN).
struct TlsConfigs {
    http: Arc<rustls::ServerConfig>,
    resp: Arc<rustls::ServerConfig>,
}

/// From the flags, or else the config file's `[server]` table.
fn tls_configs(args: &ServeArgs, file: &ServerSection) -> anyhow::Result<Option<TlsConfigs>> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => (c, k),
        _ => match (&file.tls_cert, &file.tls_key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => return Ok(None),
            _ => anyhow::bail!(
                "the config file's [server] table gives only one of tls_cert and tls_key: give both, or neither"
            ),
        },
    };
    let http = keel_server::tls::server_config(cert, key, &[b"http/1.1"])?;
    let resp = keel_server::tls::server_config(cert, key, &[])?;
    tracing::info!("TLS on every listener (certificate {})", cert.display());
    Ok(Some(TlsConfigs { http, resp }))
}

/// Bounds on each listener's clients.
#[derive(Clone, Copy)]
struct Bounds {
    max_connections: usize,
    idle_timeout: Option<std::time::Duration>,
    header_timeout: Option<std::time::Duration>,
}

/// The storage under the store: real files, or the test hooks
/// `KEEL_STORAGE=buffered` (unsynced data held in this process, so kill -9
/// loses exactly what a power loss would) and `KEEL_FAULT=op:nth:kind`
/// (injected faults, see `FaultyStorage::parse_faults`).
fn storage_from_env() -> anyhow::Result<Arc<dyn Storage>> {
    let base: Arc<dyn Storage> = match std::env::var("KEEL_STORAGE").as_deref() {
        Ok("buffered") => {
            tracing::warn!(
                "KEEL_STORAGE=buffered: unsynced writes live in process memory (testing only)"
            );
            Arc::new(BufferedStorage::new(Arc::new(FsStorage::new())))
        }
        Ok("") | Err(_) => Arc::new(FsStorage::new()),
        Ok(other) => anyhow::bail!("KEEL_STORAGE={other:?}: the only value is `buffered`"),
    };
    Ok(match std::env::var("KEEL_FAULT") {
        Ok(spec) if !spec.is_empty() => {
            let faults = FaultyStorage::parse_faults(&spec)
                .map_err(|e| anyhow::anyhow!("KEEL_FAULT: {e}"))?;
            tracing::warn!("KEEL_FAULT={spec}: injecting storage faults (testing only)");
            Arc::new(FaultyStorage::new(base, &faults))
        }
        _ => base,
    })
}

/// Recovers the store, with a spinner when a person is watching, and logs
/// the recovery report (a warning if anything was damaged).
fn open_store(dir: &Path, opts: Options, storage: Arc<dyn Storage>) -> anyhow::Result<Db> {
    let spinner = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("recovering {}", dir.display()));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = |n: u64| {
        spinner.set_message(format!(
            "recovering {}: {n} log records replayed",
            dir.display()
        ))
    };
    let opened = Db::builder(dir)
        .options(opts)
        .storage(storage)
        .progress(progress)
        .open();
    spinner.finish_and_clear();
    let (db, report) = opened.map_err(|e| {
        let hint = match &e {
            keel::Error::Wal(w) if w.damage().is_some() => format!(
                "\nInspect the damage with `keel verify {0}`; `keel repair {0}` cuts the log back to its last valid record (saving what it cuts).",
                dir.display()
            ),
            keel::Error::Table(keel::table::TableError::Damaged { .. })
            | keel::Error::Tables(
                keel::lsm::LsmError::Table(keel::table::TableError::Damaged { .. })
                | keel::lsm::LsmError::MissingTable { .. },
            ) => format!(
                "\nInspect the damage with `keel verify {0}`; `keel repair {0}` moves a damaged table aside and keeps what of it reads back (it says first which keys are lost).",
                dir.display()
            ),
            _ => String::new(),
        };
        anyhow::anyhow!("cannot open the store in {}: {e}{hint}", dir.display())
    })?;
    if report.wal.torn_tail.is_some() || !report.damaged_checkpoints.is_empty() {
        tracing::warn!("recovered {}: {report}", dir.display());
    } else {
        tracing::info!("recovered {}: {report}", dir.display());
    }
    Ok(db)
}

/// The auth token, from `--auth-token-file`, else `KEEL_AUTH_TOKEN`, else
/// the config file's `[server]` table.
fn auth_token(args: &ServeArgs, file: &ServerSection) -> anyhow::Result<Option<Arc<AuthToken>>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .with_context(|| format!("reading the auth token file {}", p.display()))
    };
    let env = std::env::var("KEEL_AUTH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let (secret, from) = match (&args.auth_token_file, env) {
        (Some(p), _) => (read(p)?, p.display().to_string()),
        (None, Some(t)) => (t, "KEEL_AUTH_TOKEN".to_string()),
        (None, None) => match (&file.auth_token_file, &file.auth_token) {
            (Some(p), _) => (read(p)?, p.display().to_string()),
            (None, Some(t)) => (t.clone(), "the config file".to_string()),
            (None, None) => return Ok(None),
        },
    };
    let token = AuthToken::new(&secret).with_context(|| format!("the auth token in {from}"))?;
    tracing::info!("authentication required (token from {from})");
    Ok(Some(Arc::new(token)))
}

/// Redis's protected mode: a listener on an address other than loopback
/// needs authentication, unless the operator says otherwise.
fn protected_mode(addr: SocketAddr, has_token: bool, insecure: bool) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || has_token {
        return Ok(());
    }
    if insecure {
        tracing::warn!("listening on {} without authentication (--insecure-no-auth): anyone who can reach it can read and change every key", addr.ip());
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {} without authentication: anyone who can reach it could read and change every key. Give --auth-token-file FILE (or set KEEL_AUTH_TOKEN), bind 127.0.0.1, or pass --insecure-no-auth to accept the risk",
        addr.ip()
    )
}

fn listen_addr(bind: &str, port: u16) -> anyhow::Result<SocketAddr> {
    format!("{bind}:{port}")
        .parse()
        .with_context(|| format!("bad listen address {bind}:{port}"))
}

/// The RESP listener, if `--resp-port` asks for one. It runs its own event
/// loop thread (see resp::event_loop); on a cluster node, `remote` runs
/// its commands through Raft.
fn resp_listener(
    args: &ServeArgs,
    auth: &Option<Arc<AuthToken>>,
    bounds: &Bounds,
    tls: &Option<TlsConfigs>,
    db: &Arc<Db>,
    remote: Option<Arc<dyn Remote>>,
) -> anyhow::Result<Option<RespServer>> {
    let Some(port) = args.resp_port else {
        return Ok(None);
    };
    let config = RespConfig {
        auth: auth.clone(),
        max_connections: bounds.max_connections,
        idle_timeout: bounds.idle_timeout,
        tls: tls.as_ref().map(|t| Arc::clone(&t.resp)),
        remote,
    };
    Ok(Some(start_resp(
        listen_addr(&args.bind, port)?,
        db,
        config,
    )?))
}

fn start_resp(addr: SocketAddr, db: &Arc<Db>, config: RespConfig) -> anyhow::Result<RespServer> {
    let l = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr} for RESP: is another server using the port?")
    })?;
    let server = RespServer::start(l, Arc::clone(db), config)
        .context("starting the Redis protocol listener")?;
    tracing::info!("serving the Redis protocol on {addr}");
    Ok(server)
}

/// Serves HTTP until SIGTERM or Ctrl-C, then lets in-flight requests finish
/// for at most `grace`; connections still open then are closed (dropping the
/// runtime cancels them). Writes they had queued are synced by the close.
fn serve_http(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    state: AppState,
    dir: &Path,
    grace: std::time::Duration,
    bounds: Bounds,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr}: is another server using the port?")
        })?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("listening on {scheme}://{addr} (data in {})", dir.display());
        let listener = GuardedListener::new(listener, bounds.max_connections, bounds.idle_timeout);
        let config = HttpServeConfig {
            header_timeout: bounds.header_timeout,
            grace,
        };
        let app = router(state);
        match tls {
            None => http_server::serve(listener, app, stopped(stop_rx), config).await,
            Some(tls) => {
                let handshake = bounds
                    .idle_timeout
                    .unwrap_or(keel_server::tls::DEFAULT_HANDSHAKE_TIMEOUT);
                let listener = TlsListener::new(listener, tls, handshake)
                    .context("starting the TLS listener")?;
                http_server::serve(listener, app, stopped(stop_rx), config).await
            }
        }
        Ok(())
    })
}

/// Syncs the log and releases the directory.
fn close_store(db: Arc<Db>) -> anyhow::Result<()> {
    tracing::info!("shutting down: syncing the log");
    match Arc::try_unwrap(db) {
        Ok(db) => db.close().context("closing the store")?,
        Err(db) => {
            // A request task still holds it (it finished, but its Arc lives
            // a moment longer): sync through the shared handle.
            if db.stopped().is_none() {
                db.sync().context("syncing at shutdown")?;
            }
        }
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM ({e}); stop with Ctrl-C");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing in-flight requests"),
    }
}
