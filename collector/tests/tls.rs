//! The channel as an attacker on the kiosk network would try it: the real
//! `rxsentry-collector` binary with mutual TLS and a test CA, and clients
//! holding no, foreign, expired, revoked or another host's certificates.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use collector::auth::{Operator, Role};
use collector::testkit::{self, SensorStream};
use pki::{Ca, Leaf};
use proto::control::v1::{
    IsolationRequest, SensorHello, SensorMessage, analyst_api_client::AnalystApiClient,
    sensor_control_client::SensorControlClient, sensor_message,
};
use proto::telemetry::v1::SubscribeRequest;
use tests::CollectorAccess;
use time::{Duration as Span, OffsetDateTime};
use tonic::Code;

const VIEWER: &str = "viewer-token";
const RESPONDER: &str = "responder-token";
const ADMIN: &str = "admin-token";

/// A collector process with its CA (in `state/pki`), killed on drop.
struct Tls {
    child: Child,
    addr: String,
    state: tempfile::TempDir,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tls {
    fn start() -> Self {
        let state = tempfile::tempdir().unwrap();
        let ca = Ca::init(&state.path().join("pki"), "test CA").unwrap();
        let names = vec!["127.0.0.1".to_owned()];
        ca.issue(&Leaf::Collector { names }, 1)
            .unwrap()
            .write(&state.path().join("tls"), "collector")
            .unwrap();
        let ops = format!(
            "{}{}{}",
            Operator::with_token("vera", Role::Viewer, VIEWER).to_toml(),
            Operator::with_token("rita", Role::Responder, RESPONDER).to_toml(),
            Operator::with_token("ada", Role::Admin, ADMIN).to_toml()
        );
        std::fs::write(state.path().join("operators.toml"), ops).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
            .args(["--listen", "127.0.0.1:0", "--stats-interval", "0"])
            .arg("--state-dir")
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = common::listening_line(&mut child).unwrap();
        Self { child, addr, state }
    }

    fn ca(&self) -> Ca {
        Ca::load(&self.state.path().join("pki")).unwrap()
    }

    fn access(&self) -> CollectorAccess {
        CollectorAccess {
            url: format!("https://{}", self.addr),
            ca: Some(self.state.path().join("pki/ca.pem")),
            identity: None,
            token: Some(VIEWER.into()),
        }
    }

    /// A sensor certificate of `host`, valid from `from` to `until` hours
    /// from now, written under the state dir.
    fn sensor(&self, host: &str, from: i64, until: i64) -> (CollectorAccess, String) {
        let now = OffsetDateTime::now_utc();
        let cred = self
            .ca()
            .issue_between(
                &Leaf::Sensor {
                    host_id: host.into(),
                },
                now + Span::hours(from),
                now + Span::hours(until),
            )
            .unwrap();
        let dir = self
            .state
            .path()
            .join(format!("s-{}", cred.identity.serial));
        let (cert, key) = cred.write(&dir, "sensor").unwrap();
        (self.access().with_identity(cert, key), cred.identity.serial)
    }
}

async fn publish_as(access: &CollectorAccess, host: &str, seq: u64) -> Result<(), tonic::Status> {
    let channel = access
        .channel()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    let mut stream = SensorStream::open(channel).await?;
    let batch = testkit::zstd_batch(
        &testkit::host(host, "inst-1"),
        seq,
        vec![testkit::exec_event(4242, "sh", "/bin/sh", &["sh"])],
    );
    stream.publish(batch).await.map(|_| ())
}

#[tokio::test]
async fn only_a_valid_unrevoked_sensor_certificate_publishes_and_only_as_its_host() {
    let c = Tls::start();
    let (kiosk_a, serial_a) = c.sensor("kiosk-a", -1, 24);
    publish_as(&kiosk_a, "kiosk-a", 1).await.unwrap();

    // No certificate: the TLS session is up (analysts use tokens) but
    // Publish refuses.
    let e = publish_as(&c.access(), "kiosk-a", 2).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // Host A's certificate claiming host B: refused, B is untouched.
    let e = publish_as(&kiosk_a, "kiosk-b", 1).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("kiosk-a"), "{e:?}");

