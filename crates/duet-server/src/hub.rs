//! The connection registry: which devices of which user are connected to
//! this node, and live delivery to them.
//!
//! Delivery is a hint (Law 4): a frame that cannot be queued (the device's
//! queue is full) closes that connection, and the device resyncs from its
//! cursor when it comes back. Nothing here blocks.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use crate::bus::{Bus, LocalDelivery};
use crate::metrics::Metrics;
use crate::presence::PresenceSink;

const SHARDS: usize = 64;

/// What the hub hands a connection task.
#[derive(Debug)]
pub enum Outbound {
    /// A serialized server frame.
    Frame(Utf8Bytes),
    /// Send this frame, then close: the device was kicked by a newer login.
    Kick(Utf8Bytes),
}

/// A connected device, as registered.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    /// Unique per connection on this node.
    pub conn_id: u64,
    /// Client-chosen device id.
    pub device_id: String,
    /// Platform name (`iPhone`, `Android`, `Web`, `PC`, `Mac`, `Linux`, ...).
    pub platform: String,
    /// Outbound frames.
    pub tx: mpsc::Sender<Outbound>,
    /// Signalled when the connection must close at once (slow consumer).
    pub kill: Arc<Notify>,
}

/// The registry.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Arc<str>, Vec<DeviceHandle>>>>,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
    max_per_platform: usize,
    bus: OnceLock<Arc<dyn Bus>>,
    presence: OnceLock<PresenceSink>,
}

fn shard_of(user: &str) -> usize {
    // FNV-1a; stable and cheap.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in user.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % SHARDS as u64) as usize
}

impl Hub {
    /// An empty hub. `max_per_platform` is the login policy.
    pub fn new(metrics: Arc<Metrics>, max_per_platform: usize) -> Self {
        Hub {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            next_conn: AtomicU64::new(1),
            metrics,
            max_per_platform: max_per_platform.max(1),
            bus: OnceLock::new(),
            presence: OnceLock::new(),
        }
    }

    /// Reports devices to shared presence. Set once, before serving.
    pub fn set_presence(&self, sink: PresenceSink) {
        let _ = self.presence.set(sink);
    }

    /// Connects the hub to the other nodes. Set once, before serving.
    pub fn set_bus(&self, bus: Arc<dyn Bus>) {
        let _ = self.bus.set(bus);
    }

    /// Delivers to this node's devices of `user` (except `except`) and, through
    /// the bus, to the other nodes' devices. `frame` is only built when some
    /// device may want it (a device of `user` here, or a bus).
    pub fn route(
        &self,
        user: &str,
        frame: impl FnOnce() -> Utf8Bytes,
        except: Option<u64>,
    ) -> usize {
        let bus = self.bus.get();
        if bus.is_none() && !self.has_devices(user, except) {
            return 0;
        }
        let frame = frame();
        if let Some(bus) = bus {
            bus.publish(user, &frame);
        }
        self.deliver(user, &frame, except)
    }

