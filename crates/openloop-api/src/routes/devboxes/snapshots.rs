//! Disk snapshots of devboxes (`/v1/devboxes/{id}/snapshot_disk*`,
//! `/v1/devboxes/disk_snapshots`).

use super::*;
use crate::model::{DevboxSnapshotAsyncStatusView, DevboxSnapshotListView, DevboxSnapshotView};
use crate::services::devboxes::{SnapshotListQuery, SnapshotRequest};
use axum::extract::RawQuery;

/// Snapshot a running (briefly paused for the copy) or suspended devbox's disk; answers once
/// the snapshot is complete.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/snapshot_disk",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body(content = Option<SnapshotRequest>, description = "An empty body is all defaults"),
    responses(
        (status = 200, description = "The snapshot, complete", body = DevboxSnapshotView),
        (status = 409, description = "The devbox is neither running nor suspended", body = ErrorBody),
    ),
)]
pub async fn snapshot_disk(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<Json<DevboxSnapshotView>> {
    let req: SnapshotRequest = parse_body(&body)?;
    Ok(Json(
        state
            .devboxes
            .snapshot_disk(&id, &principal, req, true)
            .await?,
    ))
}

/// Start a snapshot of a devbox's disk and answer at once; follow it with
/// `GET /v1/devboxes/disk_snapshots/{id}/status`.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/snapshot_disk_async",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body(content = Option<SnapshotRequest>, description = "An empty body is all defaults"),
    responses(
        (status = 200, description = "The snapshot, being taken", body = DevboxSnapshotView),
        (status = 409, description = "The devbox is neither running nor suspended", body = ErrorBody),
    ),
)]
pub async fn snapshot_disk_async(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<Json<DevboxSnapshotView>> {
    let req: SnapshotRequest = parse_body(&body)?;
    Ok(Json(
        state
            .devboxes
            .snapshot_disk(&id, &principal, req, false)
            .await?,
    ))
}

/// The caller's disk snapshots, newest first; `metadata[<key>]=<value>` and
/// `metadata[<key>][in]=<v1>,<v2>` filter by metadata.
#[utoipa::path(
    get,
    path = "/v1/devboxes/disk_snapshots",
    tag = "devboxes",
    params(SnapshotListQuery),
    responses((status = 200, description = "A page of snapshots", body = DevboxSnapshotListView)),
)]
pub async fn list_disk_snapshots(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<SnapshotListQuery>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DevboxSnapshotListView>> {
    Ok(Json(
        state
            .devboxes
            .list_snapshots(&principal, &q, raw.as_deref())
            .await?,
    ))
}

/// Replace a snapshot's name, commit message or metadata (fields left out stay).
#[utoipa::path(
    post,
    path = "/v1/devboxes/disk_snapshots/{id}",
    tag = "devboxes",
    params(("id" = String, Path, description = "The snapshot's id")),
    request_body(content = Option<SnapshotRequest>, description = "An empty body changes nothing"),
    responses((status = 200, description = "The snapshot", body = DevboxSnapshotView)),
)]
pub async fn update_disk_snapshot(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<Json<DevboxSnapshotView>> {
    let req: SnapshotRequest = parse_body(&body)?;
    Ok(Json(
        state.devboxes.update_snapshot(&id, &principal, req).await?,
    ))
}

/// Delete a snapshot and its files; refused (409) while devboxes started from it are
/// running or suspended.
#[utoipa::path(
    post,
    path = "/v1/devboxes/disk_snapshots/{id}/delete",
    tag = "devboxes",
    params(("id" = String, Path, description = "The snapshot's id")),
    responses(
        (status = 200, description = "Deleted", body = Empty),
        (status = 409, description = "Devboxes use it, or it is still being taken", body = ErrorBody),
    ),
)]
pub async fn delete_disk_snapshot(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Empty>> {
    state.devboxes.delete_snapshot(&id, &principal).await?;
    Ok(Json(Empty {}))
}

/// Where a snapshot is: `in_progress`, `complete` (with the snapshot), `error` (with why) or
/// `deleted`.
#[utoipa::path(
    get,
    path = "/v1/devboxes/disk_snapshots/{id}/status",
    tag = "devboxes",
    params(("id" = String, Path, description = "The snapshot's id")),
    responses((status = 200, description = "The snapshot's status", body = DevboxSnapshotAsyncStatusView)),
)]
pub async fn disk_snapshot_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DevboxSnapshotAsyncStatusView>> {
    Ok(Json(state.devboxes.snapshot_status(&id, &principal).await?))
}
