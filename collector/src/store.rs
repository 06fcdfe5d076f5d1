//! The collector's durable store (docs/store.md): SQLite through rusqlite's
//! bundled build, in WAL mode with `synchronous=FULL`, written by one
//! thread that commits groups of batches and only then lets them be acked
//! and fanned out.
//!
//! The writer thread also owns the persisted per-host sequence state (last
//! sequence per sensor instance), so duplicates are dropped and gaps found
//! against what was stored before a collector restart; it runs retention
//! and marks silent hosts.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prost::Message;
use proto::telemetry::v1::{
    DropCounters, Event, HostEvent, HostIdentity, HostRecord, HostStatus, QueryRequest,
    SubscribeRequest, SubscribeResponse, host_record, host_status, subscribe_response,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::fanout::{self, Fanout, FanoutItem, SubscriptionFilter};
use crate::hosts;
use crate::sequence::{Continuity, Observation, Restart};
use crate::server::unix_ns;

/// `items.kind` of a host record; event kinds are `EventKind` values.
const RECORD_KIND: i64 = 1000;
/// Schema of this build; a store with another version is refused.
const SCHEMA_VERSION: i64 = 1;
/// Batches committed together at most (group commit).
const MAX_GROUP_BATCHES: usize = 256;
/// Events committed together at most.
const MAX_GROUP_EVENTS: usize = 50_000;
/// Rows deleted per retention statement, so ingest waits little.
const RETENTION_CHUNK: i64 = 5_000;
/// Items per query page when the request says 0, and the most allowed.
pub const DEFAULT_QUERY_LIMIT: u32 = 1_000;
pub const MAX_QUERY_LIMIT: u32 = 5_000;
/// Event bytes per page at most, well under a gRPC client's 4 MiB limit.
const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Rows one query page reads at most before it returns with a cursor
/// (a process filter is applied after reading).
const MAX_QUERY_SCAN: usize = 200_000;
/// How long opening waits for another writer of the store to let go.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// Host ids or names in one query at most.
const MAX_QUERY_LIST: usize = 256;

/// Where the store lives and how long it keeps what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The SQLite database file (its `-wal` and `-shm` files sit next to it).
    pub path: PathBuf,
    /// Items received longer ago than this are deleted; `None` keeps them.
    pub max_age: Option<Duration>,
    /// The oldest items are deleted while the database uses more than this
    /// many bytes (pages in use, WAL not counted); `None`: no size limit.
    pub max_bytes: Option<u64>,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// A host that sent no batch for this long is recorded as silent.
    pub silent_after: Duration,
}

impl StoreConfig {
    /// Defaults for a store at `path`: 30 days, 10 GiB, hourly... see docs.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_age: Some(Duration::from_secs(30 * 86_400)),
            max_bytes: Some(10 * 1024 * 1024 * 1024),
            retention_interval: Duration::from_secs(60),
            silent_after: Duration::from_secs(90),
        }
    }
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store {path}: {why}")]
    Incompatible { path: String, why: String },
    #[error("store: cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("store write failed (nothing of the batch was kept): {0}")]
    Write(String),
    #[error("store read failed: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("the store's writer has stopped")]
    Stopped,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
    #[error("store {path} is in use by another collector (lock {lock})")]
    Locked { path: String, lock: String },
}

/// What the writer did with one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStored {
    pub observation: Observation,
}

/// One valid batch handed to the writer.
struct BatchJob {
    host: HostIdentity,
    sequence: u64,
    drops: Option<DropCounters>,
    events: Vec<Event>,
    received_ns: u64,
    reply: oneshot::Sender<Result<BatchStored, StoreError>>,
}

/// Handle on the store: writes go to its writer thread, queries open
/// their own read connection (WAL lets them run beside the writer).
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    jobs: mpsc::Sender<BatchJob>,
    /// Highest store id committed so far (the replay/live seam).
    committed: Arc<AtomicU64>,
    /// Hosts recorded silent and not back since (for `ListHosts`).
    silent: Arc<Mutex<BTreeSet<String>>>,
    counters: Arc<StoreCounters>,
}

/// The writer's running totals and host states, for the metrics.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Transactions of batches committed (a group of batches each).
    pub commits: AtomicU64,
    /// Groups whose commit failed (their batches refused, then resent).
    pub commit_failures: AtomicU64,
    pub batches: AtomicU64,
    /// Time spent committing, successful groups only.
    pub commit_nanos: AtomicU64,
    /// Hosts the store knows, and those marked silent.
    pub hosts: AtomicU64,
    pub hosts_silent: AtomicU64,
}

fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    }
}

