//! Sequence rules (rxsentry's own format, docs/detection.md#sequence-rules):
//! steps that must happen in order, by one process, one process tree or
//! anywhere on the host, within a time window; a step may have to happen
//! `count` times. Each step is a Sigma `logsource` + `detection`, compiled
//! like a rule ([`crate::Rule`] with [`StepRef`]); the [`SequenceTracker`]
//! follows the partial sequences from the steps' hits.

use std::collections::{HashMap, VecDeque};

use serde_norway::{Mapping, Value as Yaml};

use crate::{
    field::Category,
    rule::{Action, Ctx, Header, Refusal, Rule, StepRef, detection},
};

/// Who the steps of a sequence must come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The same process (pid) for every step.
    Process,
    /// The first step's process, or any process below it, for the later
    /// steps.
    ProcessTree,
    /// Any process.
    Host,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Process => "process",
            Scope::ProcessTree => "process_tree",
            Scope::Host => "host",
        }
    }
}

/// One step: how many matching events it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub category: Category,
    pub count: u32,
}

/// A compiled sequence rule (its steps' matchers are in the rule set).
#[derive(Debug)]
pub struct Sequence {
    pub id: String,
    pub title: String,
    pub author: String,
    pub level: String,
    pub tags: Vec<String>,
    pub source: String,
    pub response: Vec<Action>,
    pub by: Scope,
    /// From the first step's first event to the last step's last event.
    pub within_ns: u64,
    pub steps: Vec<Step>,
}

impl Sequence {
    /// The MITRE ATT&CK ids among the tags.
    pub fn attack_ids(&self) -> impl Iterator<Item = String> + '_ {
        crate::rule::attack_ids(&self.tags)
    }
}

/// Bounds a rule file cannot go past (a typo must not make a rule that
/// holds state for a day per process).
pub const MAX_STEPS: usize = 8;
pub const MAX_COUNT: u32 = 10_000;
pub const MAX_WITHIN_SECS: u64 = 86_400;

/// Compiles `sequence:` of a rule file.
pub(crate) fn compile(
    ctx: &Ctx<'_>,
    header: Header,
    value: &Yaml,
) -> Result<(Sequence, Vec<Rule>), Refusal> {
    let Yaml::Mapping(map) = value else {
        return Err(ctx.invalid("sequence", "a mapping with by, within and steps"));
    };
    only_keys(ctx, "sequence", map, &["by", "within", "steps"])?;
    let by = match map.get("by").and_then(Yaml::as_str) {
        Some("process") => Scope::Process,
        Some("process_tree") => Scope::ProcessTree,
        Some("host") => Scope::Host,
        _ => {
            return Err(ctx.invalid(
                "sequence.by",
                "missing or not one of process, process_tree, host",
            ));
        }
    };
    let within_secs = map
        .get("within")
        .and_then(seconds)
        .filter(|s| (1..=MAX_WITHIN_SECS).contains(s))
        .ok_or_else(|| {
            ctx.invalid(
                "sequence.within",
                format!("missing or not 1 to {MAX_WITHIN_SECS} seconds (`60`, `60s`, `5m`, `1h`)"),
            )
        })?;
    let Some(Yaml::Sequence(list)) = map.get("steps") else {
        return Err(ctx.invalid("sequence.steps", "missing or not a list"));
    };
    if list.is_empty() || list.len() > MAX_STEPS {
        return Err(ctx.invalid(
            "sequence.steps",
            format!("1 to {MAX_STEPS} steps, got {}", list.len()),
        ));
    }
    let mut steps = Vec::with_capacity(list.len());
    let mut matchers = Vec::with_capacity(list.len());
    for (i, step) in list.iter().enumerate() {
        let step_ctx = Ctx {
            source: ctx.source,
            placeholders: ctx.placeholders,
            prefix: format!("sequence.steps[{i}]."),
        };
        let Yaml::Mapping(step) = step else {
            return Err(step_ctx.invalid("(step)", "a step is a mapping"));
        };
        only_keys(
            &step_ctx,
            "(step)",
            step,
            &["logsource", "detection", "count"],
        )?;
        let count = match step.get("count") {
            None => 1,
            Some(v) => v
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .filter(|c| (1..=MAX_COUNT).contains(c))
                .ok_or_else(|| {
                    step_ctx.invalid("count", format!("a whole number from 1 to {MAX_COUNT}"))
                })?,
        };
        let (category, items, condition) = detection(&step_ctx, step)?;
        steps.push(Step { category, count });
        matchers.push(Rule {
            id: header.id.clone(),
            title: format!("{} (step {})", header.title, i + 1),
            author: header.author.clone(),
            level: header.level.clone(),
            tags: Vec::new(),
            source: ctx.source.to_owned(),
            category,
            response: Vec::new(),
            step: Some(StepRef {
                sequence: 0,
                step: i,
            }),
            items,
            condition,
        });
    }
    let sequence = Sequence {
        id: header.id,
        title: header.title,
        author: header.author,
        level: header.level,
        tags: header.tags,
        source: ctx.source.to_owned(),
        response: header.response,
        by,
        within_ns: within_secs * 1_000_000_000,
        steps,
    };
    Ok((sequence, matchers))
}

