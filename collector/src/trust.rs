//! Who is calling. Sensors are known by the client certificate the TLS
//! layer verified (host id from the certificate, never from a message),
//! checked against the deny list at stream open and at every message, so a
//! revocation also cuts streams that are already open. Analysts are known
//! by their operator token and role. Both lists reload while the collector
//! runs; a file that does not parse keeps the last good list in force.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use pki::{DenyList, Holder, PeerIdentity};
use tonic::{Request, Status, metadata::MetadataMap};
use tracing::warn;

use crate::auth::{self, Operator, Role};
use crate::tls_listener::ReloadingTls;

/// Trust settings and their reloadable state.
#[derive(Debug)]
pub struct Trust {
    /// False only in the explicit plaintext mode on loopback, where there
    /// are no certificates and a batch's host id is taken as said.
    pub tls: bool,
    /// The collector's own certificate, reloaded with the rest.
    server_tls: Option<Arc<ReloadingTls>>,
    deny: DenyList,
    operators_file: Option<PathBuf>,
    operators: RwLock<Vec<Operator>>,
    /// Held while an API call rewrites the operators file, so two admins'
    /// edits cannot interleave (each reads the file it replaces).
    editing: Mutex<()>,
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
    /// `server_tls`: `None` only in the plaintext mode on loopback.
    pub fn new(
        server_tls: Option<Arc<ReloadingTls>>,
        deny: DenyList,
        operators: Vec<Operator>,
        operators_file: Option<PathBuf>,
    ) -> Self {
        Self {
            tls: server_tls.is_some(),
            server_tls,
            deny,
            operators_file,
            operators: RwLock::new(operators),
            editing: Mutex::new(()),
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
        if let Some(tls) = &self.server_tls
            && let Err(e) = tls.reload()
        {
            first_error.get_or_insert(format!(
                "collector certificate not reloaded, the one in force stays: {e}"
            ));
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

    /// Reloads the collector's certificate when its files changed (polled
    /// with the deny list, so a renewal is in force without a signal).
    pub fn reload_server_tls_if_changed(&self) -> Result<bool, String> {
        match &self.server_tls {
            Some(tls) => tls.reload_if_changed().map_err(|e| e.to_string()),
            None => Ok(false),
        }
    }

    pub fn server_tls(&self) -> Option<Arc<ReloadingTls>> {
        self.server_tls.clone()
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

    /// Whether `op` (as authorized when its call started) still holds
    /// `role` with the same token: an open subscription ends when not.
    pub fn still_in_force(&self, op: &Operator, role: Role) -> bool {
        self.operators
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|o| o.name == op.name && o.token_sha256 == op.token_sha256 && o.role >= role)
    }

    /// The operators in force: (name, role), no secrets.
    pub fn operator_list(&self) -> Vec<(String, Role)> {
        self.operators
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|o| (o.name.clone(), o.role))
            .collect()
    }

    /// Adds an operator to the operators file and puts it in force; the new
    /// token, which exists nowhere else (the file keeps its salted hash).
    pub fn add_operator(&self, name: &str, role: Role) -> Result<String, OperatorChangeError> {
        let token = auth::new_token();
        let added = Operator::with_token(name, role, &token);
        self.edit_operators(|list| {
            if !auth::printable_name(name) || name.len() > 64 {
                return Err(OperatorChangeError::Invalid(
                    "an operator name must be 1-64 printable characters".into(),
                ));
            }
            if list.iter().any(|o| o.name == name) {
                return Err(OperatorChangeError::Exists(name.to_owned()));
            }
            list.push(added);
            Ok(())
        })?;
        Ok(token)
    }

    /// Removes an operator from the file and from force at once. The last
    /// admin cannot be removed: nobody could manage operators afterwards
    /// but root on the collector host.
    pub fn remove_operator(&self, name: &str) -> Result<Role, OperatorChangeError> {
        let mut removed = None;
        self.edit_operators(|list| {
            let at = list
                .iter()
                .position(|o| o.name == name)
                .ok_or_else(|| OperatorChangeError::Unknown(name.to_owned()))?;
            let admins = list.iter().filter(|o| o.role == Role::Admin).count();
            if list[at].role == Role::Admin && admins == 1 {
                return Err(OperatorChangeError::LastAdmin(name.to_owned()));
            }
            removed = Some(list.remove(at).role);
            Ok(())
        })?;
        removed.ok_or_else(|| OperatorChangeError::Unknown(name.to_owned()))
    }

    /// Reads the operators file (not the list in memory: an edit made on
    /// the host since the last reload is kept), applies `change`, writes
    /// the file back atomically (0600) and puts the result in force.
    fn edit_operators(
        &self,
        change: impl FnOnce(&mut Vec<Operator>) -> Result<(), OperatorChangeError>,
    ) -> Result<(), OperatorChangeError> {
        let _editing = self.editing.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self
            .operators_file
            .as_ref()
            .ok_or(OperatorChangeError::NoFile)?;
        let mut list =
            auth::load_operators(path).map_err(|e| OperatorChangeError::File(e.to_string()))?;
        change(&mut list)?;
        let text: String = std::iter::once(auth::OPERATORS_HEADER.to_owned())
            .chain(list.iter().map(Operator::to_toml))
            .collect::<Vec<_>>()
            .join("\n");
        pki::files::write_secret(path, text.as_bytes())
            .map_err(|e| OperatorChangeError::File(e.to_string()))?;
        *self
            .operators
            .write()
            .unwrap_or_else(PoisonError::into_inner) = list;
        Ok(())
    }
}

/// Why an operator could not be added or removed; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorChangeError {
    #[error(
        "this collector's operators come from its configuration, not an operators file: change them there"
    )]
    NoFile,
    #[error("operators file: {0}")]
    File(String),
    #[error("{0}")]
    Invalid(String),
    #[error("operator {0:?} already exists")]
    Exists(String),
    #[error("no operator {0:?}")]
    Unknown(String),
    #[error("{0:?} is the last admin: add another admin first")]
    LastAdmin(String),
}

impl From<OperatorChangeError> for Status {
    fn from(e: OperatorChangeError) -> Self {
        match e {
            OperatorChangeError::NoFile | OperatorChangeError::LastAdmin(_) => {
                Status::failed_precondition(e.to_string())
            }
            OperatorChangeError::File(_) => Status::internal(e.to_string()),
            OperatorChangeError::Invalid(_) => Status::invalid_argument(e.to_string()),
            OperatorChangeError::Exists(_) => Status::already_exists(e.to_string()),
            OperatorChangeError::Unknown(_) => Status::not_found(e.to_string()),
        }
    }
}
