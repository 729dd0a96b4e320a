//! Reaching a cluster's endpoints: balancing with outlier ejection, circuit breakers, and
//! HTTP connection pools.

pub mod balance;
pub mod breaker;
pub mod pool;