    // A forged far-ahead sequence for B from A's certificate cannot blind
    // B: B's own certificate still publishes from 1.
    let _ = publish_as(&kiosk_a, "kiosk-b", u64::MAX - 1)
        .await
        .unwrap_err();
    let (kiosk_b, _) = c.sensor("kiosk-b", -1, 24);
    publish_as(&kiosk_b, "kiosk-b", 1).await.unwrap();

    // A's control hello as B is refused.
    let mut control = SensorControlClient::new(kiosk_a.channel().await.unwrap());
    let hello = SensorMessage {
        kind: Some(sensor_message::Kind::Hello(SensorHello {
            host: Some(testkit::host("kiosk-b", "inst-1")),
            ..Default::default()
        })),
    };
    let e = control
        .open(tokio_stream::iter(vec![hello]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Expired: the handshake itself fails (rustls checks validity).
    let (expired, _) = c.sensor("kiosk-a", -48, -24);
    assert!(publish_as(&expired, "kiosk-a", 2).await.is_err());

    // Revoked: refused within the deny-list poll, open streams too.
    let channel = kiosk_a.channel().await.unwrap();
    let mut open = SensorStream::open(channel).await.unwrap();
    let host = testkit::host("kiosk-a", "inst-1");
    let ev = || vec![testkit::exec_event(4243, "sh", "/bin/sh", &["sh"])];
    open.publish(testkit::zstd_batch(&host, 2, ev()))
        .await
        .unwrap();
    c.ca().revoke(&serial_a, "test").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut seq = 3;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "revocation never applied"
        );
        match open.publish(testkit::zstd_batch(&host, seq, ev())).await {
            Ok(_) => seq += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
                assert!(e.message().contains("revoked"), "{e:?}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = publish_as(&kiosk_a, "kiosk-a", seq + 1).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_gets_nowhere_either_way() {
    let c = Tls::start();
    let other = tempfile::tempdir().unwrap();
    let rogue = Ca::init(&other.path().join("pki"), "rogue CA").unwrap();
    let (cert, key) = rogue
        .issue(
            &Leaf::Sensor {
                host_id: "kiosk-a".into(),
            },
            1,
        )
        .unwrap()
        .write(other.path(), "sensor")
        .unwrap();
    // A sensor certificate from a rogue CA: no handshake.
    let forged = c.access().with_identity(cert, key);
    assert!(publish_as(&forged, "kiosk-a", 1).await.is_err());
    // A client that trusts another CA (a sensor pointed at a fake
    // collector, here the other way round): it refuses the collector.
    let fake_view = CollectorAccess {
        ca: Some(other.path().join("pki/ca.pem")),
        ..c.access()
    };
    assert!(
        fake_view.channel().await.is_err(),
        "trusted a collector of another CA"
    );
}

#[tokio::test]
async fn roles_gate_the_analyst_api_and_subscriptions() {
    let c = Tls::start();
    let access = c.access();
    let mut api = AnalystApiClient::new(access.channel().await.unwrap());
    let request = IsolationRequest {
        host_id: "kiosk-a".into(),
        reason: "test".into(),
    };
    let e = api
        .isolate(access.request(request.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "a viewer isolated: {e:?}");
    assert!(e.message().contains("needs responder"), "{e:?}");
    // A responder passes the role check (the host has no control stream).
    let e = api
        .isolate(access.with_token(Some(RESPONDER)).request(request))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Subscribing needs a token.
    let e =
        tests::Subscription::open_on_demand(&access.with_token(None), SubscribeRequest::default())
            .await
            .err()
            .expect("an anonymous subscription was accepted");
    assert!(
        format!("{e:#}").contains("Unauthenticated") || format!("{e:#}").contains("token"),
        "{e:#}"
    );
    tests::Subscription::open_on_demand(&access, SubscribeRequest::default())
        .await
        .unwrap();
}

#[test]
fn plaintext_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args(["--listen", "0.0.0.0:0", "--insecure-plaintext"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without TLS files and without the flag: a clear error, not plaintext.
    let out = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pki init"));
}

/// A hand-driven control stream: what it sends, what it receives.
struct Control {
    tx: tokio::sync::mpsc::Sender<SensorMessage>,
    commands: tonic::Streaming<proto::control::v1::Command>,
}

async fn open_control(access: &CollectorAccess, host: &str) -> Result<Control, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(SensorMessage {
        kind: Some(sensor_message::Kind::Hello(SensorHello {
            host: Some(testkit::host(host, "inst-1")),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let channel = access
        .channel()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    let commands = SensorControlClient::new(channel)
        .open(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Control { tx, commands })
}

fn result(command_id: u64, ok: bool, error: &str) -> SensorMessage {
    SensorMessage {
        kind: Some(sensor_message::Kind::Result(
            proto::control::v1::CommandResult {
                command_id,
                ok,
                error: error.into(),
                isolation: None,
            },
        )),
    }
}

/// Waits until the collector lists `host` with a control stream.
async fn wait_connected(c: &Tls, host: &str) {
    let access = c.access();
    let mut api = AnalystApiClient::new(access.channel().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = api
            .list_hosts(access.request(proto::control::v1::ListHostsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .hosts;
        if hosts
            .iter()
            .any(|h| h.host_id == host && h.control_connected)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host} never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_host_control_stream_cannot_be_taken_over_or_answered_by_others() {
    let c = Tls::start();
    let (a1, _) = c.sensor("kiosk-a", -1, 24);
    let (a2, _) = c.sensor("kiosk-a", -1, 24);
    let (b, _) = c.sensor("kiosk-b", -1, 24);
    let first = open_control(&a1, "kiosk-a").await.unwrap();
    wait_connected(&c, "kiosk-a").await;

    // Another certificate of the same host: refused, the first stream kept.
    let e = open_control(&a2, "kiosk-a")
        .await
        .err()
        .expect("takeover by another certificate");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // The same certificate (a sensor reconnecting): the newer stream wins.
    let mut a = open_control(&a1, "kiosk-a").await.unwrap();
    drop(first);
    let audit = std::fs::read_dir(c.state.path().join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    let takeovers: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("control_takeover"))
        .collect();
    assert_eq!(takeovers.len(), 2, "{audit}");
    assert!(
        takeovers[0].contains("\"refused\"") && takeovers[1].contains("\"ok\""),
        "{audit}"
    );

    // A responder isolates kiosk-a; kiosk-b (which sees the command id in
    // no way but guessing) answers ok for it, then kiosk-a answers no.
    let mut bs = open_control(&b, "kiosk-b").await.unwrap();
    wait_connected(&c, "kiosk-b").await;
    let access = c.access().with_token(Some(RESPONDER));
    let mut api = AnalystApiClient::new(access.channel().await.unwrap());
    let call = tokio::spawn(async move {
        api.isolate(access.request(IsolationRequest {
            host_id: "kiosk-a".into(),
            reason: "test".into(),
        }))
        .await
    });
    let command = tokio::time::timeout(Duration::from_secs(10), a.commands.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    bs.tx
        .send(result(command.command_id, true, ""))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.tx.send(result(command.command_id, false, "genuine answer"))
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("genuine answer"),
        "kiosk-b's forged ok counted: {e:?}"
    );
    // Nothing reached kiosk-b.
    let nothing = tokio::time::timeout(Duration::from_millis(200), bs.commands.message()).await;
    assert!(nothing.is_err(), "kiosk-b received a command: {nothing:?}");
}

#[tokio::test]
async fn only_an_admin_reloads_trust_and_a_bad_file_keeps_the_last_good_one() {
    use proto::control::v1::{ListHostsRequest, ReloadTrustRequest};
    let c = Tls::start();
    let access = c.access();
    let mut api = AnalystApiClient::new(access.channel().await.unwrap());
    let e = api
        .reload_trust(
            access
                .with_token(Some(RESPONDER))
                .request(ReloadTrustRequest {}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A new operator appears in the file: usable once an admin reloads.
    let ops = c.state.path().join("operators.toml");
    let mut text = std::fs::read_to_string(&ops).unwrap();
    text.push_str(&Operator::with_token("newbie", Role::Viewer, "newbie-token").to_toml());
    std::fs::write(&ops, &text).unwrap();
    let newbie = access.with_token(Some("newbie-token"));
    let before = api
        .list_hosts(newbie.request(ListHostsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(before.code(), Code::PermissionDenied, "{before:?}");
    let done = api
        .reload_trust(
            access
                .with_token(Some(ADMIN))
                .request(ReloadTrustRequest {}),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.operators, done.operator.as_str()), (4, "ada"));
    api.list_hosts(newbie.request(ListHostsRequest {}))
        .await
        .unwrap();
    // A broken file is refused and the last good list stays in force.
    std::fs::write(&ops, "[[operator]]\nname = 1\n").unwrap();
    let e = api
        .reload_trust(
            access
                .with_token(Some(ADMIN))
                .request(ReloadTrustRequest {}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    api.list_hosts(newbie.request(ListHostsRequest {}))
        .await
        .unwrap();
    // Each attempt is in the audit log.
    let audit = std::fs::read_dir(c.state.path().join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    let reloads: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("reload_trust"))
        .collect();
    assert_eq!(reloads.len(), 3, "{audit}");
}

#[tokio::test]
async fn admins_manage_operators_over_the_api_and_a_removed_token_stops_at_once() {
    use proto::control::v1::{
        AddOperatorRequest, ListHostsRequest, ListOperatorsRequest, RemoveOperatorRequest,
    };
    let c = Tls::start();
    let viewer = c.access();
    let admin = viewer.with_token(Some(ADMIN));
    let mut api = AnalystApiClient::new(viewer.channel().await.unwrap());

    // Only an admin lists or changes operators.
    let add = |name: &str, role: &str| AddOperatorRequest {
        name: name.into(),
        role: role.into(),
    };
    for e in [
        api.list_operators(viewer.request(ListOperatorsRequest {}))
            .await
            .unwrap_err(),
        api.add_operator(viewer.request(add("mallory", "admin")))
            .await
            .unwrap_err(),
        api.add_operator(
            viewer
                .with_token(Some(RESPONDER))
                .request(add("mallory", "admin")),
        )
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }

    // An admin adds a viewer: the token works at once, as a viewer only.
    let added = api
        .add_operator(admin.request(add("nina", "viewer")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.operator, "ada");
    assert_eq!(added.token.len(), 64, "{added:?}");
    let nina = viewer.with_token(Some(&added.token));
    api.list_hosts(nina.request(ListHostsRequest {}))
        .await
        .unwrap();
    let e = api
        .isolate(nina.request(IsolationRequest {
            host_id: "kiosk-a".into(),
            reason: "test".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The file keeps a salted hash, never the token, and stays 0600.
    let file = c.state.path().join("operators.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"nina\"") && !text.contains(&added.token));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let listed = api
        .list_operators(admin.request(ListOperatorsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .operators;
    assert!(
        listed
            .iter()
            .any(|o| o.name == "nina" && o.role == "viewer"),
        "{listed:?}"
    );

    // Bad requests change nothing.
    for (req, code) in [
        (add("nina", "admin"), Code::AlreadyExists),
        (add("eve", "root"), Code::InvalidArgument),
        (add("", "viewer"), Code::InvalidArgument),
        (add("e\u{1b}[2Jve", "viewer"), Code::InvalidArgument),
    ] {
        let e = api.add_operator(admin.request(req)).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    let e = api
        .remove_operator(admin.request(RemoveOperatorRequest { name: "ada".into() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "the last admin: {e:?}");
    assert_eq!(
        auth_names(&file),
        ["vera", "rita", "ada", "nina"],
        "a refused change left the file as it was"
    );

    // Removed: the token stops working with the next call, and a
    // subscription opened before ends.
    let mut open = tests::Subscription::open_on_demand(&nina, SubscribeRequest::default())
        .await
        .unwrap();
    api.remove_operator(admin.request(RemoveOperatorRequest {
        name: "nina".into(),
    }))
    .await
    .unwrap();
    let e = api
        .list_hosts(nina.request(ListHostsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not recognised"), "{e:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), open.next())
        .await
        .expect("the removed operator's subscription still streams");
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    // And a collector restarted on the same state agrees (the file).
    assert_eq!(auth_names(&file), ["vera", "rita", "ada"]);

    // Every change is in the audit chain, under the admin's name.
    let mut actions = Vec::new();
    audit::verify(&c.state.path().join("audit")).unwrap();
    audit::read_chain(&c.state.path().join("audit"), |l| {
        let e = &l.record.entry;
        if e.action.ends_with("_operator") {
            actions.push(format!(
                "{} {:?} {}",
                e.action,
                e.outcome,
                e.operator.clone().unwrap_or_default()
            ));
        }
    })
    .unwrap();
    assert!(
        actions.contains(&"add_operator Ok ada".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"remove_operator Ok ada".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"add_operator Refused ".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"remove_operator Failed ada".to_owned()),
        "{actions:?}"
    );
}

fn auth_names(file: &std::path::Path) -> Vec<String> {
    collector::auth::load_operators(file)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect()
}

/// The certificate the collector at `addr` presents to a new connection.
async fn presented_certificate(addr: &str, ca: &std::path::Path) -> Vec<u8> {
    use tokio_rustls::rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[tokio::test]
async fn a_renewed_collector_certificate_is_in_force_without_a_restart_or_a_dropped_stream() {
    let c = Tls::start();
    let ca = c.state.path().join("pki/ca.pem");
    let tls_dir = c.state.path().join("tls");
    let old = pem_der(&tls_dir.join("collector.pem"));
    assert_eq!(presented_certificate(&c.addr, &ca).await, old);

    // A sensor's stream is open before the renewal.
    let (kiosk, _) = c.sensor("kiosk-a", -1, 24);
    let mut open = SensorStream::open(kiosk.channel().await.unwrap())
        .await
        .unwrap();
    let host = testkit::host("kiosk-a", "inst-1");
    let ev = |pid| vec![testkit::exec_event(pid, "sh", "/bin/sh", &["sh"])];
    open.publish(testkit::zstd_batch(&host, 1, ev(1)))
        .await
        .unwrap();

    // Renewed in place (as `pki issue-collector` does): in force within
    // the 2 s poll, no signal.
    let names = vec!["127.0.0.1".to_owned()];
    c.ca()
        .issue(&Leaf::Collector { names }, 1)
        .unwrap()
        .write(&tls_dir, "collector")
        .unwrap();
    let renewed = pem_der(&tls_dir.join("collector.pem"));
    assert_ne!(renewed, old);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while presented_certificate(&c.addr, &ca).await != renewed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate never came in force"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The stream opened before goes on; new connections work too.
    open.publish(testkit::zstd_batch(&host, 2, ev(2)))
        .await
        .unwrap();
    publish_as(&kiosk, "kiosk-a", 3).await.unwrap();

    // A broken renewal (a key that is not the certificate's) is refused:
    // the certificate in force stays, the collector keeps serving.
    let other = c
        .ca()
        .issue(
            &Leaf::Collector {
                names: vec!["127.0.0.1".to_owned()],
            },
            1,
        )
        .unwrap();
    pki::files::write_secret(&tls_dir.join("collector.key"), other.key_pem.as_bytes()).unwrap();
    // Two polls at least.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(presented_certificate(&c.addr, &ca).await, renewed);
    open.publish(testkit::zstd_batch(&host, 4, ev(4)))
        .await
        .unwrap();
    publish_as(&kiosk, "kiosk-a", 5).await.unwrap();
}
