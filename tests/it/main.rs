//! The one integration-test binary. Each module drives the built `bootplan`
//! binary against real processes and, where needed, real peers (OpenBao,
//! moto, etcd, Prometheus) started on loopback by its own module.

mod harness;

mod cloudinit;
mod core;
mod crash;
mod docs;
mod download;
mod facts;
mod fleet;
mod import;
mod invalid_plans;
mod lifecycle;
mod observability;
mod os;
mod platform;
mod process;
mod robust;
mod rotation;
mod secrets;
mod security;
mod userdata;
