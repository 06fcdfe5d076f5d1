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

/// `rxsentry.control.v1`: collector -> sensor commands (isolate, release)
/// and the operator-authenticated analyst API.
pub mod control {
    pub mod v1 {
        tonic::include_proto!("rxsentry.control.v1");
    }
}
