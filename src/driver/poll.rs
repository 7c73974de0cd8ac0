//! Placeholder: the `poll` driver is being written.
#![allow(dead_code, unused_variables)]

use super::*;

/// The `poll` driver.
#[derive(Debug)]
pub struct PollDriver;
