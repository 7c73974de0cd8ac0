//! Tests of the sim driver.
