//! SigmaHQ's Linux rules (test data in ../shared/sigma, never copied into
//! the repository): exactly how many load, and why each refused one is.

use std::path::PathBuf;

use detect::{Category, CommandLine, EventRef, Loader, RefusalKind, Scratch};

/// The rule directory (see `detect::sigmahq_rules_dir`); missing is a
/// failure, never a skip.
fn sigma_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    detect::sigmahq_rules_dir(&workspace).unwrap_or_else(|| {
        panic!(
            "SigmaHQ test rules not found: set RXSENTRY_SHARED to the shared folder \
             (looked beside {} and its parents, and in /work/shared)",
            workspace.display()
        )
    })
}

#[test]
fn sigmahq_linux_rules_load_or_are_refused_with_a_reason() {
    let mut loader = Loader::new(detect::default_placeholders());
    loader.add_dir(&sigma_dir()).expect("readable");
    let (set, refused) = loader.finish();
    for r in &refused {
        println!("refused: {r}");
    }
    println!("loaded {} refused {}", set.len(), refused.len());
    let mut reasons: Vec<String> = refused
        .iter()
        .map(|r| {
            let file = r.file.rsplit('/').next().unwrap_or_default();
            format!("{file}: {}: {}", r.field, r.reason)
        })
        .collect();
    reasons.sort();
    assert_eq!(
        set.len() + refused.len(),
        135,
        "every file is accounted for"
    );
    assert!(
        refused.iter().all(|r| r.kind == RefusalKind::Unsupported),
        "SigmaHQ's rules are valid Sigma: {refused:?}"
    );
    assert_eq!(reasons, EXPECTED_REFUSALS, "{reasons:#?}");
    assert_eq!(set.len(), 135 - EXPECTED_REFUSALS.len());
    // Every loaded rule names its author (DRL 1.1).
    assert!(
        set.rules()
            .all(|r| !r.author.is_empty() && r.author != "unknown")
    );
}

/// No host name resolution per connection yet; no login sessions.
const EXPECTED_REFUSALS: &[&str] = &[
    "net_connection_lnx_crypto_mining_indicators.yml: detection.selection.DestinationHostname: the sensor does not produce field `DestinationHostname`",
    "net_connection_lnx_domain_localtonet_tunnel.yml: detection.selection.DestinationHostname: the sensor does not produce field `DestinationHostname`",
    "net_connection_lnx_ngrok_tunnel.yml: detection.selection.DestinationHostname: the sensor does not produce field `DestinationHostname`",
    "proc_creation_lnx_omigod_scx_runasprovider_executescript.yml: detection.selection.LogonId: the sensor does not produce field `LogonId`",
    "proc_creation_lnx_omigod_scx_runasprovider_executeshellcommand.yml: detection.selection.LogonId: the sensor does not produce field `LogonId`",
];

fn titles(set: &detect::RuleSet, event: &EventRef<'_>) -> Vec<String> {
    let mut out = Vec::new();
    set.matches(event, &mut Scratch::default(), &mut out);
    let mut t: Vec<String> = out.iter().map(|r| r.title.clone()).collect();
    t.sort();
    t
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn sigmahq_rules_fire_on_their_behaviour_and_not_on_look_alikes() {
    let mut loader = Loader::default();
    loader.add_dir(&sigma_dir()).expect("readable");
    let (set, _) = loader.finish();

    let apt = argv(&[
        "apt-get",
        "update",
        "-o",
        "APT::Update::Pre-Invoke::=/bin/sh",
    ]);
    let mut exec = EventRef::new(Category::ProcessCreation);
    exec.image = Some("/usr/bin/apt-get");
    exec.command_line = CommandLine::Argv(&apt);
    exec.parent_image = Some("/usr/bin/bash");
    assert_eq!(titles(&set, &exec), ["Shell Invocation via Apt - Linux"]);
    let benign = argv(&["apt-get", "update"]);
    exec.command_line = CommandLine::Argv(&benign);
    assert_eq!(titles(&set, &exec), Vec::<String>::new());

    // `selection and not filter` on a network connection.
    let mut net = EventRef::new(Category::NetworkConnection);
    net.image = Some("/usr/bin/bash");
    net.destination_ip = Some("192.0.2.7");
    net.destination_port = Some(4444);
    net.initiated = Some(true);
    assert_eq!(
        titles(&set, &net),
        [
            "Linux Reverse Shell Indicator",
            "Potentially Suspicious Malware Callback Communication - Linux"
        ]
    );
    // Both filter loopback (cidr, and a plain value).
    net.destination_ip = Some("127.0.0.1");
    assert_eq!(titles(&set, &net), Vec::<String>::new());
    net.destination_ip = Some("::ffff:192.0.2.7");
    net.image = Some("/usr/bin/curl");
    assert_eq!(
        titles(&set, &net),
        ["Potentially Suspicious Malware Callback Communication - Linux"]
    );
    net.destination_port = Some(443);
    assert_eq!(titles(&set, &net), Vec::<String>::new());

    // A cron file written: file_event TargetFilename|startswith.
    let mut file = EventRef::new(Category::FileEvent);
    file.image = Some("/usr/bin/vi");
    file.target_filename = Some("/etc/cron.d/evil");
    assert!(!titles(&set, &file).is_empty());
    file.target_filename = Some("/home/kiosk/notes.txt");
    assert_eq!(titles(&set, &file), Vec::<String>::new());
}

/// The paths SigmaHQ's file rules need watched, and the ones that see
/// watched files only (their path is a `contains` or `endswith`).
#[test]
fn sigmahq_file_rules_name_the_paths_the_kernel_must_watch() {
    use detect::PathBound::{Exact, Prefix};
    let mut loader = Loader::new(detect::default_placeholders());
    loader.add_dir(&sigma_dir()).expect("readable");
    let (set, _) = loader.finish();
    let needs = set.path_needs();
    for n in &needs.needs {
        println!("watch: {:?} read={}", n.bound, n.read);
    }
    for b in &needs.blind {
        println!("blind: {} (partly: {})", b.title, b.partly);
    }
    let bounds: Vec<_> = needs.needs.iter().map(|n| n.bound.clone()).collect();
    for want in [
        Prefix("/etc/cron.d/".into()),
        Prefix("/var/spool/cron/crontabs/".into()),
        Prefix("/etc/sudoers.d/".into()),
        Exact("/tmp/rootlog".into()),
        Prefix("/tmp/".into()),
    ] {
        assert!(bounds.contains(&want), "{want:?} in {bounds:?}");
    }
    let blind = |title: &str| needs.blind.iter().find(|b| b.title == title);
    // `TargetFilename|contains: /etc/crontab` beside the cron directories.
    assert!(blind("New Cron File Created").is_some_and(|b| b.partly));
    assert!(blind("Linux Doas Conf File Creation").is_some_and(|b| !b.partly));
    assert!(blind("Triple Cross eBPF Rootkit Default LockFile").is_none());
    assert!(blind("Persistence Via Sudoers.d Files").is_none());
}
