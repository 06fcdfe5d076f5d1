//! The engine on hand-built events: the default pack, item forms, and
//! refusals that name the file and the field.

use detect::{Category, CommandLine, EventRef, Loader, RefusalKind, RuleSet, Scratch};

fn load(rules: &[(&str, &str)]) -> (RuleSet, Vec<detect::Refusal>) {
    let mut l = Loader::new(detect::default_placeholders());
    for (name, text) in rules {
        l.add(name, text);
    }
    l.finish()
}

fn fired(set: &RuleSet, e: &EventRef<'_>) -> Vec<String> {
    let mut out = Vec::new();
    set.matches(e, &mut Scratch::default(), &mut out);
    out.iter().map(|r| r.title.clone()).collect()
}

fn rule(category: &str, detection: &str) -> String {
    format!(
        "title: t\nid: x\nauthor: tester\nlogsource:\n  product: linux\n  category: {category}\ndetection:\n{detection}\nlevel: low\n"
    )
}

fn exec<'a>(image: &'a str, argv: &'a [String]) -> EventRef<'a> {
    let mut e = EventRef::new(Category::ProcessCreation);
    e.image = Some(image);
    e.command_line = CommandLine::Argv(argv);
    e
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn default_pack_loads_and_each_rule_fires_on_its_behaviour_only() {
    let mut l = Loader::new(detect::default_placeholders());
    l.add_default_pack();
    let (set, refused) = l.finish();
    assert_eq!(refused, []);
    assert_eq!(set.len(), detect::DEFAULT_PACK.len());
    assert!(
        set.rules()
            .all(|r| r.author == "rxsentry" && r.attack_ids().count() > 0)
    );

    let none = Vec::<String>::new();
    let argv = v(&["x"]);
    assert_eq!(
        fired(&set, &exec("/tmp/x", &argv)),
        ["Execution From a World-Writable Directory"]
    );
    assert_eq!(
        fired(&set, &exec("/dev/shm/.x", &argv)),
        ["Execution From a World-Writable Directory"]
    );
    assert_eq!(fired(&set, &exec("/usr/bin/tmp/x", &argv)), none);

    let mut shell = exec("/usr/bin/bash", &argv);
    shell.parent_image = Some("/opt/pos/bin/pos");
    assert_eq!(
        fired(&set, &shell),
        ["Shell or Interpreter Started by the POS or Dispensing Application"]
    );
    shell.image = Some("/usr/bin/python3.11");
    assert_eq!(
        fired(&set, &shell),
        ["Shell or Interpreter Started by the POS or Dispensing Application"]
    );
    shell.image = Some("/usr/bin/lpr");
    assert_eq!(fired(&set, &shell), none, "the POS printing is fine");
    shell.image = Some("/usr/bin/bash");
    shell.parent_image = Some("/usr/sbin/sshd");
    assert_eq!(fired(&set, &shell), none, "an admin's shell is fine");

    let mut net = EventRef::new(Category::NetworkConnection);
    net.image = Some("/bin/bash");
    net.destination_ip = Some("127.0.0.1");
    net.initiated = Some(true);
    assert_eq!(
        fired(&set, &net),
        ["Shell Process Making a Network Connection"]
    );
    net.image = Some("/usr/bin/curl");
    assert_eq!(fired(&set, &net), none);

    let mut read = EventRef::new(Category::FileAccess);
    read.target_filename = Some("/etc/shadow");
    read.image = Some("/usr/bin/cat");
    assert_eq!(
        fired(&set, &read),
        ["Read of the Shadow Password File by an Unexpected Program"]
    );
    read.image = Some("/usr/sbin/unix_chkpwd");
    assert_eq!(fired(&set, &read), none);
    read.target_filename = Some("/var/lib/pharmacy/rx.db");
    read.image = Some("/usr/bin/scp");
    assert_eq!(
        fired(&set, &read),
        ["Read of the PHI Store by an Unexpected Program"]
    );
    read.image = Some("/opt/dispensing/bin/dispense");
    assert_eq!(fired(&set, &read), none);

    let mut write = EventRef::new(Category::FileEvent);
    write.target_filename = Some("/etc/rxsentry/sensor.toml");
    write.image = Some("/usr/bin/vi");
    assert_eq!(fired(&set, &write), ["Write to rxsentry's Own Files"]);
    write.image = Some("/usr/local/bin/rxsentry-sensor");
    assert_eq!(fired(&set, &write), none);

    let mut listen = EventRef::new(Category::NetworkListen);
    listen.protocol = Some("tcp");
    listen.image = Some("/usr/bin/nc.openbsd");
    listen.source_port = Some(4444);
    assert_eq!(fired(&set, &listen), ["New Listening Port"]);
    listen.image = Some("/usr/sbin/sshd");
    assert_eq!(fired(&set, &listen), none);
}

#[test]
fn lists_of_maps_all_and_null_values() {
    let text = rule(
        "process_creation",
        "  selection:\n    - Image|endswith: /nc\n      CommandLine|contains|all: [' -e ', '/bin/sh']\n    - Image|endswith: /ncat\n  filter:\n    ParentImage: null\n  condition: selection and not filter",
    );
    let (set, refused) = load(&[("r.yml", &text)]);
    assert_eq!(refused, []);
    let a = v(&["nc", "-e", "/bin/sh", "10.0.0.1"]);
    let b = v(&["nc", "-e", "/bin/bash"]);
    let mut e = exec("/usr/bin/nc", &a);
    assert_eq!(fired(&set, &e).len(), 0, "no parent: the null filter holds");
    e.parent_image = Some("/bin/bash");
    assert_eq!(fired(&set, &e).len(), 1);
    let mut e2 = exec("/usr/bin/nc", &b);
    e2.parent_image = Some("/bin/bash");
    assert_eq!(fired(&set, &e2).len(), 0, "all: both values needed");
    let mut e3 = exec("/usr/bin/ncat", &b);
    e3.parent_image = Some("/bin/bash");
    assert_eq!(fired(&set, &e3).len(), 1, "the second map of the list");
}

#[test]
fn numbers_and_booleans_compare_as_sigma_text() {
    let text = rule(
        "network_connection",
        "  selection:\n    DestinationPort: [4444, 5555]\n    Initiated: true\n    DestinationIp|cidr: 192.0.2.0/24\n  condition: selection",
    );
    let (set, refused) = load(&[("r.yml", &text)]);
    assert_eq!(refused, []);
    let mut n = EventRef::new(Category::NetworkConnection);
    n.destination_port = Some(5555);
    n.initiated = Some(true);
    n.destination_ip = Some("192.0.2.9");
    assert_eq!(fired(&set, &n).len(), 1);
    n.initiated = Some(false);
    assert_eq!(fired(&set, &n).len(), 0, "accepted, not initiated");
}

#[test]
fn refusals_name_file_field_and_reason() {
    let cases = [
        (
            rule(
                "process_creation",
                "  selection:\n    CurrentDirectory: /tmp\n  condition: selection",
            ),
            "cwd.yml: `detection.selection.CurrentDirectory`: the sensor does not produce field `CurrentDirectory`",
            RefusalKind::Unsupported,
        ),
        (
            rule(
                "file_event",
                "  selection:\n    DestinationIp: 1.2.3.4\n  condition: selection",
            ),
            "cwd.yml: `detection.selection.DestinationIp`: `DestinationIp` is not a field of file_event events",
            RefusalKind::Unsupported,
        ),
        (
            rule(
                "process_creation",
                "  keywords:\n    - evil\n  condition: keywords",
            ),
            "cwd.yml: `detection.keywords`: keyword search (values without a field) is not supported",
            RefusalKind::Unsupported,
        ),
        (
            rule(
                "process_creation",
                "  selection:\n    CommandLine|base64offset|contains: x\n  condition: selection",
            ),
            "cwd.yml: `detection.selection.CommandLine`: modifier `base64offset` is not supported",
            RefusalKind::Unsupported,
        ),
        (
            rule(
                "process_creation",
                "  selection:\n    Image: x\n  condition: selection | count() > 3",
            ),
            "cwd.yml: `detection.condition`: aggregations (`| count() ...`) are not supported",
            RefusalKind::Unsupported,
        ),
        (
            rule(
                "registry_set",
                "  selection:\n    Image: x\n  condition: selection",
            ),
            "cwd.yml: `logsource.category`: category `registry_set` is not produced by the sensor",
            RefusalKind::Unsupported,
        ),
        (
            rule(
                "process_creation",
                "  selection:\n    Image|expand: '%nope%'\n  condition: selection",
            ),
            "cwd.yml: `detection.selection.Image`: placeholder `%nope%` is not configured",
            RefusalKind::Unsupported,
        ),
        (
            rule(
                "process_creation",
                "  selection:\n    Image|re: '(unclosed'\n  condition: selection",
            ),
            "cwd.yml: `detection.selection.Image`: bad regular expression",
            RefusalKind::Invalid,
        ),
        (
            rule(
                "process_creation",
                "  selection:\n    Image: x\n  condition: selection and filter",
            ),
            "cwd.yml: `detection.condition`: condition names `filter`, which is not in the detection",
            RefusalKind::Invalid,
        ),
        (
            "title: [unclosed".to_owned(),
            "cwd.yml: `(file)`: not a YAML rule",
            RefusalKind::Invalid,
        ),
    ];
    for (text, want, kind) in cases {
        let (set, refused) = load(&[("cwd.yml", &text)]);
        assert!(set.is_empty(), "{want}");
        assert_eq!(refused.len(), 1, "{want}");
        let got = refused[0].to_string();
        assert!(got.starts_with(want), "{got}\n  wanted {want}");
        assert_eq!(refused[0].kind, kind, "{got}");
    }
}

#[test]
fn a_directory_is_loaded_recursively_and_a_missing_one_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("linux");
    std::fs::create_dir(&sub).expect("mkdir");
    let good = rule(
        "process_creation",
        "  selection:\n    Image: /x\n  condition: selection",
    );
    std::fs::write(sub.join("good.yml"), &good).expect("write");
    std::fs::write(sub.join("README.md"), "not a rule").expect("write");
    std::fs::write(dir.path().join("bad.yaml"), "detection: [").expect("write");
    let mut l = Loader::default();
    l.add_dir(dir.path()).expect("readable");
    let (set, refused) = l.finish();
    assert_eq!(set.len(), 1);
    assert_eq!(refused.len(), 1);
    assert!(refused[0].file.ends_with("bad.yaml"));
    let err = Loader::default()
        .add_dir(&dir.path().join("missing"))
        .expect_err("missing dir");
    assert!(err.to_string().contains("missing"), "{err}");
}
