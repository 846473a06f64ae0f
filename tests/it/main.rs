//! The integration tests, in one binary so a change links once (as ripgrep's
//! tests do): one module per area, sharing `support`. Tests in every module
//! run in parallel in this one process, sharing its log capture: a test that
//! reads the logs looks only at lines about its own client address, file or
//! canary, and tests that change what the process shares (a signal to itself,
//! the environment) must not.

// A test binary has no surface: `pub` in `support` is for its sibling modules,
// which is all `unreachable_pub` would have it say.
#![allow(unreachable_pub)]

mod support;

mod access;
mod appliance;
mod binary;
mod budget;
mod deploy;
mod devices;
mod docs;
mod faults;
mod gateway;
mod hostile;
mod household;
mod mqtt;
mod positive;
mod refusals;
mod release;
mod reload;
mod setup;
mod untrusted;
