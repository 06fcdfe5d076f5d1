//! The file paths rules need the kernel to watch. The sensor's kernel
//! programs report file events only for the watched set; a `file_event` or
//! `file_access` rule on a path outside it would wait forever. From each
//! file rule's condition this finds path prefixes that bound every event it
//! can match (the sensor adds them to the watched set) and says which rules
//! have no such bound, in full or in part: those see watched files only.

use crate::{
    Category, Field, RuleSet,
    condition::Cond,
    matcher::{Anchor, FieldMatcher, ValueMatcher},
    rule::Rule,
};

/// How a path a rule names bounds its events.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathBound {
    /// `TargetFilename: /etc/doas.conf`: that file only.
    Exact(String),
    /// `TargetFilename|startswith: /etc/cron.d/`: everything whose path
    /// starts with it (a directory when it ends with `/`).
    Prefix(String),
}

impl PathBound {
    pub fn path(&self) -> &str {
        match self {
            Self::Exact(p) | Self::Prefix(p) => p,
        }
    }
}

/// A path some rule needs watched, and for what.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathNeed {
    pub bound: PathBound,
    /// `file_access` (opens for reading), else `file_event` (writes,
    /// creations and renames).
    pub read: bool,
}

/// A file rule the watched set may not cover, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlindRule {
    pub title: String,
    pub source: String,
    /// Whether some of its paths are bounded (and watched) all the same.
    pub partly: bool,
    pub reason: &'static str,
}

/// What the loaded file rules need from the kernel's watched set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathNeeds {
    /// Sorted, without repeats.
    pub needs: Vec<PathNeed>,
    pub blind: Vec<BlindRule>,
}

const UNBOUNDED: &str = "a TargetFilename alternative that is not an absolute path with \
     `startswith` or an exact value (contains, endswith, a wildcard, a negation or no \
     TargetFilename): it sees watched files only";

/// A condition's bound: the prefixes found, and whether they bound every
/// event that can satisfy it.
struct Scope {
    bounds: Vec<PathBound>,
    complete: bool,
}

impl Scope {
    fn unbounded() -> Self {
        Self {
            bounds: Vec::new(),
            complete: false,
        }
    }

    /// Any of `scopes` (or, any item's group): bounded when each is.
    fn union(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut out = Self {
            bounds: Vec::new(),
            complete: true,
        };
        for s in scopes {
            out.complete &= s.complete;
            out.bounds.extend(s.bounds);
        }
        out
    }

    /// All of `scopes`: one complete scope bounds the whole (the one with
    /// fewest paths); without one, whatever was found, incomplete.
    fn intersection(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let scopes: Vec<Scope> = scopes.into_iter().collect();
        if let Some(best) = scopes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.complete)
            .min_by_key(|(_, s)| s.bounds.len())
            .map(|(i, _)| i)
        {
            return scopes.into_iter().nth(best).unwrap_or_else(Self::unbounded);
        }
        let mut out = Self::union(scopes);
        out.complete = false;
        out
    }
}

impl RuleSet {
    /// The paths the file rules (and file steps of sequence rules) need
    /// watched, and the file rules that have no complete bound.
    pub fn path_needs(&self) -> PathNeeds {
        let mut out = PathNeeds::default();
        for category in [Category::FileEvent, Category::FileAccess] {
            for rule in &self.by_category[category.index()] {
                let scope = rule_scope(rule);
                let partly = !scope.bounds.is_empty();
                out.needs
                    .extend(scope.bounds.into_iter().map(|bound| PathNeed {
                        bound,
                        read: category == Category::FileAccess,
                    }));
                if !scope.complete {
                    let blind = BlindRule {
                        title: rule.title.clone(),
                        source: rule.source.clone(),
                        partly,
                        reason: UNBOUNDED,
                    };
                    if !out.blind.contains(&blind) {
                        out.blind.push(blind);
                    }
                }
            }
        }
        out.needs.sort();
        out.needs.dedup();
        out
    }
}

fn rule_scope(rule: &Rule) -> Scope {
    cond_scope(&rule.condition, rule)
}

fn cond_scope(cond: &Cond, rule: &Rule) -> Scope {
    match cond {
        Cond::Item(i) => rule.items.get(*i).map_or_else(Scope::unbounded, |item| {
            Scope::union(item.groups.iter().map(|g| group_scope(g)))
        }),
        // A negation matches everything its operand does not: no bound.
        Cond::Not(_) => Scope::unbounded(),
        Cond::And(cs) => Scope::intersection(cs.iter().map(|c| cond_scope(c, rule))),
        Cond::Or(cs) => Scope::union(cs.iter().map(|c| cond_scope(c, rule))),
    }
}

/// A group matches when all its field items do: any TargetFilename item
/// whose values are all absolute exact paths or prefixes bounds it.
fn group_scope(group: &[FieldMatcher]) -> Scope {
    Scope::intersection(group.iter().map(|m| {
        if m.field == Field::TargetFilename {
            field_scope(m)
        } else {
            Scope::unbounded()
        }
    }))
}

