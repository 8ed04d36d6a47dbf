//! Devbox files: write, read and delete contents, upload and download.

use super::*;

/// A text file to write.
#[derive(Deserialize, ToSchema)]
pub struct WriteBody {
    /// Where in the devbox (relative paths are from the home directory).
    #[schema(min_length = 1)]
    file_path: String,
    contents: String,
}

/// The answer of a file write or delete: Runloop's execution detail with exit status 0.
fn file_done(id: String) -> ExecutionResult {
    ExecutionResult {
        devbox_id: id,
        exit_status: Some(0),
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// Write a text file.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/write_file_contents",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = WriteBody,
    responses((status = 200, description = "Written", body = ExecutionResult)),
)]
pub async fn write_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<WriteBody>,
) -> ApiResult<Json<ExecutionResult>> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let written = devbox
        .write_file(&body.file_path, body.contents.as_bytes())
        .await;
    state.devboxes.op(&id, written).await?;
    Ok(Json(file_done(id)))
}

/// A file in the devbox.
#[derive(Deserialize, ToSchema)]
pub struct PathBody {
    /// The file's path (`path` is accepted too).
    #[serde(alias = "path")]
    #[schema(min_length = 1)]
    file_path: String,
}

/// Read a text file.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/read_file_contents",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = PathBody,
    responses((status = 200, description = "The file's text (UTF-8)", body = String, content_type = "text/plain")),
)]
pub async fn read_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<String> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let read = devbox.read_file(&body.file_path, MAX_READ).await;
    let bytes = state.devboxes.op(&id, read).await?;
    String::from_utf8(bytes).map_err(|_| {
        ApiError::BadRequest(format!(
            "{} is not UTF-8 text; use download_file for binary files",
            body.file_path
        ))
    })
}

/// Delete a file.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/delete_file",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = PathBody,
    responses((status = 200, description = "Deleted", body = ExecutionResult)),
)]
pub async fn delete_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<Json<ExecutionResult>> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let deleted = devbox.delete_file(&body.file_path).await;
    state.devboxes.op(&id, deleted).await?;
    Ok(Json(file_done(id)))
}

/// Upload a file (multipart: a `path` field, then a `file` part), streamed into the devbox.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/upload_file",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "Uploaded", body = Empty)),
)]
pub async fn upload_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Json<Empty>> {
    let mut form = form.map_err(|e| {
        ApiError::BadRequest(format!(
            "send the upload as multipart/form-data: {}",
            e.body_text()
        ))
    })?;
    let devbox = state.devboxes.running(&id, &principal).await?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the upload is over the size limit".into())
        } else {
            ApiError::BadRequest(format!("malformed multipart upload: {}", e.body_text()))
        }
    };
    let mut path: Option<String> = None;
    let mut written = false;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("path") => path = Some(field.text().await.map_err(bad)?),
            Some("file") => {
                let Some(p) = path.clone() else {
                    return Err(ApiError::BadRequest(
                        "send the `path` field before the `file` part".into(),
                    ));
                };
                let opened = devbox.upload(&p).await;
                let mut writer = state.devboxes.op(&id, opened).await?;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    let sent = writer.send(&chunk).await;
                    state.devboxes.op(&id, sent).await?;
                }
                let finished = writer.finish().await;
                state.devboxes.op(&id, finished).await?;
                written = true;
            }
            _ => {}
        }
    }
    if !written {
        return Err(ApiError::BadRequest(
            "the upload needs a `path` field and a `file` part".into(),
        ));
    }
    Ok(Json(Empty {}))
}

/// Download a file's bytes, streamed.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/download_file",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = PathBody,
    responses((status = 200, description = "The file's bytes", body = Vec<u8>, content_type = "application/octet-stream")),
)]
pub async fn download_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<Response> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let opened = devbox.download(&body.file_path).await;
    let mut reader = state.devboxes.op(&id, opened).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    tokio::spawn(async move {
        loop {
            match reader.next().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}
