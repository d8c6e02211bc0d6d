//! The examples of `resource-runtime`, each a program of its own; run one from the
//! workspace root with `cargo run --example NAME`:
//!
//! - `quickstart`: the main job, a provider over an `Endpoint`, a `RateLimitedExecutor`
//!   and a log file against an embedded API, with a close report;
//! - `graceful_shutdown`: a service holding several resources, closed in order on
//!   Ctrl-C (`-- --until-ctrl-c`), then `wait_detached`;
//! - `sdk_provider`: a vendor SDK's client wrapped as a resource beside an `Endpoint`;
//! - `dynamic_stack`: a set of resources known only at run time, in a `ResourceStack`;
//! - `fleet`: N processes sharing one rate limit through Redis (`--processes 4`),
//!   starting a redis-server of its own unless given `--redis URL`.
