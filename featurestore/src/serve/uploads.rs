//! Entity tables uploaded with `DoPut`, held in memory for the training sets that name
//! them. Bounded per tenant in count and bytes: a tenant's own oldest uploads make
//! room, never another tenant's, so memory is bounded by the limits times the number
//! of tenants (tokens are configured, so that is finite).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use arrow::array::RecordBatch;

use crate::Limits;

struct Upload {
    tenant: String,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

/// The uploads of every tenant, oldest first.
#[derive(Default)]
pub(crate) struct Uploads(Mutex<(HashMap<String, Upload>, VecDeque<String>)>);

impl Uploads {
    /// Keep `batches` (`bytes` in memory) for `tenant`, dropping the tenant's oldest
    /// uploads past `max_uploads` or `max_upload_total_bytes`; returns the new id.
    pub(crate) fn insert(
        &self,
        tenant: &str,
        batches: Vec<RecordBatch>,
        bytes: usize,
        limits: &Limits,
    ) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let mut uploads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *uploads;
        let mut mine: VecDeque<String> = order
            .iter()
            .filter(|id| map.get(*id).is_some_and(|u| u.tenant == tenant))
            .cloned()
            .collect();
        let mut held: usize = mine
            .iter()
            .filter_map(|id| map.get(id))
            .map(|u| u.bytes)
            .sum();
        while mine.len() >= limits.max_uploads
            || (!mine.is_empty() && held + bytes > limits.max_upload_total_bytes)
        {
            if let Some(old) = mine.pop_front() {
                if let Some(u) = map.remove(&old) {
                    held -= u.bytes;
                }
                order.retain(|id| *id != old);
            }
        }
        map.insert(
            id.clone(),
            Upload {
                tenant: tenant.to_owned(),
                batches,
                bytes,
            },
        );
        order.push_back(id.clone());
        id
    }

    /// The batches of upload `id`, if `tenant` made it and it is still held.
    pub(crate) fn get(&self, tenant: &str, id: &str) -> Option<Vec<RecordBatch>> {
        let uploads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match uploads.0.get(id) {
            Some(u) if u.tenant == tenant => Some(u.batches.clone()),
            _ => None,
        }
    }
}
