//! The fleet benchmark: workloads × policies in virtual time, with the real module making
//! every decision of the module policies (`fleet-bench`, `./build.sh bench`).

pub mod policy;
pub mod report;
pub mod run;
pub mod workload;

pub use policy::Policy;
pub use run::{run, sweep, Balancer, RunResult};
pub use workload::{Arrival, Workload};
