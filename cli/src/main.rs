//! The dvd command.
fn main() {}
