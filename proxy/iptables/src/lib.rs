//! Transparent capture for the sidecar: Istio's nat rules as a typed value, applied atomically.
//!
//! `settings` validates the flags, `rules` builds the rule set from them (pure), `restore`
//! plans the iptables-restore transaction from the table as it is (pure), and `backend` runs
//! the system's `iptables` commands. `cli` is `strait-proxy iptables`.

pub mod backend;
pub mod cli;
pub mod restore;
pub mod rules;
pub mod settings;

pub use cli::{Args, Error, run};
pub use rules::{Family, RuleSet, build};
pub use settings::{Settings, SettingsError};
