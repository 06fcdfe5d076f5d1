//! Sigma rules on the sensor's enriched events, without the kernel.
//!
//! Rules are parsed and compiled once, by a [`Loader`], into a [`RuleSet`]
//! (matchers, regexes and condition trees). Each event is handed over as an
//! [`EventRef`] borrowing from the enriched event; [`RuleSet::matches`]
//! reads a field only when a rule of the event's category asks for it, into
//! a reused [`Scratch`]. A rule that uses something the sensor cannot
//! evaluate is refused at load with its file and field named
//! ([`Refusal`]), never half-loaded. See docs/detection.md.

mod condition;
mod field;
mod matcher;
mod paths;
mod rule;
mod sequence;
#[cfg(feature = "proto")]
pub mod telemetry;
#[cfg(feature = "yara")]
pub mod yara;

use std::path::{Path, PathBuf};

pub use field::{Category, CommandLine, EventRef, Field};
pub use paths::{BlindRule, PathBound, PathNeed, PathNeeds};
pub use rule::{Action, Placeholders, Refusal, RefusalKind, Rule, StepRef, attack_ids};
pub use sequence::{Fired, MAX_PARTIALS, Scope, Sequence, SequenceEvent, SequenceTracker, Step};

use matcher::{Prefilter, Value, ValueMatcher};

/// The product's default pack (Sigma, `detect/rules/`), built in.
pub const DEFAULT_PACK: &[(&str, &str)] = &[
    (
        "exec_world_writable.yml",
        include_str!("../rules/exec_world_writable.yml"),
    ),
    (
        "shell_from_pos_app.yml",
        include_str!("../rules/shell_from_pos_app.yml"),
    ),
    (
        "shell_network_connection.yml",
        include_str!("../rules/shell_network_connection.yml"),
    ),
    ("read_shadow.yml", include_str!("../rules/read_shadow.yml")),
    (
        "read_phi_store.yml",
        include_str!("../rules/read_phi_store.yml"),
    ),
    (
        "write_rxsentry_files.yml",
        include_str!("../rules/write_rxsentry_files.yml"),
    ),
    (
        "new_listening_port.yml",
        include_str!("../rules/new_listening_port.yml"),
    ),
    (
        "phi_read_then_connection.yml",
        include_str!("../rules/phi_read_then_connection.yml"),
    ),
    (
        "phi_mass_change.yml",
        include_str!("../rules/phi_mass_change.yml"),
    ),
    (
        "allowlist_block_burst.yml",
        include_str!("../rules/allowlist_block_burst.yml"),
    ),
];