    /// Whether `user` has a device here other than `except`.
    pub fn has_devices(&self, user: &str, except: Option<u64>) -> bool {
        self.shard(user)
            .get(user)
            .is_some_and(|v| v.iter().any(|d| Some(d.conn_id) != except))
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<DeviceHandle>>> {
        // A poisoned lock only means another thread panicked mid-update of a
        // plain map; the map itself is still consistent enough to use.
        self.shards[shard_of(user)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a device. Applies the login policy: an older connection with
    /// the same device id, and the oldest beyond `max_per_platform` on the
    /// same platform, are kicked with `kick_frame`. Returns how many were kicked.
    pub fn register(&self, user: &Arc<str>, dev: DeviceHandle, kick_frame: &Utf8Bytes) -> usize {
        let mut kicked = Vec::new();
        {
            let mut map = self.shard(user);
            let devices = map.entry(user.clone()).or_default();
            if devices.is_empty()
                && let Some(bus) = self.bus.get()
            {
                bus.interest(user);
            }
            devices.retain(|d| {
                if d.device_id == dev.device_id {
                    kicked.push(d.clone());
                    false
                } else {
                    true
                }
            });
            // Oldest first: devices are kept in registration order.
            loop {
                let same: Vec<usize> = devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.platform == dev.platform)
                    .map(|(i, _)| i)
                    .collect();
                if same.len() < self.max_per_platform {
                    break;
                }
                kicked.push(devices.remove(same[0]));
            }
            if let Some(p) = self.presence.get() {
                p.online(user, dev.conn_id, &dev.device_id, &dev.platform);
            }
            devices.push(dev);
        }
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        for d in &kicked {
            if let Some(p) = self.presence.get() {
                p.offline(d.conn_id);
            }
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            self.metrics.kicks.fetch_add(1, Ordering::Relaxed);
            if d.tx.try_send(Outbound::Kick(kick_frame.clone())).is_err() {
                d.kill.notify_one();
            }
        }
        kicked.len()
    }

    /// Removes a connection (when it closes). Returns false if it was not
    /// registered (already kicked or removed).
    pub fn unregister(&self, user: &str, conn_id: u64) -> bool {
        let mut map = self.shard(user);
        let Some(devices) = map.get_mut(user) else {
            return false;
        };
        let before = devices.len();
        devices.retain(|d| d.conn_id != conn_id);
        let removed = devices.len() != before;
        if devices.is_empty() {
            map.remove(user);
            if let Some(bus) = self.bus.get() {
                bus.disinterest(user);
            }
        }
        if removed {
            if let Some(p) = self.presence.get() {
                p.offline(conn_id);
            }
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Queues `frame` to every device of `user` except `except`. A device
    /// whose queue is full is dropped from the registry and closed; it will
    /// resync. Returns the number of devices the frame was queued for.
    pub fn deliver(&self, user: &str, frame: &Utf8Bytes, except: Option<u64>) -> usize {
        let mut slow = Vec::new();
        let mut n = 0;
        {
            let mut map = self.shard(user);
            let Some(devices) = map.get_mut(user) else {
                return 0;
            };
            devices.retain(|d| {
                if Some(d.conn_id) == except {
                    return true;
                }
                match d.tx.try_send(Outbound::Frame(frame.clone())) {
                    Ok(()) => {
                        n += 1;
                        true
                    }
                    Err(_) => {
                        slow.push(d.kill.clone());
                        if let Some(p) = self.presence.get() {
                            p.offline(d.conn_id);
                        }
                        false
                    }
                }
            });
            if devices.is_empty() {
                map.remove(user);
                if let Some(bus) = self.bus.get() {
                    bus.disinterest(user);
                }
            }
        }
        for k in slow {
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            self.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
            k.notify_one();
        }
        self.metrics
            .deliveries
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Devices of `user` connected here: (device id, platform).
    pub fn devices(&self, user: &str) -> Vec<(String, String)> {
        self.shard(user)
            .get(user)
            .map(|v| {
                v.iter()
                    .map(|d| (d.device_id.clone(), d.platform.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl LocalDelivery for Hub {
    fn deliver_local(&self, user: &str, frame: Utf8Bytes) {
        self.deliver(user, &frame, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(
        hub: &Hub,
        id: &str,
        platform: &str,
        cap: usize,
    ) -> (DeviceHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            DeviceHandle {
                conn_id: hub.next_conn_id(),
                device_id: id.into(),
                platform: platform.into(),
                tx,
                kill: Arc::new(Notify::new()),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn policy_kicks_same_device_and_oldest_on_platform() {
        let hub = Hub::new(Arc::new(Metrics::default()), 2);
        let u: Arc<str> = "alice".into();
        let kick: Utf8Bytes = "kick".into();
        let (a, mut ra) = dev(&hub, "a", "Android", 4);
        let (b, _rb) = dev(&hub, "b", "Android", 4);
        let (c, _rc) = dev(&hub, "c", "Android", 4);
        let (w, _rw) = dev(&hub, "w", "Web", 4);
        assert_eq!(hub.register(&u, a, &kick), 0);
        assert_eq!(hub.register(&u, b, &kick), 0);
        assert_eq!(hub.register(&u, w, &kick), 0);
        assert_eq!(hub.register(&u, c, &kick), 1);
        assert!(matches!(ra.recv().await, Some(Outbound::Kick(_))));
        let mut ids: Vec<_> = hub.devices("alice").into_iter().map(|d| d.0).collect();
        ids.sort();
        assert_eq!(ids, ["b", "c", "w"]);
        let (b2, _rb2) = dev(&hub, "b", "Android", 4);
        assert_eq!(hub.register(&u, b2, &kick), 1);
        assert_eq!(hub.devices("alice").len(), 3);
    }

    #[tokio::test]
    async fn full_queue_drops_the_device() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics.clone(), 3);
        let u: Arc<str> = "bob".into();
        let (a, _ra) = dev(&hub, "a", "PC", 1);
        let kill = a.kill.clone();
        let except = a.conn_id;
        hub.register(&u, a, &"k".into());
        let f: Utf8Bytes = "x".into();
        assert_eq!(hub.deliver("bob", &f, Some(except)), 0);
        assert_eq!(hub.deliver("bob", &f, None), 1);
        assert_eq!(hub.deliver("bob", &f, None), 0);
        kill.notified().await;
        assert!(hub.devices("bob").is_empty());
        assert_eq!(metrics.slow_consumers.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.connections.load(Ordering::Relaxed), 0);
    }
}
