//! Who is calling. Sensors are known by the client certificate the TLS
//! layer verified (host id from the certificate, never from a message),
//! checked against the deny list at stream open and at every message, so a
//! revocation also cuts streams that are already open. Analysts are known
//! by their operator token and role. Both lists reload while the collector
//! runs; a file that does not parse keeps the last good list in force.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use pki::{DenyList, Holder, PeerIdentity};
use tonic::{Request, Status, metadata::MetadataMap};
use tracing::warn;

use crate::auth::{self, Operator, Role};

/// Trust settings and their reloadable state.
#[derive(Debug)]
pub struct Trust {
    /// False only in the explicit plaintext mode on loopback, where there
    /// are no certificates and a batch's host id is taken as said.
    pub tls: bool,
    deny: DenyList,
    operators_file: Option<PathBuf>,
    operators: RwLock<Vec<Operator>>,
    /// Calls and messages refused for their identity (no, wrong, revoked or
    /// expired certificate; a host id that is not the certificate's).
    refused: AtomicU64,
}

/// What [`Trust::reload`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub operators: usize,
    pub revoked: usize,
}

impl Trust {
    pub fn new(
        tls: bool,
        deny: DenyList,
        operators: Vec<Operator>,
        operators_file: Option<PathBuf>,
    ) -> Self {
        Self {
            tls,
            deny,
            operators_file,
            operators: RwLock::new(operators),
            refused: AtomicU64::new(0),
        }
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn refuse(&self, status: Status) -> Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        warn!(code = ?status.code(), "refused: {}", status.message());
        status
    }

    /// Re-reads the operators file and the deny list. Each keeps its last
    /// good contents when its file does not parse; the first error is
    /// returned after both were tried.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let mut first_error = None;
        if let Some(path) = &self.operators_file {
            match auth::load_operators(path) {
                Ok(list) => {
                    *self
                        .operators
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = list;
                }
                Err(e) => first_error = Some(e.to_string()),
            }
        }
        if let Err(e) = self.deny.reload() {
            first_error.get_or_insert(e.to_string());
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(ReloadReport {
                operators: self
                    .operators
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
                revoked: self.deny.len(),
            }),
        }
    }

    /// Reloads the deny list when its file changed (polled every few
    /// seconds, so `pki revoke` takes effect without a signal).
    pub fn reload_deny_list_if_changed(&self) -> Result<bool, String> {
        self.deny.reload_if_changed().map_err(|e| e.to_string())
    }

    /// The operator allowed to do `action`, which needs `role`.
    pub fn operator(
        &self,
        metadata: &MetadataMap,
        role: Role,
        action: &str,
    ) -> Result<Operator, Status> {
        let operators = self
            .operators
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        auth::authorize(&operators, metadata, role, action)
    }

    /// The sensor certificate of a sensor RPC: required with TLS (`None`
    /// only in plaintext mode), of a sensor, not revoked.
    pub fn sensor<T>(&self, request: &Request<T>) -> Result<Option<PeerIdentity>, Status> {
        if !self.tls {
            return Ok(None);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            self.refuse(Status::unauthenticated(
                "a sensor must present its client certificate (mutual TLS)",
            ))
        })?;
        let der = certs.first().ok_or_else(|| {
            self.refuse(Status::unauthenticated("empty client certificate chain"))
        })?;
        let identity = PeerIdentity::from_der(der).map_err(|e| {
            self.refuse(Status::unauthenticated(format!("client certificate: {e}")))
        })?;
        if !matches!(identity.holder, Holder::Sensor { .. }) {
            return Err(self.refuse(Status::permission_denied(
                "this certificate is not a sensor's: it cannot publish or take commands",
            )));
        }
        self.still_valid(&identity)?;
        Ok(Some(identity))
    }

    /// Refuses a certificate revoked or expired since its stream opened.
    pub fn still_valid(&self, identity: &PeerIdentity) -> Result<(), Status> {
        if self.deny.is_revoked(&identity.serial) {
            return Err(self.refuse(Status::permission_denied(format!(
                "certificate {} is revoked",
                identity.serial
            ))));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now > identity.not_after_unix {
            return Err(self.refuse(Status::unauthenticated(format!(
                "certificate {} expired",
                identity.serial
            ))));
        }
        Ok(())
    }

    /// A message that names a host must name the certificate's.
    pub fn same_host(
        &self,
        identity: Option<&PeerIdentity>,
        claimed: &str,
        what: &str,
    ) -> Result<(), Status> {
        let Some(identity) = identity else {
            return Ok(());
        };
        self.still_valid(identity)?;
        match identity.host_id() {
            Some(host_id) if host_id == claimed => Ok(()),
            Some(host_id) => Err(self.refuse(Status::permission_denied(format!(
                "{what} claims host {claimed:?} but the certificate is host {host_id:?}'s"
            )))),
            None => Err(self.refuse(Status::permission_denied(format!(
                "{what} from a certificate that is not a sensor's"
            )))),
        }
    }
}
