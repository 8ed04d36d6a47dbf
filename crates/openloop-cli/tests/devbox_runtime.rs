//! Devbox tunnels, the standard input of executions and resource usage, driven by Runloop's
//! own Python client (`runloop_api_client` from PyPI, pinned in
//! `common::RUNLOOP_CLIENT_VERSION`).

mod common;

use common::{Db, Server};

#[tokio::test]
async fn tunnels_reach_ports_inside_devboxes() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    common::run_client_check(
        &server,
        "runloop_tunnel_check.py",
        &[],
        "tunnel check passed",
    )
    .await;
}

#[tokio::test]
async fn tunnels_on_postgres() {
    let Some(server) = Server::start(Db::Postgres).await else {
        return;
    };
    common::run_client_check(
        &server,
        "runloop_tunnel_check.py",
        &[],
        "tunnel check passed",
    )
    .await;
}

#[tokio::test]
async fn stdin_and_resource_usage() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    common::run_client_check(
        &server,
        "runloop_stdin_usage_check.py",
        &[],
        "stdin and usage check passed",
    )
    .await;
}

#[tokio::test]
async fn stdin_and_resource_usage_on_postgres() {
    let Some(server) = Server::start(Db::Postgres).await else {
        return;
    };
    common::run_client_check(
        &server,
        "runloop_stdin_usage_check.py",
        &[],
        "stdin and usage check passed",
    )
    .await;
}
