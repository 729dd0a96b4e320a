//! End-to-end scenarios: real straitd, a real data plane (stock Envoy by default, chosen by
//! `STRAIT_DATA_PLANE`), real HTTP backends, all on 127.0.0.1. Every scenario ends by checking
//! that no proxy NACKed anything, except the one that provokes a NACK on purpose.

mod access_logs;
mod capture;
mod common;
mod config_changes;
mod continuity;
mod cors;
mod discovery;
mod gateway;
mod gateway_security;
mod jwt;
mod kube_ingress;
mod kube_tokens;
mod kubernetes;
mod limits;
mod mtls;
mod proxy_config;
mod rate_limits;
mod resilience;
mod samples;
mod scoping;
mod tcp_routes;
