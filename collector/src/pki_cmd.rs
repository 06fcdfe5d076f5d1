//! `rxsentry-collector pki ...`: the deployment's CA on the collector host.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use collector::auth::{self, Operator, Role};
use pki::issue::LEAF_DAYS;
use pki::{Ca, Leaf};

/// File names inside `STATE_DIR/tls`: the collector's own credential.
pub const COLLECTOR_STEM: &str = "collector";

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Creates the CA (STATE_DIR/pki) and the collector's certificate
    /// (STATE_DIR/tls) for the given names; keeps an existing CA.
    Init {
        /// DNS names and IPs sensors and analysts use to reach the collector.
        #[arg(long = "name", default_values_t = default_names())]
        names: Vec<String>,
    },
    /// Issues a sensor certificate bound to HOST_ID into OUT
    /// (ca.pem, sensor.pem, sensor.key): copy them to the kiosk's /etc/rxsentry/tls.
    IssueSensor {
        #[arg(long)]
        host_id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: i64,
    },
    /// Issues a new collector certificate into STATE_DIR/tls (rotation:
    /// restart the collector to serve it; sensors resend what was unacked).
    IssueCollector {
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: i64,
    },
    /// Revokes a certificate by serial, or every certificate of a host; the
    /// running collector refuses it within seconds and cuts its streams.
    Revoke {
        #[arg(long, conflicts_with = "host_id", required_unless_present = "host_id")]
        serial: Option<String>,
        #[arg(long)]
        host_id: Option<String>,
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
    /// Lists issued certificates and whether each is revoked.
    List,
    /// Adds an operator with a new token: the salted hash goes to the
    /// operators file, the token to TOKEN_OUT (0600) for the analyst.
    AddOperator {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: Role,
        /// Default: STATE_DIR/operators.toml.
        #[arg(long)]
        operators: Option<PathBuf>,
        #[arg(long)]
        token_out: PathBuf,
    },
}

fn default_names() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
}

pub fn pki_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pki")
}

pub fn tls_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

pub fn run(state_dir: &Path, command: PkiCommand) -> anyhow::Result<()> {
    let dir = pki_dir(state_dir);
    match command {
        PkiCommand::Init { names } => {
            let ca = Ca::load_or_init(&dir, "rxsentry CA")?;
            let cred = ca.issue(&Leaf::Collector { names }, LEAF_DAYS)?;
            let (cert, key) = cred.write(&tls_dir(state_dir), COLLECTOR_STEM)?;
            println!("CA: {}", dir.join(pki::issue::CA_CERT).display());
            println!(
                "collector certificate: {} (key {})",
                cert.display(),
                key.display()
            );
        }
        PkiCommand::IssueSensor { host_id, out, days } => {
            let ca = Ca::load(&dir)?;
            let cred = ca.issue(&Leaf::Sensor { host_id }, days)?;
            let (cert, key) = cred.write(&out, "sensor")?;
            pki::files::write_file(&out.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
            println!(
                "sensor certificate {} (serial {}): {} (key {})",
                cred.identity.host_id().unwrap_or_default(),
                cred.identity.serial,
                cert.display(),
                key.display()
            );
        }
        PkiCommand::IssueCollector { names, days } => {
            let ca = Ca::load(&dir)?;
            let cred = ca.issue(&Leaf::Collector { names }, days)?;
            let (cert, _) = cred.write(&tls_dir(state_dir), COLLECTOR_STEM)?;
            println!(
                "collector certificate {} (serial {})",
                cert.display(),
                cred.identity.serial
            );
        }
        PkiCommand::Revoke {
            serial,
            host_id,
            reason,
        } => {
            let ca = Ca::load(&dir)?;
            let serials: Vec<String> = match (serial, host_id) {
                (Some(s), _) => vec![s],
                (None, Some(host)) => ca
                    .issued()?
                    .into_iter()
                    .filter(|i| i.host_id() == Some(host.as_str()))
                    .map(|i| i.serial)
                    .collect(),
                (None, None) => anyhow::bail!("give --serial or --host-id"),
            };
            anyhow::ensure!(!serials.is_empty(), "no certificate issued to that host");
            for s in serials {
                ca.revoke(&s, &reason)?;
                println!("revoked {s}");
            }
        }
        PkiCommand::List => {
            let ca = Ca::load(&dir)?;
            let deny = pki::DenyList::load(&ca.deny_list())?;
            for i in ca.issued()? {
                let who = match &i.holder {
                    pki::Holder::Sensor { host_id } => format!("sensor {host_id}"),
                    pki::Holder::Collector => "collector".into(),
                };
                let state = if deny.is_revoked(&i.serial) {
                    "REVOKED"
                } else {
                    "valid"
                };
                println!("{}  {who}  until {}  {state}", i.serial, i.not_after_unix);
            }
        }
        PkiCommand::AddOperator {
            name,
            role,
            operators,
            token_out,
        } => {
            let path = operators.unwrap_or_else(|| state_dir.join("operators.toml"));
            let mut text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            };
            let existing = auth::parse_operators(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            anyhow::ensure!(
                !existing.iter().any(|o| o.name == name),
                "operator {name:?} already exists in {}",
                path.display()
            );
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                pki::files::private_dir(dir)?;
            }
            let token = auth::new_token();
            pki::files::write_secret(&token_out, format!("{token}\n").as_bytes())?;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&Operator::with_token(&name, role, &token).to_toml());
            pki::files::write_file(&path, text.as_bytes(), 0o600)?;
            println!(
                "operator {name} ({role}) added to {}; token in {} (send SIGHUP to the collector)",
                path.display(),
                token_out.display()
            );
        }
    }
    Ok(())
}
