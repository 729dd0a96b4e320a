//! straitd: the control-plane daemon.
fn main() {}
