//! Protobuf schema of rxsentry and the generated prost/tonic code.
//!
//! Compatibility rules for every `.proto` here:
//! - a field number is never reused or renumbered; a removed field becomes
//!   `reserved` (number and name);
//! - new event kinds are new members of `Event.kind` with new numbers;
//! - enum value 0 is always `*_UNSPECIFIED` and never means anything;
//! - a breaking change is a new package version (`v2`), served side by side.

/// `rxsentry.telemetry.v1`: sensor -> collector -> subscriber telemetry.
pub mod telemetry {
    // Generated code: its enum layout follows the schema, not clippy.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("rxsentry.telemetry.v1");
    }
}

impl telemetry::v1::Event {
    /// When the event happened, UTC ns since the Unix epoch: its boot time
    /// plus its boot-relative stamp; None when the sensor did not know.
    pub fn wall_time_unix_ns(&self) -> Option<u64> {
        (self.boot_time_unix_ns != 0 && self.timestamp_ns != 0)
            .then(|| self.boot_time_unix_ns.saturating_add(self.timestamp_ns))
    }
}

/// `rxsentry.control.v1`: collector -> sensor commands (isolate, release)
/// and the operator-authenticated analyst API.
pub mod control {
    pub mod v1 {
        tonic::include_proto!("rxsentry.control.v1");
    }
}