/// One writer per store: two collectors would each count store ids from
/// the same point. Held (flock) for as long as the writer lives.
fn lock_store(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let shown = || lock.display().to_string();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| StoreError::Dir {
            path: shown(),
            source,
        })?;
    // A collector restarted in the same process may still be closing the
    // previous writer: give it a moment before calling the store taken.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                    lock: shown(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Dir {
                    path: shown(),
                    source,
                });
            }
        }
    }
}

/// Opens (creating if needed) the database and checks its schema.
fn open_writer(path: &Path) -> Result<(Connection, std::fs::File), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let lock = lock_store(path)?;
    let conn = Connection::open(path).map_err(open_error(path))?;
    restrict_file(path)?;
    // auto_vacuum must be set before the first table exists.
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;",
    )
    .map_err(open_error(path))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_error(path))?;
    match version {
        0 => conn.execute_batch(SCHEMA).map_err(open_error(path))?,
        SCHEMA_VERSION => {}
        other => {
            return Err(StoreError::Incompatible {
                path: path.display().to_string(),
                why: format!(
                    "schema version {other}, this collector reads version {SCHEMA_VERSION}"
                ),
            });
        }
    }
    Ok((conn, lock))
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })
}

/// The store holds what the kiosks did: readable by the collector only.
fn restrict_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Dir {
            path: path.display().to_string(),
            source,
        }
    })
}

const SCHEMA: &str = "
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE hosts (
    host_key INTEGER PRIMARY KEY,
    host_id TEXT NOT NULL UNIQUE,
    current_instance_key INTEGER,
    last_batch_ns INTEGER NOT NULL DEFAULT 0,
    silent INTEGER NOT NULL DEFAULT 0,
    drops BLOB
);
CREATE TABLE instances (
    instance_key INTEGER PRIMARY KEY,
    host_key INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    identity BLOB NOT NULL,
    last_sequence INTEGER NOT NULL,
    UNIQUE (host_key, instance_id)
);
CREATE TABLE batches (
    instance_key INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (instance_key, sequence)
) WITHOUT ROWID;
CREATE INDEX batches_received ON batches (received_ns);
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    host_key INTEGER NOT NULL,
    instance_key INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    batch_sequence INTEGER NOT NULL,
    batch_index INTEGER NOT NULL,
    process TEXT,
    pid INTEGER,
    body BLOB NOT NULL
);
CREATE INDEX items_host_time ON items (host_key, time_ns, id);
CREATE INDEX items_time ON items (time_ns, id);
INSERT INTO meta VALUES ('next_id', 1);
PRAGMA user_version = 1;
COMMIT;
";

/// u64 as SQLite's i64 (times and sequences stay far below 2^63; larger
/// values are clamped, never wrapped to negative).
fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens the store, loads its sequence state and starts the writer,
    /// which publishes what it commits on `fanout`.
    pub fn open(config: StoreConfig, fanout: Fanout) -> Result<Self, StoreError> {
        let (conn, lock) = open_writer(&config.path)?;
        let state = State::load(&conn).map_err(open_error(&config.path))?;
        let committed = Arc::new(AtomicU64::new(state.next_id.saturating_sub(1)));
        let silent = Arc::new(Mutex::new(BTreeSet::new()));
        info!(path = %config.path.display(), hosts = state.hosts.len(),
            high_water = state.next_id.saturating_sub(1), "store opened");
        let (jobs, rx) = mpsc::channel(1024);
        let counters = Arc::new(StoreCounters::default());
        let mut writer = Writer {
            conn,
            _lock: lock,
            inner: Inner {
                state,
                config: config.clone(),
                fanout,
                committed: committed.clone(),
                started_ns: unix_ns(SystemTime::now()),
                silent: silent.clone(),
                // Built from the loaded state by the first publish_hosts.
                silent_changed: true,
                counters: counters.clone(),
            },
        };
        writer.inner.publish_hosts();
        std::thread::Builder::new()
            .name("rxsentry-store".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::Thread)?;
        Ok(Self {
            path: config.path,
            jobs,
            committed,
            silent,
            counters,
        })
    }

    /// Hosts that are silent now: recorded silent (also by an earlier run
    /// of the collector) and not back since.
    pub fn silent_hosts(&self) -> BTreeSet<String> {
        self.silent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The writer's totals (see [`StoreCounters`]).
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Queues one valid batch for the writer (batches are written in the
    /// order they are submitted) and returns what resolves once it is
    /// durably committed (or refused: then nothing of it was kept), so a
    /// stream can submit its next batch meanwhile.
    pub async fn submit(
        &self,
        host: HostIdentity,
        sequence: u64,
        drops: Option<DropCounters>,
        events: Vec<Event>,
        received: SystemTime,
    ) -> Result<impl Future<Output = Result<BatchStored, StoreError>> + Send + 'static, StoreError>
    {
        let (reply, done) = oneshot::channel();
        let job = BatchJob {
            host,
            sequence,
            drops,
            events,
            received_ns: unix_ns(received),
            reply,
        };
        self.jobs.send(job).await.map_err(|_| StoreError::Stopped)?;
        Ok(async move { done.await.map_err(|_| StoreError::Stopped)? })
    }

    /// Highest store id committed (and so visible to queries) right now.
    pub fn high_water(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// One page of stored items. Blocking: call it off the async threads.
    pub fn query(&self, req: &QueryRequest) -> Result<QueryPage, StoreError> {
        // Read before the read transaction starts: everything up to it is
        // committed, so the snapshot below sees all of it.
        let high_water = match req.max_store_id {
            0 => self.high_water(),
            n => n.min(self.high_water()),
        };
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        read_page(&conn, req, high_water)
    }
}

/// A page of a query's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryPage {
    pub items: Vec<SubscribeResponse>,
    pub next_cursor: String,
    pub high_water_id: u64,
}

/// Position after the last item a page looked at: `time_ns.id`.
fn parse_cursor(cursor: &str) -> Result<Option<(i64, i64)>, StoreError> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let bad = || StoreError::InvalidQuery("cursor: not one this collector made".into());
    let (t, id) = cursor.split_once('.').ok_or_else(bad)?;
    let t: u64 = t.parse().map_err(|_| bad())?;
    let id: u64 = id.parse().map_err(|_| bad())?;
    Ok(Some((sql(t), sql(id))))
}