fn only_keys(ctx: &Ctx<'_>, at: &str, map: &Mapping, known: &[&str]) -> Result<(), Refusal> {
    for key in map.keys() {
        let name = key.as_str().unwrap_or("?");
        if !known.contains(&name) {
            return Err(ctx.invalid(
                at,
                format!("unknown key `{name}`; accepted: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// `60`, `"60s"`, `"5m"`, `"1h"` as seconds.
fn seconds(v: &Yaml) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let text = v.as_str()?.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The event a step matched, as the tracker needs it.
#[derive(Clone, Copy, Debug)]
pub struct SequenceEvent<'a> {
    /// Event time (the sensor's boot-relative ns).
    pub time_ns: u64,
    pub pid: u32,
    /// The process's ancestors' pids, parent first (only read by
    /// `process_tree` sequences).
    pub ancestors: &'a [u32],
    /// What the event was about, kept for the alert ("exec /tmp/x").
    pub subject: &'a str,
}

/// A sequence that completed.
#[derive(Debug)]
pub struct Fired<'r> {
    pub sequence: &'r Sequence,
    /// The subjects of the events that completed each step, oldest first
    /// (the last one is the event being evaluated).
    pub steps: Vec<String>,
}

/// How many partial sequences one rule keeps (processes, or trees, that
/// did the first steps); past it a new one is dropped and counted.
pub const MAX_PARTIALS: usize = 4096;

/// A sequence under way for one key (a pid, or the host).
#[derive(Debug, Default)]
struct Partial {
    /// The step waited for.
    stage: usize,
    /// When the first step completed: the window runs from there.
    started_ns: u64,
    /// Matches of the current step (only `count` > 1 needs more than one).
    times: VecDeque<u64>,
    steps: Vec<String>,
}

/// The partial sequences of one rule set (a reload starts a new one).
#[derive(Debug, Default)]
pub struct SequenceTracker {
    partials: Vec<HashMap<u32, Partial>>,
    dropped: u64,
}

impl SequenceTracker {
    /// Partial sequences not started because their rule's table was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Partial sequences held now, all rules together.
    pub fn partials(&self) -> usize {
        self.partials.iter().map(HashMap::len).sum()
    }

    /// Takes the step matches of one event (`hits`, as
    /// [`crate::RuleSet::evaluate`] gives them) and returns the sequences
    /// it completed. One event advances a sequence by one step at most.
    pub fn observe<'r>(
        &mut self,
        set: &'r crate::RuleSet,
        hits: &mut [StepRef],
        event: &SequenceEvent<'_>,
    ) -> Vec<Fired<'r>> {
        let sequences = set.sequences();
        if self.partials.len() < sequences.len() {
            self.partials.resize_with(sequences.len(), HashMap::new);
        }
        // Later steps first: an event that matches steps 1 and 2 must not
        // pass both.
        hits.sort_unstable_by(|a, b| (a.sequence, b.step).cmp(&(b.sequence, a.step)));
        let mut fired = Vec::new();
        for hit in hits.iter() {
            let Some(seq) = sequences.get(hit.sequence) else {
                continue;
            };
            let partials = &mut self.partials[hit.sequence];
            let done = if hit.step == 0 {
                first_step(seq, partials, event, &mut self.dropped)
            } else {
                later_step(seq, partials, hit.step, event)
            };
            if let Some(steps) = done {
                fired.push(Fired {
                    sequence: seq,
                    steps,
                });
            }
        }
        fired
    }
}

fn key(seq: &Sequence, pid: u32) -> u32 {
    if seq.by == Scope::Host { 0 } else { pid }
}

fn expired(seq: &Sequence, p: &Partial, now: u64) -> bool {
    match p.stage {
        0 => p
            .times
            .back()
            .is_none_or(|&t| now.saturating_sub(t) > seq.within_ns),
        _ => now.saturating_sub(p.started_ns) > seq.within_ns,
    }
}

/// Counts a first-step match; returns the steps if that completed a
/// one-step sequence.
fn first_step(
    seq: &Sequence,
    partials: &mut HashMap<u32, Partial>,
    event: &SequenceEvent<'_>,
    dropped: &mut u64,
) -> Option<Vec<String>> {
    let now = event.time_ns;
    let k = key(seq, event.pid);
    if !partials.contains_key(&k) && partials.len() >= MAX_PARTIALS {
        partials.retain(|_, p| !expired(seq, p, now));
        if partials.len() >= MAX_PARTIALS {
            *dropped += 1;
            return None;
        }
    }
    let p = partials.entry(k).or_default();
    if p.stage > 0 {
        if !expired(seq, p, now) {
            return None;
        }
        *p = Partial::default();
    }
    while p
        .times
        .front()
        .is_some_and(|&t| now.saturating_sub(t) > seq.within_ns)
    {
        p.times.pop_front();
    }
    p.times.push_back(now);
    if p.times.len() < seq.steps[0].count as usize {
        return None;
    }
    p.started_ns = p.times.front().copied().unwrap_or(now);
    advance(seq, partials, k, event)
}

/// Counts a later step's match for every partial sequence it continues.
fn later_step(
    seq: &Sequence,
    partials: &mut HashMap<u32, Partial>,
    step: usize,
    event: &SequenceEvent<'_>,
) -> Option<Vec<String>> {
    let now = event.time_ns;
    let candidates: Vec<u32> = match seq.by {
        Scope::ProcessTree => std::iter::once(event.pid)
            .chain(event.ancestors.iter().copied())
            .collect(),
        Scope::Process | Scope::Host => vec![key(seq, event.pid)],
    };
    for k in candidates {
        let Some(p) = partials.get_mut(&k) else {
            continue;
        };
        if p.stage != step {
            continue;
        }
        if expired(seq, p, now) {
            partials.remove(&k);
            continue;
        }
        p.times.push_back(now);
        if p.times.len() >= seq.steps[step].count as usize {
            // The first sequence this event completes is reported; the
            // same event does not also complete an enclosing tree's.
            if let Some(steps) = advance(seq, partials, k, event) {
                return Some(steps);
            }
        }
    }
    None
}

/// The current step of `k` is done: on to the next, or the whole sequence.
fn advance(
    seq: &Sequence,
    partials: &mut HashMap<u32, Partial>,
    k: u32,
    event: &SequenceEvent<'_>,
) -> Option<Vec<String>> {
    let p = partials.get_mut(&k)?;
    p.times.clear();
    p.steps.push(event.subject.to_owned());
    p.stage += 1;
    if p.stage < seq.steps.len() {
        return None;
    }
    // Done: it fires again only after a whole new sequence.
    partials.remove(&k).map(|p| p.steps)
}
