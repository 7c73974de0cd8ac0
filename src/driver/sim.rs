//! Placeholder: the `sim` driver is being written.
#![allow(dead_code, unused_variables)]

use super::*;

/// The `sim` driver.
#[derive(Debug)]
pub struct SimDriver;

/// Knobs of the simulated network and scheduler.
#[derive(Clone, Debug, Default)]
pub struct SimConfig {
    /// Seed of every scheduling decision.
    pub seed: u64,
}