fn check_query(req: &QueryRequest) -> Result<SubscriptionFilter, StoreError> {
    let invalid = |why: String| Err(StoreError::InvalidQuery(why));
    if req.host_ids.len() > MAX_QUERY_LIST || req.process_names.len() > MAX_QUERY_LIST {
        return invalid(format!(
            "at most {MAX_QUERY_LIST} host ids and process names"
        ));
    }
    if req.until_unix_ns != 0 && req.until_unix_ns <= req.since_unix_ns {
        return invalid("until must be after since".into());
    }
    if req.limit > MAX_QUERY_LIMIT {
        return invalid(format!("limit: at most {MAX_QUERY_LIMIT} per page"));
    }
    SubscriptionFilter::from_request(&SubscribeRequest {
        host_ids: req.host_ids.clone(),
        kinds: req.kinds.clone(),
        process_names: req.process_names.clone(),
    })
    .map_err(|e| StoreError::InvalidQuery(e.to_string()))
}

fn read_page(
    conn: &Connection,
    req: &QueryRequest,
    high_water: u64,
) -> Result<QueryPage, StoreError> {
    let filter = check_query(req)?;
    let mut after = parse_cursor(&req.cursor)?;
    let limit = match req.limit {
        0 => DEFAULT_QUERY_LIMIT,
        n => n,
    } as usize;
    let tx = conn.unchecked_transaction()?;
    let mut where_ = vec!["id <= ?1".to_owned(), "time_ns >= ?2".to_owned()];
    if req.until_unix_ns != 0 {
        where_.push("time_ns < ?3".into());
    }
    // After the cursor: ?2 is the larger of `since` and the cursor's time,
    // a plain range the index seeks to (a row-value comparison made SQLite
    // scan from the day's start at every page); the OR only sorts out the
    // rows at exactly the cursor's time.
    where_.push("(time_ns > ?4 OR id > ?5)".into());
    if !req.host_ids.is_empty() {
        let mut keys = Vec::new();
        let mut stmt = tx.prepare_cached("SELECT host_key FROM hosts WHERE host_id = ?1")?;
        for h in &req.host_ids {
            if let Some(k) = stmt.query_row([h], |r| r.get::<_, i64>(0)).optional()? {
                keys.push(k.to_string());
            }
        }
        if keys.is_empty() {
            return Ok(QueryPage {
                high_water_id: high_water,
                ..QueryPage::default()
            });
        }
        where_.push(format!("host_key IN ({})", keys.join(",")));
    }
    let kinds: Vec<String> = req.kinds.iter().map(i32::to_string).collect();
    match (kinds.is_empty(), req.include_records) {
        (true, true) => {}
        (true, false) => where_.push(format!("kind < {RECORD_KIND}")),
        (false, true) => where_.push(format!("kind IN ({},{RECORD_KIND})", kinds.join(","))),
        (false, false) => where_.push(format!("kind IN ({})", kinds.join(","))),
    }
    let chunk = (limit * 2).clamp(256, 4096);
    let sql_text = format!(
        "SELECT id, host_key, instance_key, kind, time_ns, received_ns, batch_sequence, body
         FROM items WHERE {} ORDER BY time_ns, id LIMIT {chunk}",
        where_.join(" AND ")
    );
    let mut stmt = tx.prepare(&sql_text)?;
    let mut identities: HashMap<i64, Arc<HostIdentity>> = HashMap::new();
    let mut items = Vec::new();
    let mut scanned = 0usize;
    let mut bytes = 0usize;
    let until = if req.until_unix_ns == 0 {
        i64::MAX
    } else {
        sql(req.until_unix_ns)
    };
    loop {
        let (t0, id0) = after.unwrap_or((i64::MIN, 0));
        let mut rows = stmt.query(params![
            sql(high_water),
            sql(req.since_unix_ns).max(t0),
            until,
            t0,
            id0
        ])?;
        let mut in_chunk = 0usize;
        while let Some(row) = rows.next()? {
            in_chunk += 1;
            scanned += 1;
            let id: i64 = row.get(0)?;
            let instance_key: i64 = row.get(2)?;
            let kind: i64 = row.get(3)?;
            let time_ns: i64 = row.get(4)?;
            after = Some((time_ns, id));
            let body: Vec<u8> = row.get(7)?;
            bytes += body.len();
            let host = match identities.get(&instance_key) {
                Some(h) => h.clone(),
                None => {
                    let h = Arc::new(load_identity(&tx, instance_key)?);
                    identities.insert(instance_key, h.clone());
                    h
                }
            };
            let item = if kind == RECORD_KIND {
                let Ok(mut record) = HostRecord::decode(body.as_slice()) else {
                    warn!(id, "stored host record does not decode, skipped");
                    continue;
                };
                record.store_id = unsql(id);
                record.host = Some(HostIdentity::clone(&host));
                subscribe_response::Item::Record(record)
            } else {
                let Ok(event) = Event::decode(body.as_slice()) else {
                    warn!(id, "stored event does not decode, skipped");
                    continue;
                };
                if !filter.matches_event(&event) {
                    continue;
                }
                subscribe_response::Item::Event(HostEvent {
                    host: Some(HostIdentity::clone(&host)),
                    batch_sequence: unsql(row.get(6)?),
                    event: Some(event),
                    received_unix_ns: unsql(row.get(5)?),
                    store_id: unsql(id),
                })
            };
            items.push(SubscribeResponse { item: Some(item) });
            if items.len() >= limit || scanned >= MAX_QUERY_SCAN || bytes >= MAX_PAGE_BYTES {
                break;
            }
        }
        drop(rows);
        let exhausted = in_chunk < chunk
            && items.len() < limit
            && scanned < MAX_QUERY_SCAN
            && bytes < MAX_PAGE_BYTES;
        if exhausted {
            return Ok(QueryPage {
                items,
                next_cursor: String::new(),
                high_water_id: high_water,
            });
        }
        if items.len() >= limit || scanned >= MAX_QUERY_SCAN || bytes >= MAX_PAGE_BYTES {
            let next_cursor = after.map(|(t, id)| format!("{t}.{id}")).unwrap_or_default();
            return Ok(QueryPage {
                items,
                next_cursor,
                high_water_id: high_water,
            });
        }
    }
}

