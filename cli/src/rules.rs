//! `rxsentry rules list|test`: the Sigma rules a sensor would load, and a
//! rule file tried on recorded events, with the `detect` crate the sensor
//! uses (no collector, no kernel).

use std::{
    collections::HashMap,
    io::BufRead,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use detect::{CommandLine, EventRef, Loader, Refusal, RefusalKind, Rule, Scratch, telemetry};
use proto::telemetry::v1::{Event, event::Kind};

use crate::render::recorded::{self, Skip};

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Every rule the sensor would load (the built-in pack and each
    /// `--dir`), and every refused one with its file, field and reason.
    /// Exits 1 when a file is broken (the sensor would not start with it).
    List(ListArgs),
    /// Validate one Sigma rule file and run it on recorded events (the
    /// JSON lines of `rxsentry tail --json` / `events --json`). Exits 1
    /// when the rule is refused.
    Test(TestArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// A rule directory (`*.yml`, `*.yaml`, recursively), as in
    /// `[detection] rule_dirs`; repeatable.
    #[arg(long = "dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Leave out the built-in pack (`[detection] default_pack = false`).
    #[arg(long)]
    no_default_pack: bool,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The Sigma rule file.
    file: PathBuf,
    /// Recorded events, one JSON object per line (`-`: standard input).
    #[arg(long, value_name = "EVENTS.json")]
    events: PathBuf,
}

pub fn run(args: RulesArgs) -> anyhow::Result<()> {
    match args.command {
        RulesCommand::List(a) => list(&a),
        RulesCommand::Test(a) => test(&a),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    // The placeholders' defaults, as a sensor with no [detection.placeholders].
    let mut loader = Loader::new(detect::default_placeholders());
    if !args.no_default_pack {
        loader.add_default_pack();
    }
    for dir in &args.dirs {
        loader.add_dir(dir)?;
    }
    let (rules, refused) = loader.finish();
    let mut all: Vec<&Rule> = rules.rules().collect();
    all.sort_by(|a, b| a.source.cmp(&b.source));
    for r in &all {
        let attack: Vec<String> = r.attack_ids().collect();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            or_dash(&r.id),
            r.title,
            or_dash(&r.level),
            r.category.name(),
            or_dash(&attack.join(",")),
            or_dash(&r.author),
            r.source,
        );
    }
    for q in rules.sequences() {
        let attack: Vec<String> = q.attack_ids().collect();
        let steps: Vec<&str> = q.steps.iter().map(|s| s.category.name()).collect();
        println!(
            "{}\t{}\t{}\tsequence by {} within {} s: {}\t{}\t{}\t{}",
            or_dash(&q.id),
            q.title,
            or_dash(&q.level),
            q.by.name(),
            q.within_ns / 1_000_000_000,
            steps.join(" then "),
            or_dash(&attack.join(",")),
            or_dash(&q.author),
            q.source,
        );
    }
    // What the file rules make the sensor watch, and what they cannot see.
    let needs = rules.path_needs();
    for n in &needs.needs {
        let (anchor, path) = match &n.bound {
            detect::PathBound::Exact(p) => ("exact", p),
            detect::PathBound::Prefix(p) => ("prefix", p),
        };
        let ops = if n.read { "read" } else { "write" };
        println!("WATCHES\t{anchor}\t{path}\t{ops}");
    }
    for b in &needs.blind {
        let how = if b.partly { "partly" } else { "fully" };
        println!("BLIND\t{}\t{how}\t{}\t{}", b.title, b.source, b.reason);
    }
    for r in &refused {
        println!("{}", refusal(r));
    }
    let broken = refused
        .iter()
        .filter(|r| r.kind == RefusalKind::Invalid)
        .count();
    println!(
        "{} loaded, {} refused ({} broken)",
        all.len() + rules.sequences().len(),
        refused.len(),
        broken
    );
    if broken > 0 {
        bail!("{broken} broken rule file(s): the sensor would not start with them");
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn refusal(r: &Refusal) -> String {
    let what = match r.kind {
        RefusalKind::Invalid => "BROKEN",
        _ => "REFUSED",
    };
    format!("{what}\t{}\t{}\t{}", r.file, r.field, r.reason)
}

fn test(args: &TestArgs) -> anyhow::Result<()> {
    let source = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read rule file {source}"))?;
    let mut loader = Loader::new(detect::default_placeholders());
    loader.add(&source, &text);
    let (rules, refused) = loader.finish();
    if let Some(r) = refused.first() {
        bail!("rule refused: {} field {}: {}", r.file, r.field, r.reason);
    }
    let events: Box<dyn BufRead> = if args.events == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.events)
            .with_context(|| format!("cannot open {}", args.events.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut lineage = Lineage::default();
    let mut scratch = Scratch::default();
    let mut tracker = detect::SequenceTracker::default();
    let (mut seen, mut matched, mut invalid) = (0u64, 0u64, 0u64);
    for (i, line) in events.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", args.events.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = match recorded::parse_line(&line) {
            Ok(e) => e,
            Err(Skip::OtherKind(_)) => continue,
            Err(Skip::Invalid(why)) => {
                eprintln!("{}:{}: skipped: {why}", args.events.display(), i + 1);
                invalid += 1;
                continue;
            }
        };
        lineage.learn(&event);
        let Some(view) = lineage.view(&event) else {
            continue;
        };
        seen += 1;
        let (mut hits, mut steps) = (Vec::new(), Vec::new());
        rules.evaluate(&view.event, &mut scratch, &mut hits, &mut steps);
        // Sequence rules: by the recording's times and pids (a
        // process_tree sequence sees no ancestors here: same process only).
        let step = detect::SequenceEvent {
            time_ns: event.timestamp_ns,
            pid: view.event.pid.unwrap_or_default(),
            ancestors: &[],
            subject: &view.subject,
        };
        for fired in tracker.observe(&rules, &mut steps, &step) {
            matched += 1;
            println!(
                "line {}: sequence complete: {} ({})",
                i + 1,
                fired.sequence.title,
                fired.steps.join(" then ")
            );
        }
        if !hits.is_empty() {
            matched += 1;
            println!(
                "line {}: match: {} pid {} {}",
                i + 1,
                view.event.category.name(),
                view.event.pid.unwrap_or_default(),
                view.subject
            );
        }
    }
    println!(
        "{matched} of {seen} events match {source}{}",
        if invalid > 0 {
            format!(" ({invalid} unreadable lines skipped)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// What the recording tells of each process: its program and command line
/// from its exec, so later events (and its children's) have `Image`,
/// `CommandLine`, `ParentImage` and `ParentCommandLine` as on the sensor
/// (which keeps a process table). A process whose exec is not in the
/// recording has only its `exe`.
#[derive(Debug, Default)]
struct Lineage {
    by_pid: HashMap<u32, (String, String)>,
}

/// An event as rules see it, and what it was about.
struct View<'a> {
    event: EventRef<'a>,
    subject: String,
}

impl Lineage {
    fn learn(&mut self, event: &Event) {
        if let Some(Kind::Exec(e)) = &event.kind
            && let Some(p) = &e.process
        {
            self.by_pid
                .insert(p.pid, (e.filename.clone(), e.argv.join(" ")));
        }
    }

    fn view<'a>(&'a self, event: &'a Event) -> Option<View<'a>> {
        let kind = event.kind.as_ref()?;
        let (category, _) = telemetry::category_of(kind)?;
        let process = match kind {
            Kind::Exec(e) => e.process.as_ref(),
            Kind::File(f) => f.process.as_ref(),
            Kind::Network(n) => n.process.as_ref(),
            _ => None,
        };
        let mut view = EventRef::new(category);
        if let Some(p) = process {
            view.pid = Some(p.pid);
            view.ppid = Some(p.ppid);
            // `User` is the kiosk's user name: a recording has only the uid.
            let me = self.by_pid.get(&p.pid);
            view.image = me
                .map(|m| m.0.as_str())
                .or_else(|| (!p.exe.is_empty()).then_some(p.exe.as_str()));
            view.command_line = me.map_or(CommandLine::Unknown, |m| CommandLine::Joined(&m.1));
            let parent = self.by_pid.get(&p.ppid);
            view.parent_image = parent.map(|m| m.0.as_str());
            view.parent_command_line = parent.map(|m| m.1.as_str());
        }
        let subject = telemetry::fill(&mut view, kind)?;
        Some(View {
            event: view,
            subject,
        })
    }
}
