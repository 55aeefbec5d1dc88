//! The watches that fill the caches, written once: every cache is a reflector over one
//! watch that trims what no reconcile reads and reports when its initial list is in, so
//! that reconciles start only once every cache is complete.

use std::collections::{HashMap, HashSet};
use std::future::ready;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};

/// How many objects a cache asks for in one page of its list, where the apiserver cannot
/// stream it ([`watch`]; kube's watcher asks for 500). A page is decoded whole, every object
/// with its managed fields (a tree of small allocations: a hollow device's are some 1.7 KB
/// of JSON), before the cache trims it; the allocator keeps the room the largest page took,
/// so a restarted controller held 3 to 6 MiB more than the one it replaced at 10,000
/// devices. A smaller page is more requests, one after another: 100 for 10,000 devices
/// instead of 20, and a slower restart (controller/README.md, "What a restart lists").
pub const LIST_PAGE: u32 = 100;

/// The events of a watch over what `config` selects, as kube's watcher gives them, its
/// initial list streamed: one watch request whose first events are the objects, each
/// decoded on its own (`sendInitialEvents`). Where the apiserver refuses that or fails it
/// ([`streaming_failed`]), the watch starts over listing in pages of [`LIST_PAGE`], and
/// stays so.
///
/// kube starts a streamed list at `resourceVersion=0`: the apiserver sends what its watch
/// cache holds without waiting for it to catch up with etcd, where a paged list is a
/// consistent read. The watch that follows lags the same way, and the lag is that of one
/// apiserver's cache behind etcd (a moment, unless several apiservers are far apart). For
/// the device authorizer's view that means a device retired just before a restart may be
/// allowed for that moment more: the apiserver itself caches an allowed decision for far
/// longer (its webhook's `authorizedTTL`, 5 minutes by default).
pub fn watch<K: Cached>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K> {
    let streamed = Box::pin(watcher(api.clone(), config.clone().streaming_lists()));
    // The paged watch, until it replaces the streamed one; and whether the watch is in its
    // initial list (from its start, or an Init, to its InitDone).
    let paged = Some((api, config));
    futures::stream::unfold(
        (streamed, paged, true),
        |(mut events, mut paged, mut listing)| async move {
            loop {
                let event = events.next().await?;
                match &event {
                    Ok(watcher::Event::Init) => listing = true,
                    Ok(watcher::Event::InitDone) => listing = false,
                    _ => {}
                }
                if listing
                    && let Some(why) = streaming_failed(&event)
                    && let Some((api, config)) = paged.take()
                {
                    tracing::warn!(
                        kind = K::kind(&()).as_ref(),
                        why,
                        "the apiserver does not stream this list; listing in pages"
                    );
                    events = Box::pin(watcher(api, config.page_size(LIST_PAGE)));
                    continue;
                }
                return Some((event, (events, paged, listing)));
            }
        },
    )
}

/// Why the apiserver would not stream a list, if `event`, during one, says so:
/// - a 422 to the watch's start: a watch's parameters are this controller's own, and
///   `sendInitialEvents` (with the `resourceVersionMatch` it needs) is the only one a paged
///   list does not send. Kubernetes 1.30, 1.31 and 1.33 refuse it by default (their
///   `WatchList` feature gate is off);
/// - an error event in the list: the apiserver accepted the watch and then could not
///   stream (k8s.io/apiserver's cacher does so when etcd is too old for it, counting on
///   the client to list instead, as client-go does).
///
/// Errors of the connection are not the apiserver's answer: kube's watcher retries them.
fn streaming_failed<K>(event: &watcher::Result<watcher::Event<K>>) -> Option<String> {
    match event {
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))) if s.code == 422 => {
            Some(s.message.clone())
        }
        Err(watcher::Error::WatchError(s)) => Some(s.message.clone()),
        _ => None,
    }
}

/// The caches, named for readiness tracking and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cache {
    Devices,
    Deployments,
    Modules,
    Leases,
    Nodes,
    Revisions,
    Grants,
}

/// Which caches have their initial list. kube's `Store::wait_until_ready` wakes only one
/// waiter per store, and each controller already waits on its own store, so readiness is
/// tracked here from the watch events themselves, for any number of waiters. Every watch
/// started through this module is expected ([`Synced::expect`]); synced means all of them
/// have listed, so a cache added later can't be forgotten here.
#[derive(Debug, Default)]
pub struct Synced {
    expected: std::sync::Mutex<HashSet<Cache>>,
    listed: tokio::sync::watch::Sender<HashSet<Cache>>,
}