/// The identity stored for an instance; empty if there is none (an item
/// is still returned, with what the store knows).
fn load_identity(conn: &Connection, instance_key: i64) -> Result<HostIdentity, StoreError> {
    let body: Option<Vec<u8>> = conn
        .prepare_cached("SELECT identity FROM instances WHERE instance_key = ?1")?
        .query_row([instance_key], |r| r.get(0))
        .optional()?;
    Ok(body
        .and_then(|b| HostIdentity::decode(b.as_slice()).ok())
        .unwrap_or_default())
}

/// The persisted sequence state of one host, mirrored in memory.
#[derive(Debug, Clone, Default)]
struct HostState {
    key: i64,
    current_instance: Option<String>,
    /// instance id -> (instance_key, last sequence accepted).
    instances: HashMap<String, (i64, u64)>,
    last_batch_ns: u64,
    silent: bool,
    drops: DropCounters,
}

#[derive(Debug, Clone, Default)]
struct State {
    hosts: HashMap<String, HostState>,
    next_id: u64,
}

impl State {
    fn silent_hosts(&self) -> BTreeSet<String> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.silent)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn load(conn: &Connection) -> Result<Self, rusqlite::Error> {
        let mut hosts = HashMap::new();
        let mut by_key = HashMap::new();
        let mut current = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT host_key, host_id, current_instance_key, last_batch_ns, silent, drops
             FROM hosts",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key: i64 = r.get(0)?;
            let id: String = r.get(1)?;
            if let Some(k) = r.get::<_, Option<i64>>(2)? {
                current.insert(k, key);
            }
            let drops: Option<Vec<u8>> = r.get(5)?;
            hosts.insert(
                id.clone(),
                HostState {
                    key,
                    last_batch_ns: unsql(r.get(3)?),
                    silent: r.get::<_, i64>(4)? != 0,
                    drops: drops
                        .and_then(|d| DropCounters::decode(d.as_slice()).ok())
                        .unwrap_or_default(),
                    ..HostState::default()
                },
            );
            by_key.insert(key, id);
        }
        let mut stmt = conn
            .prepare("SELECT instance_key, host_key, instance_id, last_sequence FROM instances")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let instance_key: i64 = r.get(0)?;
            let host_key: i64 = r.get(1)?;
            let instance: String = r.get(2)?;
            let Some(host) = by_key.get(&host_key).and_then(|id| hosts.get_mut(id)) else {
                continue;
            };
            if current.get(&instance_key) == Some(&host_key) {
                host.current_instance = Some(instance.clone());
            }
            host.instances
                .insert(instance, (instance_key, unsql(r.get(3)?)));
        }
        let next_id: i64 =
            conn.query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
                r.get(0)
            })?;
        let max_id: Option<i64> = conn.query_row("SELECT max(id) FROM items", [], |r| r.get(0))?;
        Ok(Self {
            hosts,
            next_id: unsql(next_id).max(unsql(max_id.unwrap_or(0)) + 1),
        })
    }
}

