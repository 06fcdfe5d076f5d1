//! One Sigma rule file -> one compiled [`Rule`], or a [`Refusal`] naming the
//! file, the field (the YAML key path) and the reason.

use std::collections::HashMap;

use serde_norway::Value as Yaml;

use crate::{
    condition::{self, Cond},
    field::{Category, Field},
    matcher::{FieldMatcher, Modifiers, Scalar},
};

/// Why a rule did not load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Valid Sigma that the sensor cannot evaluate (a field it does not
    /// produce, another logsource, a modifier it lacks): skipped, listed.
    Unsupported,
    /// A broken rule (YAML, a missing key, a bad regex, a condition naming
    /// nothing): a reload with one keeps the last good set.
    Invalid,
}

/// A rule file that did not load, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: `{field}`: {reason}")]
pub struct Refusal {
    /// The file (or built-in pack entry).
    pub file: String,
    /// The YAML key path the problem is at, e.g.
    /// `detection.selection.CurrentDirectory`.
    pub field: String,
    pub reason: String,
    pub kind: RefusalKind,
}

/// One detection item: any of its groups, each all of its field items.
#[derive(Debug)]
pub(crate) struct Item {
    pub groups: Vec<Vec<FieldMatcher>>,
}

/// What a rule asks the sensor to do besides alerting (its `response:`,
/// rxsentry's own key; `alert` alone is the default). Every response is
/// audited (docs/detection.md#responses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// SIGKILL the process of the event that fired the rule.
    Kill,
    /// SIGKILL that process and every process below it.
    KillTree,
    /// Move the executed or written file aside and refuse its hash.
    Quarantine,
    /// Network isolation of the terminal.
    Isolate,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Kill,
        Action::KillTree,
        Action::Quarantine,
        Action::Isolate,
    ];

    /// The name written in rules and shown in audit events.
    pub fn name(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::KillTree => "kill_tree",
            Action::Quarantine => "quarantine",
            Action::Isolate => "isolate",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Which step of which sequence rule a step's matcher is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepRef {
    /// Index in [`crate::RuleSet::sequences`].
    pub sequence: usize,
    pub step: usize,
}

/// A compiled Sigma rule (or one step of a sequence rule).
#[derive(Debug)]
pub struct Rule {
    /// Sigma `id` (a UUID), empty if the rule has none.
    pub id: String,
    pub title: String,
    /// Sigma `author`: shown with every alert (DRL 1.1 asks for it).
    pub author: String,
    /// `informational`, `low`, `medium`, `high` or `critical`.
    pub level: String,
    /// Sigma `tags`, e.g. `attack.execution`, `attack.t1059.004`.
    pub tags: Vec<String>,
    /// Where the rule came from (file path or `builtin:<name>`).
    pub source: String,
    pub category: Category,
    /// What the sensor does when the rule fires, besides the alert.
    pub response: Vec<Action>,
    /// Set for the matcher of a sequence rule's step: its hits feed the
    /// sequence, they are no alerts of their own.
    pub step: Option<StepRef>,
    pub(crate) items: Vec<Item>,
    pub(crate) condition: Cond,
}

impl Rule {
    /// The MITRE ATT&CK ids among the tags.
    pub fn attack_ids(&self) -> impl Iterator<Item = String> + '_ {
        attack_ids(&self.tags)
    }
}

/// The MITRE ATT&CK technique ids among Sigma `tags` (`attack.t1059.004`
/// -> `T1059.004`), upper-cased.
pub fn attack_ids(tags: &[String]) -> impl Iterator<Item = String> + '_ {
    tags.iter().filter_map(|t| {
        let id = t.strip_prefix("attack.")?;
        let is_technique = id.starts_with('t') && id[1..].starts_with(|c: char| c.is_ascii_digit());
        is_technique.then(|| id.to_uppercase())
    })
}

/// Values for `|expand` placeholders (`%pos_apps%`), from configuration.
pub type Placeholders = HashMap<String, Vec<String>>;

pub(crate) struct Ctx<'a> {
    pub source: &'a str,
    pub placeholders: &'a Placeholders,
    /// Put before every refusal's key path: `sequence.steps[1].` inside a
    /// sequence rule's step.
    pub prefix: String,
}

