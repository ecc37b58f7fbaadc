//! What keel-torture's harnesses share with tests outside the binary: the
//! linearizability checker, also run on the in-process simulated cluster's
//! histories (`tests/sim_cluster`).

#![warn(missing_docs)]

pub mod linearizability;
