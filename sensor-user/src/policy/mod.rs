//! Application allowlisting in userspace: read the policy file, hash what it
//! allows, and keep the kernel's verdict maps in sync. Userspace is never in
//! the path of an exec: the kernel decides from the maps alone.
//!
//! `file` parses and validates, `compile` resolves paths to file identities
//! and hashes, `kernel` swaps generations into the maps, `generate` writes a
//! starting policy from the installed system, `pins` keeps the link and
//! maps pinned so enforcement outlives the daemon.

pub mod compile;
pub mod file;
pub mod generate;
pub mod kernel;
pub mod manager;
pub mod pins;

pub use compile::{CompiledPolicy, compile};
pub use file::{Mode, PolicyError, PolicyFile};
pub use kernel::PolicyMaps;
