//! Exists so `sensor-user` can name this crate as a build dependency (cargo
//! then rebuilds the daemon when the programs change). The programs are the
//! `sensor-ebpf` binary, built for bpfel-unknown-none.
#![no_std]
