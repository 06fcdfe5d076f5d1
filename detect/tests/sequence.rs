//! Sequence rules on hand-built events: order, window, scope, counts,
//! responses, and refusals that name the step and key.

use detect::{
    Action, Category, CommandLine, EventRef, Loader, RefusalKind, RuleSet, Scope, Scratch,
    SequenceEvent, SequenceTracker,
};

const S: u64 = 1_000_000_000;

fn load(text: &str) -> RuleSet {
    let mut l = Loader::new(detect::default_placeholders());
    l.add("seq.yml", text);
    let (set, refused) = l.finish();
    assert_eq!(refused, [], "{text}");
    set
}

fn default_pack() -> RuleSet {
    let mut l = Loader::new(detect::default_placeholders());
    l.add_default_pack();
    let (set, refused) = l.finish();
    assert_eq!(refused, []);
    set
}

/// A file access or a connection by `image` (pid), as the sensor's view.
enum Ev<'a> {
    Read(&'a str, &'a str),
    Write(&'a str, &'a str),
    Connect(&'a str, &'a str),
    Exec(&'a str),
    Blocked(&'a str),
}

/// Evaluates one event through rules and the tracker; returns the titles
/// of the alerts (rules and sequences) and, for sequences, their steps.
fn feed(
    set: &RuleSet,
    tracker: &mut SequenceTracker,
    t: u64,
    pid: u32,
    ancestors: &[u32],
    ev: Ev<'_>,
) -> Vec<(String, Vec<String>)> {
    let argv = vec!["x".to_owned()];
    let (mut view, subject) = match ev {
        Ev::Read(image, path) | Ev::Write(image, path) => {
            let category = if matches!(ev, Ev::Read(..)) {
                Category::FileAccess
            } else {
                Category::FileEvent
            };
            let mut v = EventRef::new(category);
            v.image = Some(image);
            v.target_filename = Some(path);
            (v, path.to_owned())
        }
        Ev::Connect(image, ip) => {
            let mut v = EventRef::new(Category::NetworkConnection);
            v.image = Some(image);
            v.destination_ip = Some(ip);
            v.destination_port = Some(443);
            v.initiated = Some(true);
            (v, format!("{ip}:443"))
        }
        Ev::Exec(image) | Ev::Blocked(image) => {
            let category = if matches!(ev, Ev::Exec(_)) {
                Category::ProcessCreation
            } else {
                Category::AllowlistBlock
            };
            let mut v = EventRef::new(category);
            v.image = Some(image);
            (v, image.to_owned())
        }
    };
    view.pid = Some(pid);
    view.command_line = CommandLine::Argv(&argv);
    let (mut rules, mut steps) = (Vec::new(), Vec::new());
    set.evaluate(&view, &mut Scratch::default(), &mut rules, &mut steps);
    let mut out: Vec<(String, Vec<String>)> = rules
        .iter()
        .map(|r| (r.title.clone(), Vec::new()))
        .collect();
    let event = SequenceEvent {
        time_ns: t,
        pid,
        ancestors,
        subject: &subject,
    };
    for f in tracker.observe(set, &mut steps, &event) {
        out.push((f.sequence.title.clone(), f.steps));
    }
    out
}

const EXFIL: &str = "PHI Read Followed by an Outbound Connection";
const PHI: &str = "/var/lib/pharmacy/phi/patient-0001.json";

#[test]
fn a_phi_read_then_a_connection_by_the_same_process_within_the_window_fires() {
    let set = default_pack();
    let seq = set
        .sequences()
        .iter()
        .find(|s| s.title == EXFIL)
        .expect("in the pack");
    assert_eq!(seq.by, Scope::Process);
    assert_eq!(seq.within_ns, 60 * S);
    assert_eq!(seq.attack_ids().collect::<Vec<_>>(), ["T1041", "T1005"]);

    let mut tr = SequenceTracker::default();
    let titles = |v: Vec<(String, Vec<String>)>| v.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
    // The read alone alerts (its own rule), the sequence waits.
    assert_eq!(
        titles(feed(
            &set,
            &mut tr,
            S,
            10,
            &[],
            Ev::Read("/usr/bin/python3", PHI)
        )),
        ["Read of the PHI Store by an Unexpected Program"]
    );
    // Another process's connection continues nothing; loopback neither.
    assert!(
        feed(
            &set,
            &mut tr,
            2 * S,
            11,
            &[],
            Ev::Connect("/usr/bin/curl", "10.9.0.2")
        )
        .is_empty()
    );
    assert!(
        feed(
            &set,
            &mut tr,
            3 * S,
            10,
            &[],
            Ev::Connect("/usr/bin/python3", "127.0.0.1")
        )
        .is_empty()
    );
    let fired = feed(
        &set,
        &mut tr,
        4 * S,
        10,
        &[],
        Ev::Connect("/usr/bin/python3", "10.9.0.2"),
    );
    assert_eq!(
        fired,
        [(
            EXFIL.to_owned(),
            vec![PHI.to_owned(), "10.9.0.2:443".to_owned()]
        )]
    );
    // Done: the next connection needs a new read first.
    assert!(
        feed(
            &set,
            &mut tr,
            5 * S,
            10,
            &[],
            Ev::Connect("/usr/bin/python3", "10.9.0.2")
        )
        .is_empty()
    );
    assert_eq!(tr.partials(), 0);

    // Out of the window: nothing.
    feed(
        &set,
        &mut tr,
        10 * S,
        12,
        &[],
        Ev::Read("/usr/bin/cat", PHI),
    );
    assert!(
        feed(
            &set,
            &mut tr,
            71 * S,
            12,
            &[],
            Ev::Connect("/usr/bin/cat", "10.9.0.2")
        )
        .is_empty()
    );
    // The expected reader does not start the sequence; a connection first
    // and a read after is the wrong order.
    feed(
        &set,
        &mut tr,
        80 * S,
        13,
        &[],
        Ev::Read("/opt/dispensing/bin/dispense", PHI),
    );
    assert!(
        feed(
            &set,
            &mut tr,
            81 * S,
            13,
            &[],
            Ev::Connect("/opt/dispensing/bin/dispense", "10.9.0.2")
        )
        .is_empty()
    );
    feed(
        &set,
        &mut tr,
        90 * S,
        14,
        &[],
        Ev::Connect("/usr/bin/python3", "10.9.0.2"),
    );
    feed(
        &set,
        &mut tr,
        91 * S,
        14,
        &[],
        Ev::Read("/usr/bin/python3", PHI),
    );
    assert!(
        feed(
            &set,
            &mut tr,
            200 * S,
            15,
            &[],
            Ev::Connect("/usr/bin/python3", "10.9.0.2")
        )
        .is_empty()
    );
}

#[test]
fn a_process_tree_sequence_follows_children_and_not_strangers() {
    let set = load(
        "title: tree\nauthor: soc\nlevel: high\nresponse: [kill_tree, alert]\nsequence:\n  by: process_tree\n  within: 30\n  steps:\n    - logsource: {product: linux, category: process_creation}\n      detection: {selection: {Image|endswith: /pos-app}, condition: selection}\n    - logsource: {product: linux, category: process_creation}\n      detection: {selection: {Image|endswith: /sh}, condition: selection}\n",
    );
    assert_eq!(set.len(), 1);
    assert_eq!(set.rules().count(), 0, "steps are not rules of their own");
    assert_eq!(set.sequences()[0].response, [Action::KillTree]);
    let mut tr = SequenceTracker::default();
    feed(
        &set,
        &mut tr,
        S,
        100,
        &[1],
        Ev::Exec("/opt/pos/bin/pos-app"),
    );
    // A shell elsewhere on the host: not in the tree.
    assert!(feed(&set, &mut tr, 2 * S, 300, &[1], Ev::Exec("/bin/sh")).is_empty());
    // A grandchild of the POS app.
    let fired = feed(
        &set,
        &mut tr,
        3 * S,
        102,
        &[101, 100, 1],
        Ev::Exec("/bin/sh"),
    );
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].1, ["/opt/pos/bin/pos-app", "/bin/sh"]);
}

