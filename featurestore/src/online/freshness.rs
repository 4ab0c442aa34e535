//! How fresh a replica's online store is: per online view, the applied version it
//! serves, the Delta versions and event-time bound it holds, and the lag behind now.
//! `quiver serve` reports it in the `health` action, on `/healthz?max_lag_seconds=N`
//! (503 when behind, for load balancers) and as gauges on `/metrics`.
//!
//! A view is *behind* when it is not materialized at all, when the store holds an
//! older applied version than the registry's, or when its event-time bound is more
//! than the allowed lag behind now. The lag is measured on the watermark alone, so a
//! probe costs no read of the Delta tables.

use serde::Serialize;

use super::{OnlineFeatures, TableMark};
use crate::Result;
use crate::store::AppliedView;

/// One online view's freshness.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewFreshness {
    /// The view.
    pub view: String,
    /// The applied version the registry holds.
    pub applied_version: u64,
    /// The applied version the online store serves (`None`: never materialized).
    pub served_version: Option<u64>,
    /// Event-time bound of what is materialized (RFC 3339).
    pub until: Option<String>,
    /// When the last run committed (RFC 3339).
    pub materialized_at: Option<String>,
    /// Seconds between now and `until` (`None`: never materialized).
    pub lag_seconds: Option<f64>,
    /// Source tables at the Delta versions held.
    pub tables: Vec<TableMark>,
    /// Whether the view is behind (see the module docs).
    pub behind: bool,
}

/// Every online view's freshness, and the verdict against a lag bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Freshness {
    /// `ok` or `behind`.
    pub status: &'static str,
    /// The bound used (`None`: only unmaterialized or outdated views are behind).
    pub max_lag_seconds: Option<f64>,
    /// Online views, by name.
    pub views: Vec<ViewFreshness>,
}

impl Freshness {
    /// Whether every online view is within the bound.
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The freshness of `online` against `applied` (the applied views to judge, e.g. those
/// a tenant may read; views that are not online are passed over), at `now_us`.
pub fn freshness(
    applied: impl IntoIterator<Item = AppliedView>,
    online: &OnlineFeatures,
    now_us: i64,
    max_lag_seconds: Option<f64>,
) -> Result<Freshness> {
    let mut views = Vec::new();
    for v in applied {
        if !v.definition.view.online {
            continue;
        }
        let name = v.definition.name().to_owned();
        let wm = online.store().watermark(&name)?;
        let lag = wm
            .as_ref()
            .map(|w| (now_us.saturating_sub(w.until_us)) as f64 / 1e6);
        let behind = match &wm {
            None => true,
            Some(w) => {
                w.view_version < v.version
                    || max_lag_seconds.is_some_and(|max| lag.unwrap_or(f64::INFINITY) > max)
            }
        };
        views.push(ViewFreshness {
            applied_version: v.version,
            served_version: wm.as_ref().map(|w| w.view_version),
            until: wm.as_ref().map(|w| crate::cli::format_time(w.until_us)),
            materialized_at: wm.as_ref().map(|w| w.materialized_at.clone()),
            lag_seconds: lag,
            tables: wm.map(|w| w.tables).unwrap_or_default(),
            behind,
            view: name,
        });
    }
    views.sort_by(|a, b| a.view.cmp(&b.view));
    Ok(Freshness {
        status: if views.iter().any(|v| v.behind) {
            "behind"
        } else {
            "ok"
        },
        max_lag_seconds,
        views,
    })
}
