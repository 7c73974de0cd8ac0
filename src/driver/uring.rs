//! Placeholder: the `uring` driver is being written.
#![allow(dead_code, unused_variables)]

use super::*;

/// The `uring` driver.
#[derive(Debug)]
pub struct UringDriver;
