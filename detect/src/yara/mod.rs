//! YARA rules on file content (feature `yara`, engine `yara-x`).
//!
//! Rules are compiled once per load into [`YaraRules`]; a file whose rules
//! do not compile fails the whole load with its file and the compiler's
//! message ([`YaraLoadError`]), so a reload keeps the last good set. Files
//! are read by us (bounded by `max_file_bytes`, never blocking on a FIFO),
//! hashed while read, and the bytes scanned in memory. The [`worker`] runs
//! scans off the event path through a bounded queue. See docs/detection.md.

pub mod worker;

use std::{
    collections::HashSet,
    fs::File,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use sha2::{Digest, Sha256};

/// The product's default YARA pack (`detect/yara/`), built in.
pub const DEFAULT_YARA_PACK: &[(&str, &str)] = &[
    (
        "elf_reverse_shell.yar",
        include_str!("../../yara/elf_reverse_shell.yar"),
    ),
    (
        "script_base64_shell.yar",
        include_str!("../../yara/script_base64_shell.yar"),
    ),
    (
        "webshell_marker.yar",
        include_str!("../../yara/webshell_marker.yar"),
    ),
];

/// Longest a single scan may run: a pathological rule or file cannot stall
/// the worker for long (the scan then counts as an error).
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a YARA rule set was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum YaraLoadError {
    #[error("cannot read YARA rule directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Files that did not compile (each with the compiler's message).
    #[error("{} YARA rule file(s) refused, first: {}", .0.len(), .0[0])]
    Refused(Vec<YaraRefusal>),
}

/// One rule file that did not compile or could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct YaraRefusal {
    pub file: String,
    pub message: String,
}

/// A compiled rule set and where each namespace came from.
pub struct YaraRules {
    rules: yara_x::Rules,
    /// (namespace, source file), one per compiled file.
    sources: Vec<(String, String)>,
}

impl std::fmt::Debug for YaraRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YaraRules")
            .field("rules", &self.len())
            .field("sources", &self.sources)
            .finish()
    }
}

impl YaraRules {
    /// Compiles the default pack (if `default_pack`) and every `*.yar` /
    /// `*.yara` under `dirs` (recursively, in name order). Each file is its
    /// own namespace (its file stem, made unique). Any file that does not
    /// compile refuses the whole set.
    pub fn load(default_pack: bool, dirs: &[PathBuf]) -> Result<Self, YaraLoadError> {
        let mut files: Vec<(String, String, Result<String, String>)> = Vec::new();
        if default_pack {
            for (name, text) in DEFAULT_YARA_PACK {
                files.push((
                    stem(Path::new(name)),
                    format!("builtin:{name}"),
                    Ok((*text).to_owned()),
                ));
            }
        }
        for dir in dirs {
            let mut paths = Vec::new();
            crate::collect(dir, &["yar", "yara"], &mut paths).map_err(|source| {
                YaraLoadError::Dir {
                    path: dir.clone(),
                    source,
                }
            })?;
            paths.sort();
            for p in paths {
                let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read: {e}"));
                files.push((stem(&p), p.display().to_string(), text));
            }
        }
        Self::compile(files)
    }

    /// Compiles `(namespace, source, text)` triples.
    fn compile(
        files: Vec<(String, String, Result<String, String>)>,
    ) -> Result<Self, YaraLoadError> {
        let mut compiler = yara_x::Compiler::new();
        compiler.colorize_errors(false);
        let mut refused = Vec::new();
        let mut sources = Vec::new();
        let mut used = HashSet::new();
        for (stem, source, text) in &files {
            let text = match text {
                Ok(t) => t,
                Err(message) => {
                    refused.push(YaraRefusal {
                        file: source.clone(),
                        message: message.clone(),
                    });
                    continue;
                }
            };
            let mut namespace = stem.clone();
            let mut n = 2;
            while !used.insert(namespace.clone()) {
                namespace = format!("{stem}_{n}");
                n += 1;
            }
            compiler.new_namespace(&namespace);
            let code = yara_x::SourceCode::from(text.as_str()).with_origin(source.as_str());
            match compiler.add_source(code) {
                Ok(_) => sources.push((namespace, source.clone())),
                Err(e) => refused.push(YaraRefusal {
                    file: source.clone(),
                    message: e.to_string(),
                }),
            }
        }
        if !refused.is_empty() {
            return Err(YaraLoadError::Refused(refused));
        }
        Ok(Self {
            rules: compiler.build(),
            sources,
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.iter().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The compiled files, as `(namespace, source)`.
    pub fn sources(&self) -> &[(String, String)] {
        &self.sources
    }

    /// A scanner over these rules (reuse it: creating one costs more than a
    /// small scan).
    pub fn scanner(&self) -> FileScanner<'_> {
        let mut scanner = yara_x::Scanner::new(&self.rules);
        scanner.set_timeout(SCAN_TIMEOUT);
        FileScanner {
            rules: self,
            scanner,
            buf: Vec::new(),
        }
    }

    fn source_of(&self, namespace: &str) -> &str {
        self.sources
            .iter()
            .find(|(ns, _)| ns == namespace)
            .map_or("", |(_, s)| s.as_str())
    }
}

fn stem(path: &Path) -> String {
    let s: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("r_{s}")
    } else {
        s
    }
}

/// One matching rule, with what an alert shows of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YaraMatch {
    pub namespace: String,
    pub identifier: String,
    /// Meta `title` (else `description`, else the identifier).
    pub title: String,
    /// Meta `level` (else `severity`), default `high`.
    pub level: String,
    pub author: String,
    /// The rule's YARA tags.
    pub tags: Vec<String>,
    /// Meta `attack`: comma-separated ATT&CK technique ids.
    pub attack_ids: Vec<String>,
    /// The rule file (or `builtin:<name>`).
    pub source: String,
}

