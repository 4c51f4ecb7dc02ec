//! Fleets: rotate, check and report many AKS clusters in waves, each cluster's run an ordinary
//! kmsctl run with the same proofs. `select` finds the clusters (Resource Graph), `waves` orders
//! and cuts them (and splits them between processes), `journal` records the rollout so
//! `fleet resume` continues it, `rollout` runs it.

pub mod journal;
pub mod rollout;
pub mod select;
pub mod waves;
