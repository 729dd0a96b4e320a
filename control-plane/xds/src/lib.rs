//! Versioned xDS snapshots and the ADS server that serves them; knows nothing of how snapshots are made.