#[test]
fn a_counted_step_fires_at_its_count_within_the_window_and_restarts() {
    let set = default_pack();
    let mut tr = SequenceTracker::default();
    let burst = "Repeated Allowlist Blocks";
    let mut fired_at = Vec::new();
    // One block every 10 s: never 5 within 60 s... until they come faster.
    for i in 0..6u64 {
        if !feed(
            &set,
            &mut tr,
            i * 20 * S,
            50 + i as u32,
            &[],
            Ev::Blocked("/tmp/x"),
        )
        .is_empty()
        {
            fired_at.push(i);
        }
    }
    assert!(fired_at.is_empty(), "{fired_at:?}");
    for i in 0..10u64 {
        let got = feed(
            &set,
            &mut tr,
            200 * S + i * S,
            60,
            &[],
            Ev::Blocked("/tmp/y"),
        );
        if got.iter().any(|(t, _)| t == burst) {
            fired_at.push(i);
        }
    }
    // By host: different pids count together; it fires at the 5th and
    // again only after 5 more.
    assert_eq!(fired_at, [4, 9]);

    // 20 writes in the PHI store by one process within 10 s.
    let ransom = "Many Files Changed in the PHI Store Within Seconds";
    let mut n = 0;
    for i in 0..40u64 {
        let path = format!("/var/lib/pharmacy/phi/p{i}.json.enc");
        let got = feed(
            &set,
            &mut tr,
            500 * S + i * S / 10,
            70,
            &[],
            Ev::Write("/tmp/enc", &path),
        );
        n += got.iter().filter(|(t, _)| t == ransom).count();
    }
    assert_eq!(n, 2);
    // The dispensing app writing as many does not count.
    for i in 0..40u64 {
        let path = format!("/var/lib/pharmacy/phi/p{i}.json");
        let got = feed(
            &set,
            &mut tr,
            600 * S + i * S / 10,
            71,
            &[],
            Ev::Write("/opt/dispensing/bin/dispense", &path),
        );
        assert!(got.iter().all(|(t, _)| t != ransom));
    }
}

