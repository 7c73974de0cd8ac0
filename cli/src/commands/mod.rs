//! The commands: `race`, `echo` and `bench`.

pub mod bench;
pub mod echo;
pub mod race;
