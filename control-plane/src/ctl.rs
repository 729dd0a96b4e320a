//! straitctl subcommands: apply, delete, get, analyze, proxy-status.
