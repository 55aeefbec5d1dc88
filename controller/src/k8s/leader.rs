//! Leader election through a coordination.k8s.io Lease, so that of several replicas only
//! one writes. The leader renews every third of the lease duration; a replica that cannot
//! renew within the duration stops (and is restarted by its Deployment) rather than risk two
//! writers. Standbys poll and take over an expired lease.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

/// Whether `me` may take the lease now: it is free, ours, or expired.
pub fn may_take(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(t) => now.as_second() - t.0.as_second() > duration,
        None => true,
    }
}

#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, duration: Duration) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            me: me.to_owned(),
            duration,
        }
    }

    /// One attempt to take or renew the lease. `Ok(false)`: someone else holds it.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        if let Some(l) = &existing
            && !may_take(l.spec.as_ref(), &self.me, now)
        {
            return Ok(false);
        }
        let old = existing
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let ours = old.holder_identity.as_deref() == Some(self.me.as_str());
        let spec = LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: if ours {
                old.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                old.lease_transitions.unwrap_or(0) + i32::from(!ours && existing.is_some()),
            ),
            ..Default::default()
        };
        let result = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // resourceVersion makes this a compare-and-swap: two standbys cannot both win.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up on a clean shutdown, so a standby takes over at once instead of
    /// waiting for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader lease"),
        }
    }

    /// Waits until this replica leads, then keeps renewing in the background. The returned
    /// receiver turns `true` when leadership is lost.
    pub async fn lead(&self) -> watch::Receiver<bool> {
        let retry = self.duration / 3;
        loop {
            match self.try_acquire().await {
                Ok(true) => break,
                Ok(false) => tracing::debug!("another replica leads; standing by"),
                Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
            }
            tokio::time::sleep(retry).await;
        }
        tracing::info!(identity = %self.me, "leading");
        let (lost_tx, lost_rx) = watch::channel(false);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(retry).await;
                if lost_tx.is_closed() {
                    return;
                }
                match this.try_acquire().await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("another replica took the leader lease");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                }
                if last_renewed.elapsed() >= this.duration {
                    tracing::error!("could not renew the leader lease in time");
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        });
        lost_rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: &str, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed.parse().expect("ts"))),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn who_may_take_the_lease() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        assert!(may_take(None, "a", now), "no lease yet");
        assert!(
            may_take(Some(&spec("a", "2026-01-01T00:00:59Z", 15)), "a", now),
            "ours"
        );
        assert!(
            !may_take(Some(&spec("b", "2026-01-01T00:00:50Z", 15)), "a", now),
            "b holds it"
        );
        assert!(
            may_take(Some(&spec("b", "2026-01-01T00:00:40Z", 15)), "a", now),
            "b's expired"
        );
        assert!(
            may_take(Some(&spec("", "2026-01-01T00:00:59Z", 15)), "a", now),
            "released"
        );
    }
}