/// The default values of the placeholders the default pack uses
/// (`[detection.placeholders]` in the sensor's config replaces each).
pub fn default_placeholders() -> Placeholders {
    let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    [
        (
            "pos_apps",
            list(&["/opt/pos/bin/*", "/opt/dispensing/bin/*"]),
        ),
        (
            "shadow_readers",
            list(&[
                "/usr/sbin/unix_chkpwd",
                "/usr/bin/passwd",
                "/usr/bin/chage",
                "/usr/bin/gpasswd",
                "/usr/bin/newgrp",
                "/usr/bin/su",
                "/usr/bin/sudo",
                "/usr/bin/login",
                "/usr/sbin/chpasswd",
                "/usr/sbin/useradd",
                "/usr/sbin/usermod",
                "/usr/sbin/userdel",
                "/usr/sbin/pwck",
                "/usr/sbin/grpck",
                "/usr/sbin/sshd",
            ]),
        ),
        ("phi_dirs", list(&["/var/lib/pharmacy/"])),
        (
            "phi_readers",
            list(&["/opt/dispensing/bin/*", "/opt/pos/bin/*"]),
        ),
        (
            "listeners",
            list(&["/usr/sbin/sshd", "/opt/pos/bin/*", "/opt/dispensing/bin/*"]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A rule directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read rule directory {}: {source}", path.display())]
pub struct DirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Compiles rules from text, directories and the built-in pack.
#[derive(Debug, Default)]
pub struct Loader {
    placeholders: Placeholders,
    rules: Vec<Rule>,
    sequences: Vec<Sequence>,
    refused: Vec<Refusal>,
}

impl Loader {
    /// `placeholders` give the values of `|expand` `%name%` values.
    pub fn new(placeholders: Placeholders) -> Self {
        Self {
            placeholders,
            ..Self::default()
        }
    }

    /// One rule file's text; `source` names it in refusals and alerts.
    pub fn add(&mut self, source: &str, text: &str) {
        match rule::compile(source, text, &self.placeholders) {
            Ok(rule::Compiled::Rule(r)) => self.rules.push(r),
            Ok(rule::Compiled::Sequence(seq, steps)) => {
                let index = self.sequences.len();
                self.rules.extend(steps.into_iter().map(|mut r| {
                    if let Some(step) = &mut r.step {
                        step.sequence = index;
                    }
                    r
                }));
                self.sequences.push(seq);
            }
            Err(e) => self.refused.push(e),
        }
    }

    /// The built-in [`DEFAULT_PACK`].
    pub fn add_default_pack(&mut self) {
        for (name, text) in DEFAULT_PACK {
            self.add(&format!("builtin:{name}"), text);
        }
    }

    /// Every `*.yml` / `*.yaml` under `dir` (recursively, in name order).
    /// An unreadable file is an invalid rule; a missing directory an error.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), DirError> {
        let mut files = Vec::new();
        collect(dir, &["yml", "yaml"], &mut files).map_err(|source| DirError {
            path: dir.to_owned(),
            source,
        })?;
        files.sort();
        for path in files {
            let source = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => self.add(&source, &text),
                Err(e) => self.refused.push(Refusal {
                    file: source,
                    field: "(file)".into(),
                    reason: format!("cannot read: {e}"),
                    kind: RefusalKind::Invalid,
                }),
            }
        }
        Ok(())
    }

    /// The loaded rules and the refused files.
    pub fn finish(mut self) -> (RuleSet, Vec<Refusal>) {
        let prefilters = number_needles(&mut self.rules);
        let mut by_category: [Vec<Rule>; Category::COUNT] = Default::default();
        let mut len = self.sequences.len();
        for r in self.rules {
            len += usize::from(r.step.is_none());
            by_category[r.category.index()].push(r);
        }
        let set = RuleSet {
            by_category,
            len,
            prefilters,
            sequences: self.sequences,
        };
        (set, self.refused)
    }
}

/// Gives every case-insensitive text needle its id in its field's
/// prefilter, and builds the prefilters.
fn number_needles(rules: &mut [Rule]) -> [Option<Prefilter>; Field::COUNT] {
    let mut needles: [Vec<String>; Field::COUNT] = Default::default();
    let mut ids: [std::collections::HashMap<String, usize>; Field::COUNT] = Default::default();
    let matchers = rules
        .iter_mut()
        .flat_map(|r| r.items.iter_mut())
        .flat_map(|i| i.groups.iter_mut())
        .flatten();
    for m in matchers {
        let f = m.field.index();
        for v in &mut m.values {
            if let ValueMatcher::Text {
                needle,
                cased: false,
                id,
                ..
            } = v
                && !needle.is_empty()
            {
                let next = needles[f].len();
                let got = *ids[f].entry(needle.clone()).or_insert(next);
                if got == next {
                    needles[f].push(needle.clone());
                }
                *id = Some(got);
            }
        }
    }
    let prefilters = needles.map(|n| Prefilter::new(&n));
    // Without its automaton a field's needles are searched one by one.
    for r in rules.iter_mut() {
        for m in r
            .items
            .iter_mut()
            .flat_map(|i| i.groups.iter_mut())
            .flatten()
        {
            if prefilters[m.field.index()].is_none() {
                for v in &mut m.values {
                    if let ValueMatcher::Text { id, .. } = v {
                        *id = None;
                    }
                }
            }
            m.collect_needle_bits();
        }
    }
    prefilters
}

/// Every rule file under `dir` (recursively), Sigma and YARA: what a
/// reload reads, so a change to any of them can trigger one.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    collect(dir, &["yml", "yaml", "yar", "yara"], &mut out)?;
    out.sort();
    Ok(out)
}

/// Every file under `dir` (recursively) whose extension is one of
/// `extensions`: Sigma's `yml`/`yaml`, YARA's `yar`/`yara`.
pub(crate) fn collect(
    dir: &Path,
    extensions: &[&str],
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect(&path, extensions, out)?;
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Compiled rules, by logsource category.
#[derive(Debug, Default)]
pub struct RuleSet {
    by_category: [Vec<Rule>; Category::COUNT],
    len: usize,
    /// Per field: all its rules' text needles, found in one pass.
    prefilters: [Option<Prefilter>; Field::COUNT],
    /// Sequence rules; their steps' matchers are in `by_category`.
    sequences: Vec<Sequence>,
}

impl RuleSet {
    /// Rules and sequence rules (a sequence counts once).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The Sigma rules (not the steps of sequence rules).
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.by_category
            .iter()
            .flatten()
            .filter(|r| r.step.is_none())
    }

    pub fn sequences(&self) -> &[Sequence] {
        &self.sequences
    }

    /// Appends to `out` every rule that matches `event` (sequence steps are
    /// left out: see [`Self::evaluate`]).
    pub fn matches<'r>(
        &'r self,
        event: &EventRef<'_>,
        scratch: &mut Scratch,
        out: &mut Vec<&'r Rule>,
    ) {
        self.evaluate(event, scratch, out, &mut Vec::new());
    }

    /// Appends to `rules` every rule that matches `event`, and to `steps`
    /// every sequence step it matches (for a [`SequenceTracker`]).
    pub fn evaluate<'r>(
        &'r self,
        event: &EventRef<'_>,
        scratch: &mut Scratch,
        rules: &mut Vec<&'r Rule>,
        steps: &mut Vec<StepRef>,
    ) {
        let candidates = &self.by_category[event.category.index()];
        if candidates.is_empty() {
            return;
        }
        scratch.reset();
        for rule in candidates {
            let hit = rule.condition.eval(&mut |i| {
                rule.items[i].groups.iter().any(|group| {
                    group.iter().all(|m| {
                        let prefilter = self.prefilters[m.field.index()].as_ref();
                        m.matches(scratch.value(event, m.field, prefilter).as_ref())
                    })
                })
            });
            if hit {
                match rule.step {
                    Some(step) => steps.push(step),
                    None => rules.push(rule),
                }
            }
        }
    }
}