/// Items of one committed transaction, published once it is durable.
enum Published {
    Event {
        host: Arc<HostIdentity>,
        sequence: u64,
        event: Event,
        received_ns: u64,
        id: u64,
    },
    Record(HostRecord),
}

struct Writer {
    conn: Connection,
    /// Released when the writer ends.
    _lock: std::fs::File,
    inner: Inner,
}

/// Everything of the writer but its connection, so a transaction on the
/// connection and changes to the state can be held at once.
struct Inner {
    state: State,
    config: StoreConfig,
    fanout: Fanout,
    committed: Arc<AtomicU64>,
    started_ns: u64,
    /// What [`Store::silent_hosts`] reads, refreshed after a commit that
    /// changed a host's silent flag (`silent_changed`).
    silent: Arc<Mutex<BTreeSet<String>>>,
    silent_changed: bool,
    counters: Arc<StoreCounters>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<BatchJob>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!(error = %e, "store writer cannot start; every batch will be refused");
                return;
            }
        };
        runtime.block_on(self.serve(rx));
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<BatchJob>) {
        let tick_every = (self.inner.config.silent_after / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(5))
            .min(self.inner.config.retention_interval);
        let mut tick = tokio::time::interval(tick_every);
        let mut last_retention = std::time::Instant::now();
        loop {
            tokio::select! {
                job = rx.recv() => {
                    let Some(job) = job else { break };
                    let mut group = vec![job];
                    let mut events = group[0].events.len();
                    while group.len() < MAX_GROUP_BATCHES && events < MAX_GROUP_EVENTS {
                        match rx.try_recv() {
                            Ok(job) => {
                                events += job.events.len();
                                group.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(group);
                }
                _ = tick.tick() => {
                    self.mark_silent();
                    if last_retention.elapsed() >= self.inner.config.retention_interval {
                        last_retention = std::time::Instant::now();
                        if let Err(e) = self.retention() {
                            warn!(error = %e, "store retention failed; retried next round");
                        }
                    }
                }
            }
        }
        info!("store writer stopped");
    }

    /// One transaction for the whole group; on failure the in-memory state
    /// goes back to what the database still holds and every batch of the
    /// group is refused (the sensors resend them).
    fn commit_group(&mut self, group: Vec<BatchJob>) {
        let started = std::time::Instant::now();
        let saved = self.inner.state.clone();
        let mut published = Vec::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.unchecked_transaction()?;
            for job in &group {
                outcomes.push(self.inner.store_batch(&tx, job, &mut published)?);
            }
            self.inner.commit(tx)
        })();
        match result {
            Ok(()) => {
                let c = &self.inner.counters;
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.batches.fetch_add(group.len() as u64, Ordering::Relaxed);
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                c.commit_nanos.fetch_add(took, Ordering::Relaxed);
                self.inner.publish_hosts();
                self.inner.committed_publish(published);
                for (job, observation) in group.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(BatchStored { observation }));
                }
            }
            Err(e) => {
                warn!(error = %e, batches = group.len(), "store commit failed, batches refused");
                self.inner.state = saved;
                self.inner.silent_changed = false;
                (self.inner.counters.commit_failures).fetch_add(1, Ordering::Relaxed);
                for job in group {
                    let _ = job.reply.send(Err(StoreError::Write(e.to_string())));
                }
            }
        }
    }

    /// Records every host that has been quiet for `silent_after` (counted
    /// from this collector's start for hosts stored before it).
    fn mark_silent(&mut self) {
        let now = unix_ns(SystemTime::now());
        let after = u64::try_from(self.inner.config.silent_after.as_nanos()).unwrap_or(u64::MAX);
        let quiet: Vec<String> = self
            .inner
            .state
            .hosts
            .iter()
            .filter(|(_, h)| {
                !h.silent && now.saturating_sub(h.last_batch_ns.max(self.inner.started_ns)) >= after
            })
            .map(|(id, _)| id.clone())
            .collect();
        if quiet.is_empty() {
            return;
        }
        let saved = self.inner.state.clone();
        let mut published = Vec::new();
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.unchecked_transaction()?;
            for host_id in &quiet {
                let Some(h) = self.inner.state.hosts.get_mut(host_id) else {
                    continue;
                };
                h.silent = true;
                self.inner.silent_changed = true;
                let (key, last_ns) = (h.key, h.last_batch_ns);
                let instance_key = h
                    .current_instance
                    .as_ref()
                    .and_then(|c| h.instances.get(c))
                    .map_or(0, |&(k, _)| k);
                let identity = if instance_key == 0 {
                    HostIdentity {
                        host_id: host_id.clone(),
                        ..HostIdentity::default()
                    }
                } else {
                    load_identity(&tx, instance_key).unwrap_or_default()
                };
                tx.prepare_cached("UPDATE hosts SET silent = 1 WHERE host_key = ?1")?
                    .execute([key])?;
                warn!(
                    host_id,
                    "host silent: no batch for {:?}", self.inner.config.silent_after
                );
                let record = status_record(
                    &identity,
                    host_status::State::Silent,
                    last_ns,
                    self.inner.config.silent_after,
                );
                self.inner
                    .insert_record(&tx, key, instance_key, 0, now, record, &mut published)?;
            }
            self.inner.commit(tx)
        })();
        match result {
            Ok(()) => {
                self.inner.publish_hosts();
                self.inner.committed_publish(published);
            }
            Err(e) => {
                warn!(error = %e, "cannot record silent hosts; retried next round");
                self.inner.state = saved;
                self.inner.silent_changed = false;
            }
        }
    }

    /// Deletes by age, then by size, oldest first, a chunk at a time.
    fn retention(&mut self) -> Result<(), rusqlite::Error> {
        let mut deleted = 0usize;
        if let Some(max_age) = self.inner.config.max_age {
            let cutoff = unix_ns(SystemTime::now())
                .saturating_sub(u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX));
            loop {
                let n = self.conn.execute(
                    "DELETE FROM items WHERE id IN
                       (SELECT id FROM items ORDER BY id LIMIT ?1) AND received_ns < ?2",
                    params![RETENTION_CHUNK, sql(cutoff)],
                )?;
                deleted += n;
                if n < RETENTION_CHUNK as usize {
                    break;
                }
            }
            self.conn
                .execute("DELETE FROM batches WHERE received_ns < ?1", [sql(cutoff)])?;
        }
        if let Some(max_bytes) = self.inner.config.max_bytes {
            loop {
                let used = self.used_bytes()?;
                if used <= max_bytes {
                    break;
                }
                // As many of the oldest as the excess (plus a tenth of the
                // limit, so retention does not run at every round) takes at
                // the average item size; ids are nearly contiguous.
                let (lo, hi): (Option<i64>, Option<i64>) =
                    self.conn
                        .query_row("SELECT min(id), max(id) FROM items", [], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                let (Some(lo), Some(hi)) = (lo, hi) else {
                    break;
                };
                let count = unsql(hi - lo + 1).max(1);
                let per_item = (used / count).max(1);
                let excess = used - max_bytes + max_bytes / 10;
                let n = sql(excess.div_ceil(per_item)).clamp(1, RETENTION_CHUNK);
                let n = self.conn.execute(
                    "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT ?1)",
                    [n],
                )?;
                deleted += n;
                // Batches older than every remaining item go too; kept
                // otherwise, so a late resend is still known as such.
                self.conn.execute(
                    "DELETE FROM batches WHERE received_ns <
                       coalesce((SELECT received_ns FROM items ORDER BY id LIMIT 1), 1 << 62)",
                    [],
                )?;
                if n == 0 {
                    break;
                }
            }
        }
        if deleted > 0 {
            self.conn.execute_batch("PRAGMA incremental_vacuum;")?;
            info!(deleted, "store retention deleted old items");
        }
        Ok(())
    }

    /// Bytes of database pages in use (free pages not counted).
    fn used_bytes(&self) -> Result<u64, rusqlite::Error> {
        let pragma = |name: &str| -> Result<u64, rusqlite::Error> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                .map(unsql)
        };
        Ok(pragma("page_count")?.saturating_sub(pragma("freelist_count")?) * pragma("page_size")?)
    }
}

