//! Listing the caller's disk snapshots (`GET /v1/devboxes/disk_snapshots`): paging, the
//! devbox filter and `metadata[...]` filters.

use super::*;
use crate::model::{DevboxSnapshotListView, DevboxSnapshotView};
use openloop_store::snapshots::{SnapshotFilter, SnapshotRecord};

/// Default and largest page of `GET /v1/devboxes/disk_snapshots` (Runloop's).
const DEFAULT_PAGE: u64 = 20;
const MAX_PAGE: u64 = 5000;

/// Runloop's `disk_snapshots.list` query. Metadata filters come as `metadata[<key>]=<value>`
/// (equal) and `metadata[<key>][in]=<v1>,<v2>` (one of), any number of each.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotListQuery {
    /// Only snapshots of this devbox.
    pub devbox_id: Option<String>,
    /// `true` (default) or `false`: whether to count every match (`total_count`).
    pub include_total_count: Option<String>,
    /// Page size, 1 to 5000 (default 20); a whole number (`10.0` is 10).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 1e9, multiple_of = 1)]
    pub limit: Option<crate::numbers::Number>,
    /// The last id of the previous page.
    pub starting_after: Option<String>,
    /// Snapshots hold their blueprint's files and depend on none: any value matches no snapshot.
    pub source_blueprint_id: Option<String>,
}

/// One `metadata[...]` filter of a list query.
#[derive(Debug, PartialEq)]
enum MetadataFilter {
    Equals(String, String),
    OneOf(String, Vec<String>),
}

impl MetadataFilter {
    fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        match self {
            MetadataFilter::Equals(k, v) => metadata.get(k) == Some(v),
            MetadataFilter::OneOf(k, vs) => metadata.get(k).is_some_and(|v| vs.contains(v)),
        }
    }
}

/// The `metadata[...]` filters of a raw query string.
fn metadata_filters(raw: Option<&str>) -> ApiResult<Vec<MetadataFilter>> {
    let mut filters = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let Some(rest) = name.strip_prefix("metadata[") else {
            continue;
        };
        let bad = || {
            ApiError::BadRequest(format!(
                "query parameter `{name}`: metadata filters are `metadata[<key>]=<value>` or `metadata[<key>][in]=<v1>,<v2>`"
            ))
        };
        let (key, tail) = rest.split_once(']').ok_or_else(bad)?;
        if key.is_empty() {
            return Err(bad());
        }
        match tail {
            "" => filters.push(MetadataFilter::Equals(key.to_string(), value.into_owned())),
            "[in]" => filters.push(MetadataFilter::OneOf(
                key.to_string(),
                value.split(',').map(str::to_string).collect(),
            )),
            _ => return Err(bad()),
        }
    }
    Ok(filters)
}

fn metadata_of(r: &SnapshotRecord) -> BTreeMap<String, String> {
    serde_json::from_str(&r.metadata).unwrap_or_default()
}

impl Devboxes {
    /// `GET /v1/devboxes/disk_snapshots`: the caller's snapshots, newest first.
    pub async fn list_snapshots(
        &self,
        principal: &Principal,
        q: &SnapshotListQuery,
        raw_query: Option<&str>,
    ) -> ApiResult<DevboxSnapshotListView> {
        let owner = owner_tag(principal);
        let limit = crate::numbers::whole("limit", q.limit.as_ref(), 0..=1_000_000_000)?
            .unwrap_or(DEFAULT_PAGE)
            .clamp(1, MAX_PAGE) as usize;
        let include_total = match q.include_total_count.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "`include_total_count` must be true or false, not {other}"
                )))
            }
        };
        let filters = metadata_filters(raw_query)?;
        if q.source_blueprint_id
            .as_deref()
            .is_some_and(|b| !b.is_empty())
        {
            return Ok(DevboxSnapshotListView {
                snapshots: Vec::new(),
                has_more: false,
                total_count: include_total.then_some(0),
            });
        }
        let devbox_id = q.devbox_id.as_deref().filter(|d| !d.is_empty());
        let (page, has_more, total) = if filters.is_empty() {
            let mut rows = self
                .store
                .list_snapshots(
                    &owner,
                    &SnapshotFilter {
                        devbox_id,
                        starting_after: q.starting_after.as_deref(),
                    },
                    limit as i64 + 1,
                )
                .await?;
            let has_more = rows.len() > limit;
            rows.truncate(limit);
            let total = match include_total {
                true => Some(self.store.count_snapshots(&owner, devbox_id).await?),
                false => None,
            };
            (rows, has_more, total)
        } else {
            // Metadata is a JSON document per snapshot: matched here, over the caller's
            // snapshots (of the devbox, when given), all of them for the total count.
            let all = self
                .store
                .list_snapshots(
                    &owner,
                    &SnapshotFilter {
                        devbox_id,
                        starting_after: None,
                    },
                    i64::MAX,
                )
                .await?;
            let matching: Vec<SnapshotRecord> = all
                .into_iter()
                .filter(|r| {
                    let m = metadata_of(r);
                    filters.iter().all(|f| f.matches(&m))
                })
                .collect();
            let total = include_total.then_some(matching.len() as i64);
            let mut rows: Vec<SnapshotRecord> = matching
                .into_iter()
                .filter(|r| {
                    q.starting_after
                        .as_deref()
                        .is_none_or(|after| r.id.as_str() < after)
                })
                .take(limit + 1)
                .collect();
            let has_more = rows.len() > limit;
            rows.truncate(limit);
            (rows, has_more, total)
        };
        Ok(DevboxSnapshotListView {
            snapshots: page
                .iter()
                .map(DevboxSnapshotView::of)
                .collect::<ApiResult<_>>()?,
            has_more,
            total_count: total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_parse() {
        let f = metadata_filters(Some(
            "limit=5&metadata%5Bteam%5D=a&metadata[env][in]=dev,prod&devbox_id=x",
        ))
        .unwrap();
        assert_eq!(
            f,
            vec![
                MetadataFilter::Equals("team".into(), "a".into()),
                MetadataFilter::OneOf("env".into(), vec!["dev".into(), "prod".into()]),
            ]
        );
        let m = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            ("env".to_string(), "prod".to_string()),
        ]);
        assert!(f.iter().all(|x| x.matches(&m)));
        let other = BTreeMap::from([("team".to_string(), "b".to_string())]);
        assert!(!f[0].matches(&other));
        assert!(metadata_filters(Some("metadata[]=x")).is_err());
        assert!(metadata_filters(Some("metadata[k][nope]=x")).is_err());
        assert!(metadata_filters(Some("metadata[k=x")).is_err());
    }
}