/// Per-event field values, reused from event to event (one per evaluating
/// thread): a field is read from the event and lowercased at most once per
/// event, and only if a rule asks for it.
#[derive(Debug)]
pub struct Scratch {
    raw: [String; Field::COUNT],
    lower: [String; Field::COUNT],
    /// The prefilter needles found in each field.
    present: [Vec<u64>; Field::COUNT],
    /// 0 not read yet, 1 present, 2 absent.
    state: [u8; Field::COUNT],
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            raw: Default::default(),
            lower: Default::default(),
            present: Default::default(),
            state: [0; Field::COUNT],
        }
    }
}

impl Scratch {
    fn reset(&mut self) {
        self.state = [0; Field::COUNT];
    }

    fn value(
        &mut self,
        event: &EventRef<'_>,
        field: Field,
        prefilter: Option<&Prefilter>,
    ) -> Option<Value<'_>> {
        let i = field.index();
        if self.state[i] == 0 {
            let present = event.write(field, &mut self.raw[i]);
            self.state[i] = if present { 1 } else { 2 };
            if present {
                let lower = &mut self.lower[i];
                lower.clear();
                if self.raw[i].is_ascii() {
                    lower.push_str(&self.raw[i]);
                    lower.make_ascii_lowercase();
                } else {
                    lower.extend(self.raw[i].chars().flat_map(char::to_lowercase));
                }
                match prefilter {
                    Some(p) => p.scan(lower, &mut self.present[i]),
                    None => self.present[i].clear(),
                }
            }
        }
        (self.state[i] == 1).then(|| Value {
            raw: &self.raw[i],
            lower: &self.lower[i],
            present: &self.present[i],
        })
    }
}

/// Where SigmaHQ's Linux rules are: the project's test and bench data,
/// never shipped or copied into the repository. `$RXSENTRY_SHARED` (the
/// shared folder) first, else a `shared` folder beside `workspace` or one
/// of its parents (a checkout at /work/main finds /work/shared), else the
/// workplace's /work/shared (a clean clone elsewhere, as CI makes).
pub fn sigmahq_rules_dir(workspace: &Path) -> Option<PathBuf> {
    let rules = |shared: &Path| shared.join("sigma").join("rules");
    let from_env = std::env::var_os("RXSENTRY_SHARED").map(|d| rules(Path::new(&d)));
    let beside = workspace.ancestors().map(|a| rules(&a.join("shared")));
    from_env
        .into_iter()
        .chain(beside)
        .chain(std::iter::once(rules(Path::new("/work/shared"))))
        .find(|d| d.is_dir())
}