#[test]
fn partial_sequences_are_bounded_and_the_overflow_is_counted() {
    let set = load(
        "title: bounded\nsequence:\n  by: process\n  within: 1h\n  steps:\n    - logsource: {product: linux, category: process_creation}\n      detection: {selection: {Image: /a}, condition: selection}\n    - logsource: {product: linux, category: process_creation}\n      detection: {selection: {Image: /b}, condition: selection}\n",
    );
    let mut tr = SequenceTracker::default();
    let n = detect::MAX_PARTIALS as u32 + 10;
    for pid in 0..n {
        feed(&set, &mut tr, S, pid, &[], Ev::Exec("/a"));
    }
    assert_eq!(tr.partials(), detect::MAX_PARTIALS);
    assert_eq!(tr.dropped(), 10);
    // After the window the old ones make room again.
    feed(&set, &mut tr, 3700 * S, n + 1, &[], Ev::Exec("/a"));
    assert_eq!(tr.partials(), 1);
    assert_eq!(tr.dropped(), 10);
}

#[test]
fn bad_sequence_rules_and_responses_are_refused_naming_step_and_key() {
    let step = "    - logsource: {product: linux, category: process_creation}\n      detection: {selection: {Image: /a}, condition: selection}\n";
    let seq = |head: &str, body: &str| format!("title: t\n{head}sequence:\n{body}");
    let cases = [
        (
            seq("", &format!("  by: user\n  within: 5\n  steps:\n{step}")),
            "`sequence.by`",
            RefusalKind::Invalid,
        ),
        (
            seq("", &format!("  by: host\n  within: 0\n  steps:\n{step}")),
            "`sequence.within`",
            RefusalKind::Invalid,
        ),
        (
            seq("", &format!("  by: host\n  within: 2d\n  steps:\n{step}")),
            "`sequence.within`",
            RefusalKind::Invalid,
        ),
        (
            seq("", "  by: host\n  within: 5\n  steps: []\n"),
            "`sequence.steps`: 1 to 8 steps, got 0",
            RefusalKind::Invalid,
        ),
        (
            seq("", &format!("  by: host\n  within: 5\n  every: 3\n  steps:\n{step}")),
            "`sequence`: unknown key `every`",
            RefusalKind::Invalid,
        ),
        (
            seq("", &format!("  by: host\n  within: 5\n  steps:\n{step}    - count: 0\n      logsource: {{product: linux, category: process_creation}}\n      detection: {{selection: {{Image: /b}}, condition: selection}}\n")),
            "`sequence.steps[1].count`",
            RefusalKind::Invalid,
        ),
        (
            seq("", &format!("  by: host\n  within: 5\n  steps:\n{step}    - logsource: {{product: linux, category: process_creation}}\n      detection: {{selection: {{CurrentDirectory: /b}}, condition: selection}}\n")),
            "`sequence.steps[1].detection.selection.CurrentDirectory`: the sensor does not produce field",
            RefusalKind::Unsupported,
        ),
        (
            seq("", &format!("  by: host\n  within: 5\n  steps:\n{step}")).replace("title: t\n", "title: t\ndetection: {}\n"),
            "`detection`: a sequence rule has its logsource and detection in each of its steps",
            RefusalKind::Invalid,
        ),
        (
            seq("response: reboot\n", &format!("  by: host\n  within: 5\n  steps:\n{step}")),
            "`response`: unknown action `reboot`; accepted: alert, kill, kill_tree, quarantine, isolate",
            RefusalKind::Invalid,
        ),
        (
            "title: t\nresponse: [kill, 3]\nlogsource: {product: linux, category: process_creation}\ndetection: {selection: {Image: /a}, condition: selection}\n".to_owned(),
            "`response`: actions are text",
            RefusalKind::Invalid,
        ),
    ];
    for (text, want, kind) in cases {
        let mut l = Loader::new(detect::default_placeholders());
        l.add("bad.yml", &text);
        let (set, refused) = l.finish();
        assert!(set.is_empty(), "{want}");
        assert_eq!(refused.len(), 1, "{want}");
        let got = refused[0].to_string();
        assert!(
            got.starts_with(&format!("bad.yml: {want}")),
            "{got}\n  wanted {want}"
        );
        assert_eq!(refused[0].kind, kind, "{got}");
    }
    // A Sigma rule's response is parsed too.
    let set = load(
        "title: r\nresponse: [quarantine, kill, kill]\nlogsource: {product: linux, category: process_creation}\ndetection: {selection: {Image: /a}, condition: selection}\n",
    );
    let rule = set.rules().next().expect("one rule");
    assert_eq!(rule.response, [Action::Quarantine, Action::Kill]);
}