fn field_scope(m: &FieldMatcher) -> Scope {
    let mut bounds = Vec::new();
    for v in &m.values {
        match v {
            // The path as the rule wrote it: matching ignores case, the
            // file system does not.
            ValueMatcher::Text {
                anchor, written, ..
            } if written.starts_with('/') => {
                bounds.push(match anchor {
                    Anchor::Exact => PathBound::Exact(written.clone()),
                    Anchor::Prefix => PathBound::Prefix(written.clone()),
                    Anchor::Suffix | Anchor::Contains => return Scope::unbounded(),
                });
            }
            // `all`: every value must match, so any bounded one bounds it;
            // without `all` each must be bounded.
            _ if m.all => {}
            _ => return Scope::unbounded(),
        }
    }
    if bounds.is_empty() {
        return Scope::unbounded();
    }
    if m.all {
        bounds.truncate(1);
    }
    Scope {
        bounds,
        complete: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Loader, default_placeholders};

    fn needs(rules: &[&str]) -> PathNeeds {
        let mut loader = Loader::new(default_placeholders());
        for (i, text) in rules.iter().enumerate() {
            loader.add(&format!("test:{i}"), text);
        }
        let (set, refused) = loader.finish();
        assert!(refused.is_empty(), "{refused:?}");
        set.path_needs()
    }

    fn rule(category: &str, detection: &str) -> String {
        format!(
            "title: t\nlogsource:\n  product: linux\n  category: {category}\ndetection:\n{detection}"
        )
    }

    #[test]
    fn startswith_and_exact_paths_bound_a_rule_and_filters_do_not_unbound_it() {
        let got = needs(&[&rule(
            "file_event",
            "  selection:\n    TargetFilename|startswith:\n      - '/etc/cron.d/'\n      - '/var/spool/cron/root'\n  \
             exact:\n    TargetFilename: '/tmp/rootlog'\n  filter:\n    Image|endswith: '/dpkg'\n  \
             condition: (selection or exact) and not filter\n",
        )]);
        assert!(got.blind.is_empty(), "{:?}", got.blind);
        let paths: Vec<_> = got
            .needs
            .iter()
            .map(|n| (n.bound.clone(), n.read))
            .collect();
        assert_eq!(
            paths,
            vec![
                (PathBound::Exact("/tmp/rootlog".into()), false),
                (PathBound::Prefix("/etc/cron.d/".into()), false),
                (PathBound::Prefix("/var/spool/cron/root".into()), false),
            ]
        );
    }

    #[test]
    fn a_path_keeps_the_case_the_rule_wrote() {
        let got = needs(&[&rule(
            "file_event",
            "  selection:\n    TargetFilename|startswith: '/run/Test-XyZ/'\n  condition: selection\n",
        )]);
        assert_eq!(
            got.needs[0].bound,
            PathBound::Prefix("/run/Test-XyZ/".into())
        );
    }

    #[test]
    fn a_file_access_rule_needs_reads_and_a_sequence_step_counts() {
        let got = needs(&[
            &rule(
                "file_access",
                "  selection:\n    TargetFilename: '/etc/shadow'\n  condition: selection\n",
            ),
            "title: s\nsequence:\n  by: process\n  within: 10s\n  steps:\n    \
             - logsource: {product: linux, category: file_event}\n      detection:\n        \
             selection: {TargetFilename|startswith: '/srv/phi/'}\n        condition: selection\n    \
             - logsource: {product: linux, category: network_connection}\n      detection:\n        \
             selection: {Initiated: 'true'}\n        condition: selection\n",
        ]);
        assert!(got.blind.is_empty(), "{:?}", got.blind);
        assert!(got.needs.contains(&PathNeed {
            bound: PathBound::Exact("/etc/shadow".into()),
            read: true
        }));
        assert!(got.needs.contains(&PathNeed {
            bound: PathBound::Prefix("/srv/phi/".into()),
            read: false
        }));
    }

    #[test]
    fn contains_endswith_relative_and_negated_paths_are_blind() {
        for detection in [
            "  selection:\n    TargetFilename|contains: '/etc/profile.d/'\n  condition: selection\n",
            "  selection:\n    TargetFilename|endswith: '/etc/doas.conf'\n  condition: selection\n",
            "  selection:\n    TargetFilename|startswith: 'cron/'\n  condition: selection\n",
            "  selection:\n    TargetFilename|startswith: '/etc/'\n  condition: not selection\n",
            "  selection:\n    Image|endswith: '/wget'\n  condition: selection\n",
        ] {
            let got = needs(&[&rule("file_event", detection)]);
            assert!(got.needs.is_empty(), "{detection}: {:?}", got.needs);
            assert_eq!(got.blind.len(), 1, "{detection}");
            assert!(!got.blind[0].partly);
        }
        // One bounded alternative beside an unbounded one: watched, partly
        // blind.
        let got = needs(&[&rule(
            "file_event",
            "  dirs:\n    TargetFilename|startswith: '/etc/cron.d/'\n  files:\n    \
             TargetFilename|contains: '/etc/crontab'\n  condition: dirs or files\n",
        )]);
        assert_eq!(got.needs.len(), 1);
        assert_eq!(got.blind.len(), 1);
        assert!(got.blind[0].partly);
        // A process rule needs nothing.
        let got = needs(&[&rule(
            "process_creation",
            "  selection:\n    Image|endswith: '/sh'\n  condition: selection\n",
        )]);
        assert_eq!(got, PathNeeds::default());
    }
}
