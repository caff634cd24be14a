//! A short-lived in-process cache of deployment records for the hot paths.
//!
//! Minting a ticket needs the caller's deployment (its hosts make the ticket's URL), and every
//! browser request first finds the deployment its `Host` serves. Both used to read the
//! `deployments` table on every request, although deployments are created at start-up and change
//! only through their settings. This cache answers those lookups from memory for
//! [`DeploymentCache::TTL`]; a change made on this node (`updateCurrentDeployment`) is
//! forgotten at once, a change made on another node is seen here within the TTL.
//!
//! Only deployment records are cached, never credentials: a revoked secret key, a signed-out
//! browser session or a used ticket is refused at once on every node.
//!
//! The `Host` header is chosen by the client, so the host map is bounded
//! ([`DeploymentCache::MAX_HOSTS`]): when it is full, expired entries are dropped, and if none
//! expired the map starts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::header::HOST;
use axum::http::HeaderMap;
use tessera_domain::records::Deployment;
use tessera_domain::{DeploymentId, Scope};
use tessera_store::{Store, StoreResult};

use crate::error::ApiError;
use crate::identity::normalize_origin;

#[derive(Default)]
pub(crate) struct DeploymentCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<DeploymentId, (Deployment, Instant)>,
    /// A request's host → the deployment that serves it (or the default deployment).
    by_host: HashMap<String, (DeploymentId, Instant)>,
}

impl DeploymentCache {
    /// How long a cached record is used before it is read again.
    pub(crate) const TTL: Duration = Duration::from_secs(5);
    /// Most hosts remembered at once.
    pub(crate) const MAX_HOSTS: usize = 1024;

    /// The deployment of `scope`.
    pub(crate) async fn get(&self, store: &dyn Store, scope: &Scope) -> StoreResult<Deployment> {
        if let Some(found) = self.cached(scope.deployment_id()) {
            return Ok(found);
        }
        let deployment = store.get_deployment(scope).await?;
        self.remember(&deployment);
        Ok(deployment)
    }

    /// The deployment a browser request is for: the one whose backend or frontend host is the
    /// request's `Host`, else the default deployment.
    pub(crate) async fn for_request(
        &self,
        store: &dyn Store,
        headers: &HeaderMap,
    ) -> Result<Deployment, ApiError> {
        let host = headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .filter(|h| !h.is_empty() && !h.contains(['/', '@', ' ']));
        let key = host.clone().unwrap_or_default();
        if let Some(found) = self.cached_host(&key) {
            return Ok(found);
        }
        let mut found = None;
        if let Some(host) = host {
            let candidates: Vec<String> = [format!("http://{host}"), format!("https://{host}")]
                .iter()
                .filter_map(|o| normalize_origin(o))
                .collect();
            found = store.deployment_for_origin(&candidates).await?;
        }
        let deployment = match found {
            Some(deployment) => deployment,
            None => store
                .find_deployment(crate::bootstrap::DEFAULT_DEPLOYMENT)
                .await?
                .ok_or_else(|| ApiError::unauthorized("no deployment serves this host"))?,
        };
        self.remember(&deployment);
        self.remember_host(key, &deployment.id);
        Ok(deployment)
    }

    /// Drops what is cached of deployment `id` (it changed on this node).
    pub(crate) fn forget(&self, id: &DeploymentId) {
        self.lock().by_id.remove(id);
    }

    fn cached(&self, id: &DeploymentId) -> Option<Deployment> {
        let inner = self.lock();
        let (deployment, at) = inner.by_id.get(id)?;
        (at.elapsed() < Self::TTL).then(|| deployment.clone())
    }

    fn cached_host(&self, host: &str) -> Option<Deployment> {
        let inner = self.lock();
        let (id, at) = inner.by_host.get(host)?;
        if at.elapsed() >= Self::TTL {
            return None;
        }
        let (deployment, at) = inner.by_id.get(id)?;
        (at.elapsed() < Self::TTL).then(|| deployment.clone())
    }

    fn remember(&self, deployment: &Deployment) {
        self.lock()
            .by_id
            .insert(deployment.id.clone(), (deployment.clone(), Instant::now()));
    }

    fn remember_host(&self, host: String, id: &DeploymentId) {
        let mut inner = self.lock();
        if inner.by_host.len() >= Self::MAX_HOSTS && !inner.by_host.contains_key(&host) {
            inner.by_host.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            if inner.by_host.len() >= Self::MAX_HOSTS {
                inner.by_host.clear();
            }
        }
        inner.by_host.insert(host, (id.clone(), Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use tessera_domain::records::DeploymentSettings;
    use tessera_domain::Timestamp;

    use super::*;

    fn deployment(name: &str) -> Deployment {
        Deployment {
            id: DeploymentId::generate(),
            name: name.to_owned(),
            backend_host: "http://127.0.0.1:8080".to_owned(),
            frontend_host: "http://127.0.0.1:3000".to_owned(),
            settings: DeploymentSettings::default(),
            created_at: Timestamp::now(),
        }
    }

    #[test]
    fn a_remembered_deployment_is_served_until_forgotten() {
        let cache = DeploymentCache::default();
        let d = deployment("a");
        assert!(cache.cached(&d.id).is_none());
        cache.remember(&d);
        cache.remember_host("api.example.com".to_owned(), &d.id);
        assert_eq!(cache.cached(&d.id).map(|c| c.name), Some("a".to_owned()));
        assert_eq!(
            cache.cached_host("api.example.com").map(|c| c.id),
            Some(d.id.clone())
        );
        assert!(cache.cached_host("other.example.com").is_none());
        cache.forget(&d.id);
        assert!(cache.cached(&d.id).is_none());
        // The host still maps to the id, but without the record it is read again.
        assert!(cache.cached_host("api.example.com").is_none());
    }

    #[test]
    fn expired_entries_are_not_served() {
        let cache = DeploymentCache::default();
        let d = deployment("a");
        let long_ago = Instant::now()
            .checked_sub(DeploymentCache::TTL + Duration::from_millis(1))
            .expect("the clock is past the TTL");
        cache
            .lock()
            .by_id
            .insert(d.id.clone(), (d.clone(), long_ago));
        assert!(cache.cached(&d.id).is_none());
        cache.remember(&d);
        cache
            .lock()
            .by_host
            .insert("h".to_owned(), (d.id.clone(), long_ago));
        assert!(cache.cached_host("h").is_none());
    }

    #[test]
    fn client_chosen_hosts_cannot_grow_the_map_without_bound() {
        let cache = DeploymentCache::default();
        let d = deployment("a");
        for i in 0..(3 * DeploymentCache::MAX_HOSTS) {
            cache.remember_host(format!("host-{i}.example"), &d.id);
            assert!(cache.lock().by_host.len() <= DeploymentCache::MAX_HOSTS);
        }
        // The newest host is always kept.
        let last = format!("host-{}.example", 3 * DeploymentCache::MAX_HOSTS - 1);
        assert!(cache.lock().by_host.contains_key(&last));
    }
}
