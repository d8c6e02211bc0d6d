//! The examples of `resource-runtime`, each a program of its own; run one from the
//! workspace root with `cargo run --example NAME`:
//!
//! - `quickstart`: the main job, a provider over an `Endpoint`, a `RateLimitedExecutor`
//!   and a log file against an embedded API, with a close report;
//! - `graceful_shutdown`: a service holding several resources, closed in order on
//!   Ctrl-C (`-- --until-ctrl-c`), then `wait_detached`;
//! - `sdk_provider`: a vendor SDK's client wrapped as a resource beside an `Endpoint`;
//! - `dynamic_stack`: a set of resources known only at run time, in a `ResourceStack`;
//! - `fleet`: N processes (`--processes 4`) calling an embedded API through endpoints
//!   that share one rate limit in Redis, starting a redis-server of its own unless
//!   given `--redis URL`: each process's share, the fleet's rate against the
//!   configured one, the fleet-wide pause after a `429`, and each process's close
//!   report.
//!
//! `quickstart` and `fleet` call the same embedded API, `embedded_api.rs`, a module of
//! each.
