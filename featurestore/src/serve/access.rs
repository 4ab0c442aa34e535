//! Who may read which view: access is decided by a view's **current** definition
//! (`owner`, `shared_with`), whatever version a request pins, and a tenant learns
//! nothing about views it may not read. Applied views are decoded once per apply.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Status;

use super::auth::Tenant;
use super::service::FeatureService;
use crate::Error;
use crate::store::AppliedView;

impl FeatureService {
    /// The applied view, if `tenant` may read it. A tenant that is not an admin learns
    /// nothing about views it may not read: a missing or removed view and one it may not
    /// read get messages that name no owner, version or other view.
    pub(super) fn readable(&self, tenant: &Tenant, view: &str) -> Result<Arc<AppliedView>, Status> {
        let v = match self.applied(view) {
            Ok(v) => v,
            Err(s) if !tenant.admin && s.code() == tonic::Code::NotFound => {
                return Err(Status::not_found(format!(
                    "no view `{view}` that tenant `{}` may read; `list` shows the ones it may",
                    tenant.name
                )));
            }
            Err(s) => return Err(s),
        };
        self.check_read(tenant, &v)?;
        Ok(v)
    }

    /// The view at `version` (the current one for `None`), if `tenant` may read it.
    /// Access is always decided by the **current** definition, whatever version is
    /// pinned: a tenant removed from `shared_with` (or from a view that was removed)
    /// cannot read any version of it any more; a removed view is readable by admins
    /// only.
    pub(super) fn readable_at(
        &self,
        tenant: &Tenant,
        view: &str,
        version: Option<u64>,
    ) -> Result<Arc<AppliedView>, Status> {
        if !tenant.admin {
            self.readable(tenant, view)?;
        }
        match version {
            None => self.applied(view),
            Some(v) => Ok(Arc::new(self.shared.store.view(view, Some(v))?)),
        }
    }

    /// The applied version of `view`, decoded once per apply: the registry's apply id
    /// (one small read) tells whether the cached decoding is still current.
    fn applied(&self, view: &str) -> Result<Arc<AppliedView>, Status> {
        let apply_id = self
            .shared
            .store
            .registry()
            .last_apply_id()
            .map_err(Error::from)?;
        {
            let cache = self.shared.views.read().expect("view cache lock");
            if cache.0 == apply_id
                && let Some(v) = cache.1.get(view)
            {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(self.shared.store.view(view, None)?);
        let mut cache = self.shared.views.write().expect("view cache lock");
        if cache.0 != apply_id {
            *cache = (apply_id, HashMap::new());
        }
        cache.1.insert(view.to_owned(), v.clone());
        Ok(v)
    }

    fn check_read(&self, tenant: &Tenant, v: &AppliedView) -> Result<(), Status> {
        if tenant.admin || v.definition.view.readable_by(&tenant.name) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "tenant `{}` may not read view `{}`; ask its owner to add you to `shared_with`",
                tenant.name,
                v.definition.name(),
            )))
        }
    }
}
