//! The integration tests, in one binary so a change links once (as ripgrep's
//! tests do): one module per area, sharing `support`. Tests in every module
//! run in parallel in this one process, sharing its log capture: a test that
//! reads the logs looks only at lines about its own client address, file or
//! canary, and tests that change what the process shares (a signal to itself,
//! the environment) must not.

mod support;

mod access;
mod appliance;
mod binary;
mod budget;
mod deploy;
mod faults;
mod gateway;
mod hostile;
mod household;
mod positive;
mod refusals;
mod reload;
mod untrusted;
