//! Integration tests against the real local control plane and real Redis.
//!
//! Run them with `make test` (starts the cluster when needed), or after `make cluster-up` with
//! `source .cluster/env && cargo test --test it`.

mod support;

mod chart_install;
mod chart_rbac;
mod chart_rules;
mod chart_static;
mod cli_plugin;
mod client_read_model;
mod client_role;
mod cluster_smoke;
mod conformance;
mod crd_apply;
mod explain;
mod image_oci;
mod kubectl_experience;
mod kubectl_make_run;
mod observe_prometheus;
mod operator_cli;
mod operator_conflict;
mod operator_core;
mod operator_crd;
mod operator_direct;
mod operator_ha;
mod operator_redis_cluster;
mod operator_redis_outage;
mod operator_transport;
mod real_node_cluster;
mod real_node_game;
mod real_node_helm;
mod reliability_api_outage;
mod reliability_bad_input;
mod reliability_data_loss;
mod reliability_failover;
mod reliability_links;
mod reliability_persistence;
mod reliability_redis_failover;
mod reliability_redis_outage;
mod reliability_restart;
mod reliability_security;
mod server_driver;
mod server_reassert;
mod store_acl;
mod store_ha;
mod store_links;
mod store_publish;
mod store_states;