impl Ctx<'_> {
    pub fn refuse(
        &self,
        kind: RefusalKind,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Refusal {
        Refusal {
            file: self.source.to_owned(),
            field: format!("{}{}", self.prefix, field.into()),
            reason: reason.into(),
            kind,
        }
    }
    pub fn unsupported(&self, field: impl Into<String>, reason: impl Into<String>) -> Refusal {
        self.refuse(RefusalKind::Unsupported, field, reason)
    }
    pub fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> Refusal {
        self.refuse(RefusalKind::Invalid, field, reason)
    }
}

/// One rule file compiled: a Sigma rule, or a sequence rule and the
/// matchers of its steps.
#[derive(Debug)]
pub(crate) enum Compiled {
    Rule(Rule),
    Sequence(crate::sequence::Sequence, Vec<Rule>),
}

/// The descriptive keys every rule file has.
#[derive(Debug)]
pub(crate) struct Header {
    pub id: String,
    pub title: String,
    pub author: String,
    pub level: String,
    pub tags: Vec<String>,
    pub response: Vec<Action>,
}

/// Parses and compiles one rule file's text.
pub(crate) fn compile(
    source: &str,
    text: &str,
    placeholders: &Placeholders,
) -> Result<Compiled, Refusal> {
    let ctx = Ctx {
        source,
        placeholders,
        prefix: String::new(),
    };
    let doc: Yaml = serde_norway::from_str(text)
        .map_err(|e| ctx.invalid("(file)", format!("not a YAML rule: {e}")))?;
    let Yaml::Mapping(doc) = doc else {
        return Err(ctx.invalid("(file)", "a rule is a YAML mapping"));
    };
    if doc.contains_key("correlation") {
        return Err(ctx.unsupported("correlation", "correlation rules are not supported"));
    }
    let header = header(&ctx, &doc)?;
    if let Some(sequence) = doc.get("sequence") {
        for key in ["logsource", "detection"] {
            if doc.contains_key(key) {
                return Err(ctx.invalid(
                    key,
                    "a sequence rule has its logsource and detection in each of its steps",
                ));
            }
        }
        let (sequence, steps) = crate::sequence::compile(&ctx, header, sequence)?;
        return Ok(Compiled::Sequence(sequence, steps));
    }
    let (category, items, condition) = detection(&ctx, &doc)?;
    Ok(Compiled::Rule(Rule {
        id: header.id,
        title: header.title,
        author: header.author,
        level: header.level,
        tags: header.tags,
        source: source.to_owned(),
        category,
        response: header.response,
        step: None,
        items,
        condition,
    }))
}