impl Synced {
    /// Counts `cache` among those a complete view needs.
    pub fn expect(&self, cache: Cache) {
        self.expected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cache);
        // A waiter compares against the expected set: wake it to compare again.
        self.listed.send_modify(|_| {});
    }

    /// Notes that `cache` has its initial list, when `event` says so.
    pub fn observe<K, E>(&self, cache: Cache, event: &Result<watcher::Event<K>, E>) {
        if let Ok(watcher::Event::InitDone) = event {
            self.listed.send_if_modified(|listed| listed.insert(cache));
        }
    }

    /// Waits until every expected cache has its initial list.
    pub async fn wait(&self) {
        let mut rx = self.listed.subscribe();
        let _ = rx
            .wait_for(|listed| {
                let expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
                !expected.is_empty() && expected.is_subset(listed)
            })
            .await;
    }
}

/// What a cache can hold: any cluster-wide kind the watch can decode.
pub trait Cached:
    Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Cached for K where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// The size of a shared reflector's buffer of events for its subscribers.
const SHARED_BUFFER: usize = 1024;

/// A cache over all objects of a kind that `N` controllers subscribe to: one watch feeding
/// the store and each subscriber, each object trimmed by `trim` before it is stored. The
/// watch runs in its own task.
///
/// Its initial objects come as [`watch`] gets them, never as a list with
/// `resourceVersion=0` (kube's "any" semantic): the apiserver answers that from its watch
/// cache in one piece whatever the page size (`computeListLimit` in k8s.io/apiserver's
/// cacher), which at 10,000 devices is some 44 MB of JSON, all of it decoded before the
/// first object is trimmed.
pub fn shared<K, const N: usize>(
    api: Api<K>,
    trim: impl FnMut(&mut K) + Send + 'static,
    synced: &Arc<Synced>,
    cache: Cache,
) -> (Store<K>, [ReflectHandle<K>; N])
where
    K: Cached,
{
    synced.expect(cache);
    let (reader, writer) = reflector::store_shared(SHARED_BUFFER);
    let subs = std::array::from_fn(|_| {
        writer
            .subscribe()
            .expect("a shared store hands out subscriptions")
    });
    let synced = synced.clone();
    let watch = watch(api, watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect_shared(writer)
        .for_each(move |e| {
            synced.observe(cache, &e);
            ready(())
        });
    tokio::spawn(watch);
    (reader, subs)
}

/// A cache only its owner reads, over the objects `config` selects, each trimmed by `trim`
/// before it is stored. Returns the store and the watch's events, which the caller must
/// drive (to completion, or as a controller's trigger stream).
pub fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    synced: &Arc<Synced>,
    cache: Cache,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>,
)
where
    K: Cached,
{
    let keep = move |mut o: K| {
        trim(&mut o);
        o
    };
    cache_as(api, config, keep, synced, cache)
}

/// A cache only its owner reads, over the objects `config` selects, each turned by `into`
/// into what the cache holds of it before it is stored. Returns the store and the watch's
/// events, as [`cache`] does.
pub fn cache_as<K, D, F>(
    api: Api<K>,
    config: watcher::Config,
    mut into: F,
    synced: &Arc<Synced>,
    cache: Cache,
) -> (
    Store<D>,
    impl Stream<Item = Result<watcher::Event<D>, watcher::Error>> + Send + use<K, D, F>,
)
where
    K: Cached,
    D: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: FnMut(K) -> D + Send + 'static,
{
    synced.expect(cache);
    let (reader, writer) = reflector::store();
    let synced = synced.clone();
    let events = watch(api, config)
        .map(move |e| e.map(|e| map_event(e, &mut into)))
        .default_backoff()
        .reflect(writer)
        .inspect(move |e| synced.observe(cache, e));
    (reader, events)
}