/// What one scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Lowercase hex SHA-256 of the bytes scanned.
    pub sha256: String,
    pub size: u64,
    pub matches: Vec<YaraMatch>,
}

/// Why a file was not scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is {size} bytes, more than max_file_bytes ({max})")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path} is device {device:#x} inode {inode}, not the file of the event")]
    Replaced {
        path: PathBuf,
        device: u64,
        inode: u64,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("YARA scan of {path} failed: {message}")]
    Engine { path: PathBuf, message: String },
}

/// Scans files with one rule set; one per thread.
pub struct FileScanner<'r> {
    rules: &'r YaraRules,
    scanner: yara_x::Scanner<'r>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for FileScanner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileScanner").finish_non_exhaustive()
    }
}

impl FileScanner<'_> {
    /// Opens `path` (non-blocking: a FIFO put in its place cannot hang
    /// us), checks it is a regular file of at most `max_file_bytes` (and
    /// the (device, inode) `expect`ed, when given), reads and scans it.
    pub fn scan_path(
        &mut self,
        path: &Path,
        max_file_bytes: u64,
        expect: Option<(u64, u64)>,
    ) -> Result<ScanOutcome, ScanError> {
        let file = File::options()
            .read(true)
            .custom_flags(libc_flags())
            .open(path)
            .map_err(|source| ScanError::Open {
                path: path.to_owned(),
                source,
            })?;
        let read_err = |source| ScanError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(read_err)?;
        if let Some((device, inode)) = expect
            && (meta.dev(), meta.ino()) != (device, inode)
        {
            return Err(ScanError::Replaced {
                path: path.to_owned(),
                device: meta.dev(),
                inode: meta.ino(),
            });
        }
        if !meta.is_file() {
            return Err(ScanError::NotRegular {
                path: path.to_owned(),
            });
        }
        let too_large = |size| ScanError::TooLarge {
            path: path.to_owned(),
            size,
            max: max_file_bytes,
        };
        if meta.size() > max_file_bytes {
            return Err(too_large(meta.size()));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let read = file
            .take(max_file_bytes.saturating_add(1))
            .read_to_end(&mut buf);
        let result = match read {
            Err(e) => Err(read_err(e)),
            // It grew past the limit while we read it.
            Ok(_) if buf.len() as u64 > max_file_bytes => Err(too_large(buf.len() as u64)),
            Ok(_) => self.scan_bytes(&buf).map_err(|message| ScanError::Engine {
                path: path.to_owned(),
                message,
            }),
        };
        self.buf = buf;
        result
    }

    /// Scans `data` in memory.
    pub fn scan_bytes(&mut self, data: &[u8]) -> Result<ScanOutcome, String> {
        let rules = self.rules;
        let results = self.scanner.scan(data).map_err(|e| e.to_string())?;
        let matches = results
            .matching_rules()
            .map(|r| describe(rules, &r))
            .collect();
        Ok(ScanOutcome {
            sha256: format!("{:x}", Sha256::digest(data)),
            size: data.len() as u64,
            matches,
        })
    }
}

fn libc_flags() -> i32 {
    // O_NONBLOCK | O_NOCTTY on Linux (all architectures we build for).
    0o4000 | 0o400
}

fn describe(rules: &YaraRules, r: &yara_x::Rule<'_, '_>) -> YaraMatch {
    let mut m = YaraMatch {
        namespace: r.namespace().to_owned(),
        identifier: r.identifier().to_owned(),
        title: String::new(),
        level: String::new(),
        author: String::new(),
        tags: r.tags().map(|t| t.identifier().to_owned()).collect(),
        attack_ids: Vec::new(),
        source: rules.source_of(r.namespace()).to_owned(),
    };
    let mut description = String::new();
    for (key, value) in r.metadata() {
        let yara_x::MetaValue::String(text) = value else {
            continue;
        };
        match key {
            "title" => m.title = text.to_owned(),
            "description" => description = text.to_owned(),
            "level" | "severity" => m.level = text.to_ascii_lowercase(),
            "author" => m.author = text.to_owned(),
            "attack" | "mitre_attack" => {
                m.attack_ids = text
                    .split([',', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_ascii_uppercase)
                    .collect();
            }
            _ => {}
        }
    }
    if m.title.is_empty() {
        m.title = if description.is_empty() {
            m.identifier.clone()
        } else {
            description
        };
    }
    if m.level.is_empty() {
        m.level = "high".into();
    }
    m
}

/// The YARA rule set in force, shared by the daemon (which replaces it on
/// reload) and the scan worker (which picks it up at its next scan).
#[derive(Debug)]
pub struct YaraStore {
    current: Mutex<Arc<YaraRules>>,
    generation: AtomicU64,
}

impl YaraStore {
    pub fn new(rules: YaraRules) -> Arc<Self> {
        Arc::new(Self {
            current: Mutex::new(Arc::new(rules)),
            generation: AtomicU64::new(1),
        })
    }

    /// Puts `rules` in force from the next scan on.
    pub fn replace(&self, rules: YaraRules) {
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(rules);
        self.generation.fetch_add(1, Relaxed);
    }

    /// Changes with every [`Self::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The set in force and its generation.
    pub fn get(&self) -> (u64, Arc<YaraRules>) {
        let current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        (self.generation.load(Relaxed), current.clone())
    }
}