fn header(ctx: &Ctx<'_>, doc: &serde_norway::Mapping) -> Result<Header, Refusal> {
    let text_of = |key: &str| doc.get(key).and_then(Yaml::as_str).map(str::to_owned);
    let title = text_of("title").ok_or_else(|| ctx.invalid("title", "missing"))?;
    let tags = match doc.get("tags") {
        Some(Yaml::Sequence(t)) => t
            .iter()
            .filter_map(Yaml::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Header {
        id: text_of("id").unwrap_or_default(),
        title,
        author: text_of("author").unwrap_or_else(|| "unknown".into()),
        level: text_of("level").unwrap_or_else(|| "medium".into()),
        tags,
        response: response(ctx, doc.get("response"))?,
    })
}

/// `response: kill` or `response: [kill, quarantine]`; `alert` (or no key)
/// is an alert only.
fn response(ctx: &Ctx<'_>, value: Option<&Yaml>) -> Result<Vec<Action>, Refusal> {
    let names: Vec<&Yaml> = match value {
        None => return Ok(Vec::new()),
        Some(Yaml::Sequence(list)) => list.iter().collect(),
        Some(v) => vec![v],
    };
    let accepted = || {
        let mut all = vec!["alert"];
        all.extend(Action::ALL.iter().map(|a| a.name()));
        all.join(", ")
    };
    let mut out = Vec::new();
    for v in names {
        let Some(name) = v.as_str() else {
            return Err(ctx.invalid("response", format!("actions are text: {}", accepted())));
        };
        if name == "alert" {
            continue;
        }
        let action = Action::from_name(name).ok_or_else(|| {
            ctx.invalid(
                "response",
                format!("unknown action `{name}`; accepted: {}", accepted()),
            )
        })?;
        if !out.contains(&action) {
            out.push(action);
        }
    }
    Ok(out)
}

/// A `logsource` and `detection` (a rule's, or a sequence step's) compiled.
pub(crate) fn detection(
    ctx: &Ctx<'_>,
    doc: &serde_norway::Mapping,
) -> Result<(Category, Vec<Item>, Cond), Refusal> {
    let category = logsource(ctx, doc.get("logsource"))?;
    let detection = match doc.get("detection") {
        Some(Yaml::Mapping(m)) => m,
        _ => return Err(ctx.invalid("detection", "missing or not a mapping")),
    };
    let mut names = Vec::new();
    let mut items = Vec::new();
    let mut conditions = Vec::new();
    for (key, value) in detection {
        let Some(key) = key.as_str() else {
            return Err(ctx.invalid("detection", "keys must be text"));
        };
        match key {
            "condition" => match value {
                Yaml::String(s) => conditions.push(s.clone()),
                Yaml::Sequence(list) => {
                    for c in list {
                        let s = c.as_str().ok_or_else(|| {
                            ctx.invalid("detection.condition", "conditions are text")
                        })?;
                        conditions.push(s.to_owned());
                    }
                }
                _ => return Err(ctx.invalid("detection.condition", "a condition is text")),
            },
            "timeframe" => {
                return Err(ctx.unsupported(
                    "detection.timeframe",
                    "timeframes (aggregations) are not supported: write a sequence rule",
                ));
            }
            name => {
                items.push(item(ctx, category, name, value)?);
                names.push(name.to_owned());
            }
        }
    }
    if conditions.is_empty() {
        return Err(ctx.invalid("detection.condition", "missing"));
    }
    let mut conds = Vec::new();
    for c in &conditions {
        let cond = condition::parse(c, &names).map_err(|e| {
            let kind = if e.contains("not supported") {
                RefusalKind::Unsupported
            } else {
                RefusalKind::Invalid
            };
            ctx.refuse(kind, "detection.condition", e)
        })?;
        conds.push(cond);
    }
    // Several conditions: any of them (Sigma).
    let condition = if conds.len() == 1 {
        conds.remove(0)
    } else {
        Cond::Or(conds)
    };
    Ok((category, items, condition))
}

fn logsource(ctx: &Ctx<'_>, value: Option<&Yaml>) -> Result<Category, Refusal> {
    let Some(Yaml::Mapping(ls)) = value else {
        return Err(ctx.invalid("logsource", "missing or not a mapping"));
    };
    let get = |k: &str| ls.get(k).and_then(Yaml::as_str);
    match get("product") {
        Some("linux") => {}
        Some(other) => {
            return Err(ctx.unsupported(
                "logsource.product",
                format!("product `{other}`: only linux"),
            ));
        }
        None => {
            return Err(ctx.unsupported(
                "logsource.product",
                "missing: only linux rules are evaluated",
            ));
        }
    }
    if let Some(service) = get("service") {
        return Err(ctx.unsupported(
            "logsource.service",
            format!("service `{service}` (log files) is not an event source of the sensor"),
        ));
    }
    let Some(name) = get("category") else {
        return Err(ctx.unsupported("logsource.category", "missing"));
    };
    Category::from_name(name).ok_or_else(|| {
        ctx.unsupported(
            "logsource.category",
            format!("category `{name}` is not produced by the sensor"),
        )
    })
}

fn item(ctx: &Ctx<'_>, category: Category, name: &str, value: &Yaml) -> Result<Item, Refusal> {
    let at = format!("detection.{name}");
    let groups = match value {
        Yaml::Mapping(_) => vec![group(ctx, category, &at, value)?],
        Yaml::Sequence(list)
            if !list.is_empty() && list.iter().all(|v| matches!(v, Yaml::Mapping(_))) =>
        {
            list.iter()
                .map(|m| group(ctx, category, &at, m))
                .collect::<Result<_, _>>()?
        }
        Yaml::Sequence(list) if !list.is_empty() && list.iter().all(|v| scalar(v).is_some()) => {
            return Err(ctx.unsupported(
                at,
                "keyword search (values without a field) is not supported",
            ));
        }
        _ => return Err(ctx.invalid(at, "a detection item is a mapping or a list of mappings")),
    };
    Ok(Item { groups })
}

fn group(
    ctx: &Ctx<'_>,
    category: Category,
    at: &str,
    map: &Yaml,
) -> Result<Vec<FieldMatcher>, Refusal> {
    let Yaml::Mapping(map) = map else {
        return Err(ctx.invalid(at, "expected a mapping"));
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            return Err(ctx.invalid(at, "field names must be text"));
        };
        let mut parts = key.split('|');
        let field_name = parts.next().unwrap_or_default();
        let at = format!("{at}.{field_name}");
        let Some(field) = Field::from_name(field_name) else {
            return Err(ctx.unsupported(
                at,
                format!("the sensor does not produce field `{field_name}`"),
            ));
        };
        if !category.has(field) {
            return Err(ctx.unsupported(
                at,
                format!(
                    "`{field_name}` is not a field of {} events",
                    category.name()
                ),
            ));
        }
        let mut mods: Vec<&str> = parts.collect();
        let expand = mods.contains(&"expand");
        mods.retain(|m| *m != "expand");
        let modifiers =
            Modifiers::parse(mods.into_iter()).map_err(|e| ctx.unsupported(at.clone(), e))?;
        let scalars: Vec<Scalar> = match value {
            Yaml::Sequence(list) if list.is_empty() => {
                return Err(ctx.invalid(at, "an empty list matches nothing"));
            }
            Yaml::Sequence(list) => list
                .iter()
                .map(|v| {
                    scalar(v).ok_or_else(|| {
                        ctx.invalid(at.clone(), "values are text, numbers, booleans or null")
                    })
                })
                .collect::<Result<_, _>>()?,
            v => vec![scalar(v).ok_or_else(|| {
                ctx.invalid(at.clone(), "values are text, numbers, booleans or null")
            })?],
        };
        let scalars = if expand {
            expand_placeholders(ctx, &at, scalars)?
        } else {
            scalars
        };
        let mut values = Vec::new();
        for s in &scalars {
            values.extend(
                modifiers
                    .compile(s)
                    .map_err(|e| ctx.invalid(at.clone(), e))?,
            );
        }
        out.push(FieldMatcher {
            field,
            values,
            all: modifiers.all,
            needle_bits: None,
        });
    }
    Ok(out)
}