/// A watch event about what `into` makes of its object.
fn map_event<K, D>(e: watcher::Event<K>, into: &mut impl FnMut(K) -> D) -> watcher::Event<D> {
    match e {
        watcher::Event::Apply(o) => watcher::Event::Apply(into(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(into(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(into(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The caches never read managedFields, which are often the largest part of an object.
pub fn drop_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// A device needs only to know that its Node exists: a real kubelet's Node carries a
/// kilobyte or more of labels and annotations, a megabyte or more at 10,000 devices.
pub fn keep_name_only<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        ..Default::default()
    };
}

/// Passes on a watched object when it appears or disappears, not when it changes (a Node's
/// status changes every few seconds; a device cares only whether its Node exists). The
/// events come from the cache's own stream, so the store already has what they say.
pub fn arrivals_and_departures<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Clone + Send + 'static,
{
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut known: HashSet<String> = HashSet::new();
    tokio::spawn(events.for_each(move |e| {
        let changed = match &e {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                known.insert(o.name_any()).then_some(o)
            }
            Ok(watcher::Event::Delete(o)) => known.remove(&o.name_any()).then_some(o),
            _ => None,
        };
        if let Some(o) = changed {
            let _ = tx.unbounded_send(Ok(o.clone()));
        }
        ready(())
    }));
    rx
}

/// Passes on each object once (and again if it is made anew, another uid): the registry
/// acts when a device is enrolled, not on every status report its agent makes.
pub fn enrolments<K>(
    s: impl Stream<Item = Arc<K>> + Send,
    store: Store<K>,
) -> impl Stream<Item = Arc<K>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    changes_of(s, store, |_| ())
}

/// Passes on an object when what `reads` takes of it changed since it last passed, or when
/// it is another object of the same name (another uid). Writes that change nothing a
/// reconcile reads stop here instead of queueing it again. A shared reflector hands on no
/// deletions, so whenever the entries outgrow twice the store's objects those no longer in
/// `store` are dropped.
pub fn changes_of<K, D>(
    s: impl Stream<Item = Arc<K>> + Send,
    store: Store<K>,
    reads: impl Fn(&K) -> D + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    D: PartialEq + Send + 'static,
{
    let mut seen: HashMap<ObjectRef<K>, (Option<String>, D)> = HashMap::new();
    s.filter(move |o| {
        let key = ObjectRef::from_obj(o.as_ref());
        let now = (o.meta().uid.clone(), reads(o));
        let pass = seen.get(&key) != Some(&now);
        if pass {
            seen.insert(key, now);
            if seen.len() > 2 * store.len().max(PRUNE_FLOOR) {
                seen.retain(|k, _| store.get(k).is_some());
            }
        }
        ready(pass)
    })
}

/// Below this many entries [`changes_of`] does not look for objects that are gone.
const PRUNE_FLOOR: usize = 64;

/// Passes on only objects whose generation changed: our own status writes do not count as
/// changes of what the user asked for.
pub fn spec_changes<K>(
    s: impl Stream<Item = Arc<K>> + Send,
    store: Store<K>,
) -> impl Stream<Item = Arc<K>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    changes_of(s, store, |o| o.meta().generation)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};

    use super::*;

    fn lease(name: &str, uid: &str, holder: &str, renewed: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_transitions: Some(renewed.len() as i32),
                ..Default::default()
            }),
        }
    }

    fn holder(l: &Lease) -> Option<String> {
        l.spec.as_ref().and_then(|s| s.holder_identity.clone())
    }

    /// What the stand-in apiserver does with a watch that asks for a streamed list.
    #[derive(Clone, Copy)]
    enum Streamed {
        Sent,
        /// Refused, as by an apiserver with the `WatchList` gate off.
        Refused,
        /// Accepted, then failed with an error event, as by a cacher whose etcd is too old.
        FailedInside,
        /// Sent, and then the watch expired (410), as any watch may.
        SentThenExpired,
    }

    /// An apiserver with two Leases whose watch with `sendInitialEvents` goes as `streamed`
    /// says; a plain watch gets nothing new. It records each request's query.
    fn apiserver(streamed: Streamed) -> (kube::Client, Arc<std::sync::Mutex<Vec<String>>>) {
        use kube::client::Body;
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        let item = |name: &str| {
            serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": name, "namespace": "ns", "resourceVersion": "7"}})
        };
        let service = tower::service_fn(move |r: http::Request<Body>| {
            let query = r.uri().query().unwrap_or_default().to_owned();
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(query.clone());
            let (code, body) = if !query.contains("watch=true") {
                let list = serde_json::json!({"apiVersion": "coordination.k8s.io/v1",
                    "kind": "LeaseList", "metadata": {"resourceVersion": "7"},
                    "items": [item("a"), item("b")]});
                (200, list.to_string())
            } else if !query.contains("sendInitialEvents=true") {
                (200, String::new())
            } else if let Streamed::Sent | Streamed::SentThenExpired = streamed {
                let end = serde_json::json!({"apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease", "metadata": {"resourceVersion": "7",
                    "annotations": {"k8s.io/initial-events-end": "true"}}});
                let gone = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": "too old resource version"});
                let mut events = vec![
                    ("ADDED", item("a")),
                    ("ADDED", item("b")),
                    ("BOOKMARK", end),
                ];
                if let Streamed::SentThenExpired = streamed {
                    events.push(("ERROR", gone));
                }
                let lines: Vec<String> = events
                    .iter()
                    .map(|(t, o)| serde_json::json!({"type": t, "object": o}).to_string())
                    .collect();
                (200, lines.join("\n") + "\n")
            } else if let Streamed::FailedInside = streamed {
                let failure = serde_json::json!({"type": "ERROR", "object": {"kind": "Status",
                    "apiVersion": "v1", "status": "Failure", "reason": "InternalError",
                    "code": 500, "message": "Internal error occurred: etcd too old for watch-list"}});
                (200, failure.to_string() + "\n")
            } else {
                let refusal = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "Invalid", "code": 422,
                    "message": "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"});
                (422, refusal.to_string())
            };
            let answer = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(body.into_bytes()))
                .expect("a response");
            std::future::ready(Ok::<_, std::convert::Infallible>(answer))
        });
        (kube::Client::new(service, "ns"), asked)
    }

    /// The first `n` events of a watch of the Leases, what a cache is filled from, and the
    /// queries of the requests made meanwhile.
    async fn listed(streamed: Streamed, n: usize) -> (Vec<String>, Vec<String>) {
        let (client, asked) = apiserver(streamed);
        let events = watch(
            Api::<Lease>::namespaced(client, "ns"),
            watcher::Config::default(),
        );
        let seen: Vec<String> = events
            .take(n)
            .map(|e| match e {
                Ok(watcher::Event::Init) => "init".to_owned(),
                Ok(watcher::Event::InitApply(l)) => l.name_any(),
                Ok(watcher::Event::InitDone) => "done".to_owned(),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("error: {e}"),
            })
            .collect()
            .await;
        let asked = asked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (seen, asked)
    }

    #[tokio::test]
    async fn a_cache_is_filled_by_one_streamed_watch_where_the_apiserver_can() {
        let (seen, asked) = listed(Streamed::Sent, 4).await;
        assert_eq!(seen, ["init", "a", "b", "done"]);
        assert_eq!(asked.len(), 1, "one request, no list: {asked:?}");
        assert!(asked[0].contains("sendInitialEvents=true"), "{asked:?}");
    }

    #[tokio::test]
    async fn an_apiserver_that_cannot_stream_a_list_gets_asked_for_pages() {
        let (seen, asked) = listed(Streamed::Refused, 4).await;
        assert_eq!(seen, ["init", "a", "b", "done"], "the refusal is no error");
        assert!(asked[0].contains("sendInitialEvents=true"), "{asked:?}");
        let list = &asked[1];
        assert!(!list.contains("watch=true"), "then a list: {asked:?}");
        assert!(
            list.contains(&format!("limit={LIST_PAGE}")),
            "in pages: {asked:?}"
        );
    }

    #[tokio::test]
    async fn a_streamed_list_the_apiserver_fails_is_listed_in_pages() {
        let (seen, asked) = listed(Streamed::FailedInside, 5).await;
        // The streamed watch had started; the paged one starts the cache's list over.
        assert_eq!(
            seen,
            ["init", "init", "a", "b", "done"],
            "the failure is no error"
        );
        assert!(asked[0].contains("sendInitialEvents=true"), "{asked:?}");
        assert!(
            asked[1].contains(&format!("limit={LIST_PAGE}")),
            "{asked:?}"
        );
    }

    #[tokio::test]
    async fn a_watch_that_expires_after_its_streamed_list_streams_again() {
        let (seen, asked) = listed(Streamed::SentThenExpired, 6).await;
        assert_eq!(seen[..4], ["init", "a", "b", "done"]);
        assert!(
            seen[4].starts_with("error"),
            "kube's watcher handles it: {seen:?}"
        );
        assert_eq!(seen[5], "init", "{seen:?}");
        assert!(
            asked.iter().all(|q| q.contains("sendInitialEvents=true")),
            "no list: {asked:?}"
        );
    }

    /// Each object as the shared reflector hands it on, the store updated first; whether
    /// it passed.
    struct Feed {
        writer: reflector::store::Writer<Lease>,
        tx: futures::channel::mpsc::UnboundedSender<Arc<Lease>>,
        passed: std::pin::Pin<Box<dyn Stream<Item = Arc<Lease>> + Send>>,
    }

    impl Feed {
        fn new() -> Feed {
            let (store, writer) = reflector::store::<Lease>();
            let (tx, rx) = futures::channel::mpsc::unbounded();
            Feed {
                writer,
                tx,
                passed: Box::pin(changes_of(rx, store, holder)),
            }
        }

        fn step(&mut self, event: watcher::Event<Lease>, obj: Lease) -> bool {
            use futures::FutureExt;
            self.writer.apply_watcher_event(&event);
            self.tx
                .unbounded_send(Arc::new(obj))
                .expect("the filter listens");
            self.passed.next().now_or_never().is_some()
        }

        fn apply(&mut self, l: Lease) -> bool {
            self.step(watcher::Event::Apply(l.clone()), l)
        }
    }

    /// A change of what is read passes, a write that changes nothing of it does not, and
    /// another object of the same name does.
    #[test]
    fn only_changes_of_what_is_read_pass() {
        let mut feed = Feed::new();
        for (l, pass, what) in [
            (lease("edge-1", "uid-1", "a", "1"), true, "first seen"),
            (
                lease("edge-1", "uid-1", "a", "22"),
                false,
                "renewed, same holder",
            ),
            (lease("edge-1", "uid-1", "b", "22"), true, "another holder"),
            (lease("edge-1", "uid-1", "b", "333"), false, "renewed again"),
            (
                lease("edge-1", "uid-2", "b", "1"),
                true,
                "deleted and made again",
            ),
        ] {
            assert_eq!(feed.apply(l), pass, "{what}");
        }
    }

    /// What is remembered of objects that are gone goes once the entries outgrow the store
    /// (the reflector hands on no deletions): the same object back passes again.
    #[test]
    fn what_is_remembered_of_objects_gone_is_dropped() {
        let mut feed = Feed::new();
        let many = 2 * PRUNE_FLOOR;
        let leases: Vec<_> = (0..many)
            .map(|i| lease(&format!("edge-{i}"), &format!("uid-{i}"), "a", "1"))
            .collect();
        for l in &leases {
            assert!(feed.apply(l.clone()));
        }
        for l in &leases[1..] {
            feed.writer
                .apply_watcher_event(&watcher::Event::Delete(l.clone()));
        }
        let gone = leases[1].clone();
        assert!(
            !feed.step(watcher::Event::Delete(gone.clone()), gone),
            "still remembered"
        );
        // One more object takes the entries past twice the floor: the gone ones go.
        assert!(feed.apply(lease("edge-new", "uid-new", "a", "1")));
        assert!(feed.apply(leases[1].clone()), "forgotten once gone");
        assert!(!feed.apply(leases[0].clone()), "kept while in the store");
    }

    /// The Node cache keeps what tells a Node exists, and none of what its kubelet writes.
    #[test]
    fn a_cached_node_keeps_its_name_only() {
        use std::collections::BTreeMap;
        let mut node = k8s_openapi::api::core::v1::Node {
            metadata: ObjectMeta {
                name: Some("edge-1".into()),
                uid: Some("uid-1".into()),
                resource_version: Some("7".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/os".into(),
                    "linux".into(),
                )])),
                annotations: Some(BTreeMap::from([("a".into(), "b".repeat(1000))])),
                ..Default::default()
            },
            ..Default::default()
        };
        keep_name_only(&mut node);
        assert_eq!(
            node.metadata,
            ObjectMeta {
                name: Some("edge-1".into()),
                uid: Some("uid-1".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            }
        );
    }

    fn init_done() -> Result<watcher::Event<Lease>, ()> {
        Ok(watcher::Event::InitDone)
    }

    /// Synced waits for every cache that was started, whichever they are.
    #[tokio::test]
    async fn synced_waits_for_every_expected_cache() {
        let synced = Arc::new(Synced::default());
        synced.expect(Cache::Devices);
        synced.expect(Cache::Grants);
        synced.observe(Cache::Devices, &init_done());
        let waiting = tokio::spawn({
            let s = synced.clone();
            async move { s.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "Grants has not listed yet");
        synced.observe(Cache::Grants, &init_done());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("synced once both listed")
            .expect("task");
    }
}