impl Inner {
    /// Publishes what readers outside the writer see of the hosts: how
    /// many (metrics) and which are silent (`ListHosts`, and their count
    /// for the metrics). The silent set is rebuilt only after a change of
    /// a silent flag, not at every commit. Before the commit's items are
    /// published, so a subscriber that sees a host's silent record finds
    /// it silent in `ListHosts` too.
    fn publish_hosts(&mut self) {
        (self.counters.hosts).store(self.state.hosts.len() as u64, Ordering::Relaxed);
        if std::mem::take(&mut self.silent_changed) {
            let silent = self.state.silent_hosts();
            (self.counters.hosts_silent).store(silent.len() as u64, Ordering::Relaxed);
            *self.silent.lock().unwrap_or_else(PoisonError::into_inner) = silent;
        }
    }

    /// Commits a transaction with the id counter it advanced.
    fn commit(&self, tx: rusqlite::Transaction<'_>) -> Result<(), rusqlite::Error> {
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_id'",
            [sql(self.state.next_id)],
        )?;
        tx.commit()
    }

    /// After a commit: queries may read up to the new high-water mark,
    /// and subscribers get what was committed, in store id order.
    fn committed_publish(&self, published: Vec<Published>) {
        self.committed
            .store(self.state.next_id.saturating_sub(1), Ordering::Release);
        self.publish(published);
    }

    fn publish(&self, published: Vec<Published>) {
        for p in published {
            self.fanout.publish(match p {
                Published::Event {
                    host,
                    sequence,
                    event,
                    received_ns,
                    id,
                } => FanoutItem::Event {
                    host,
                    batch_sequence: sequence,
                    event: Arc::new(event),
                    received_unix_ns: received_ns,
                    store_id: id,
                },
                Published::Record(r) => FanoutItem::Record(Arc::new(r)),
            });
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.state.next_id;
        self.state.next_id += 1;
        id
    }

    fn host_key(&mut self, tx: &Connection, host_id: &str) -> Result<(i64, bool), rusqlite::Error> {
        if let Some(h) = self.state.hosts.get(host_id) {
            return Ok((h.key, false));
        }
        tx.prepare_cached("INSERT INTO hosts (host_id) VALUES (?1)")?
            .execute([host_id])?;
        let key = tx.last_insert_rowid();
        self.state.hosts.insert(
            host_id.to_owned(),
            HostState {
                key,
                ..HostState::default()
            },
        );
        Ok((key, true))
    }

    /// Sequence check against the persisted state, then the batch's rows.
    fn store_batch(
        &mut self,
        tx: &Connection,
        job: &BatchJob,
        published: &mut Vec<Published>,
    ) -> Result<Observation, rusqlite::Error> {
        let host_id = job.host.host_id.as_str();
        let instance = job.host.sensor_instance_id.as_str();
        let (host_key, new_host) = self.host_key(tx, host_id)?;
        let identity = job.host.encode_to_vec();
        let Some(state) = self.state.hosts.get_mut(host_id) else {
            return Err(rusqlite::Error::QueryReturnedNoRows);
        };
        let mut restart = None;
        let (instance_key, last) = match state.instances.get(instance) {
            Some(&(key, last)) => {
                tx.prepare_cached("UPDATE instances SET identity = ?2 WHERE instance_key = ?1")?
                    .execute(params![key, identity])?;
                (key, last)
            }
            None => {
                if let Some(current) = &state.current_instance {
                    restart = Some(Restart {
                        previous_instance_id: current.clone(),
                        previous_last_sequence: state
                            .instances
                            .get(current)
                            .map_or(0, |&(_, last)| last),
                    });
                }
                // The first batch ever from a host is its baseline: what
                // the sensor sent before this store existed is unknown.
                let last = if new_host {
                    job.sequence.saturating_sub(1)
                } else {
                    0
                };
                tx.prepare_cached(
                    "INSERT INTO instances (host_key, instance_id, identity, last_sequence)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![host_key, instance, identity, sql(last)])?;
                let key = tx.last_insert_rowid();
                state.instances.insert(instance.to_owned(), (key, last));
                state.current_instance = Some(instance.to_owned());
                (key, last)
            }
        };
        let fresh =
            tx.prepare_cached(
                "INSERT OR IGNORE INTO batches (instance_key, sequence, received_ns, events)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                instance_key,
                sql(job.sequence),
                sql(job.received_ns),
                job.events.len() as i64
            ])? == 1;
        let continuity = if !fresh {
            Continuity::Duplicate
        } else if job.sequence == last + 1 {
            Continuity::InOrder
        } else if job.sequence > last + 1 {
            Continuity::Gap {
                first: last + 1,
                last: job.sequence - 1,
            }
        } else {
            Continuity::Late
        };
        let observation = Observation {
            restart,
            continuity,
        };
        let was_silent = state.silent;
        let mut records = hosts::sequence_records(&job.host, job.sequence, &observation);
        if observation.is_new() {
            let new_last = last.max(job.sequence);
            state
                .instances
                .insert(instance.to_owned(), (instance_key, new_last));
            if observation.restart.is_some() {
                state.drops = DropCounters::default();
            }
            if let Some(drops) = job.drops
                && drops != state.drops
            {
                state.drops = drops;
                records.push(HostRecord {
                    host: Some(job.host.clone()),
                    record: Some(host_record::Record::Drops(drops)),
                    ..HostRecord::default()
                });
            }
            tx.prepare_cached("UPDATE instances SET last_sequence = ?2 WHERE instance_key = ?1")?
                .execute(params![instance_key, sql(new_last)])?;
        }
        if was_silent {
            self.silent_changed = true;
            records.push(status_record(
                &job.host,
                host_status::State::Back,
                state.last_batch_ns,
                self.config.silent_after,
            ));
        }
        state.silent = false;
        state.last_batch_ns = job.received_ns;
        let current_key = state
            .current_instance
            .as_ref()
            .and_then(|c| state.instances.get(c))
            .map(|&(k, _)| k);
        let drops = state.drops.encode_to_vec();
        tx.prepare_cached(
            "UPDATE hosts SET current_instance_key = ?2, last_batch_ns = ?3, silent = 0, drops = ?4
             WHERE host_key = ?1",
        )?
        .execute(params![host_key, current_key, sql(job.received_ns), drops])?;

        for record in records {
            self.insert_record(
                tx,
                host_key,
                instance_key,
                job.sequence,
                job.received_ns,
                record,
                published,
            )?;
        }
        if observation.is_new() {
            let host = Arc::new(job.host.clone());
            let mut insert = tx.prepare_cached(
                "INSERT INTO items (id, host_key, instance_key, kind, time_ns, received_ns,
                    batch_sequence, batch_index, process, pid, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for (index, event) in job.events.iter().enumerate() {
                let id = self.state.next_id;
                self.state.next_id += 1;
                let process = fanout::process_of(event);
                insert.execute(params![
                    sql(id),
                    host_key,
                    instance_key,
                    i64::from(fanout::event_kind(event) as i32),
                    sql(event.wall_time_unix_ns().unwrap_or(job.received_ns)),
                    sql(job.received_ns),
                    sql(job.sequence),
                    index as i64,
                    process.map(|p| p.comm.as_str()),
                    process.map(|p| i64::from(p.pid)),
                    event.encode_to_vec(),
                ])?;
                published.push(Published::Event {
                    host: host.clone(),
                    sequence: job.sequence,
                    event: event.clone(),
                    received_ns: job.received_ns,
                    id,
                });
            }
        }
        Ok(observation)
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_record(
        &mut self,
        tx: &Connection,
        host_key: i64,
        instance_key: i64,
        sequence: u64,
        now_ns: u64,
        mut record: HostRecord,
        published: &mut Vec<Published>,
    ) -> Result<(), rusqlite::Error> {
        let id = self.next_id();
        record.recorded_unix_ns = now_ns;
        // The identity is kept once per instance, not per record.
        let host = record.host.take();
        tx.prepare_cached(
            "INSERT INTO items (id, host_key, instance_key, kind, time_ns, received_ns,
                batch_sequence, batch_index, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, 0, ?7)",
        )?
        .execute(params![
            sql(id),
            host_key,
            instance_key,
            RECORD_KIND,
            sql(now_ns),
            sql(sequence),
            record.encode_to_vec()
        ])?;
        record.host = host;
        record.store_id = id;
        published.push(Published::Record(record));
        Ok(())
    }
}

fn status_record(
    host: &HostIdentity,
    state: host_status::State,
    last_batch_ns: u64,
    silent_after: Duration,
) -> HostRecord {
    HostRecord {
        host: Some(host.clone()),
        record: Some(host_record::Record::Status(HostStatus {
            state: state as i32,
            last_batch_unix_ns: last_batch_ns,
            silent_after_ms: u64::try_from(silent_after.as_millis()).unwrap_or(u64::MAX),
        })),
        ..HostRecord::default()
    }
}