/// `|expand`: each `%name%` value becomes the configured list of values.
fn expand_placeholders(
    ctx: &Ctx<'_>,
    at: &str,
    scalars: Vec<Scalar>,
) -> Result<Vec<Scalar>, Refusal> {
    let mut out = Vec::new();
    for s in scalars {
        let Scalar::Text(t) = &s else {
            out.push(s);
            continue;
        };
        let Some(name) = t.strip_prefix('%').and_then(|t| t.strip_suffix('%')) else {
            return Err(ctx.unsupported(
                at,
                format!("expand needs a whole `%name%` value, not `{t}`"),
            ));
        };
        let Some(values) = ctx.placeholders.get(name) else {
            return Err(ctx.unsupported(at, format!("placeholder `%{name}%` is not configured")));
        };
        if values.is_empty() {
            return Err(ctx.unsupported(at, format!("placeholder `%{name}%` is configured empty")));
        }
        out.extend(values.iter().cloned().map(Scalar::Text));
    }
    Ok(out)
}

fn scalar(v: &Yaml) -> Option<Scalar> {
    match v {
        Yaml::String(s) => Some(Scalar::Text(s.clone())),
        Yaml::Number(n) => Some(Scalar::Text(n.to_string())),
        Yaml::Bool(b) => Some(Scalar::Text(b.to_string())),
        Yaml::Null => Some(Scalar::Null),
        _ => None,
    }
}
