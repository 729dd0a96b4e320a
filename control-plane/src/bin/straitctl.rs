//! straitctl: the command-line client.
fn main() {}
