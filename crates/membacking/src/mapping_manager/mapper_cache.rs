//! The per-process mapper cache: one VA mapper per process and manager.
//!
//! Entries are keyed by the mapping manager's random id and are either *building* (a builder is
//! constructing the mapper; others wait for it) or *built* (a weak reference, so the cache
//! never keeps a mapper alive). A lookup purges built entries whose mapper is gone, returns a
//! live mapper, waits for a builder (and starts over if the builder failed), or becomes the
//! builder. A builder that is cancelled (its future dropped) removes its entry and wakes the
//! waiters, so nobody waits forever (D6).

use super::va_mapper::VaMapper;
use super::MappingManagerClient;
use crate::error::VaMapperError;
use futures::channel::oneshot;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::Weak;

enum Entry {
    Building(Vec<oneshot::Sender<()>>),
    Built(Weak<VaMapper>),
}

fn cache() -> &'static Mutex<HashMap<u128, Entry>> {
    static CACHE: OnceLock<Mutex<HashMap<u128, Entry>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Removes a building entry (and wakes its waiters) unless the build finished.
struct BuildGuard {
    key: u128,
    finished: bool,
}

impl Drop for BuildGuard {
    fn drop(&mut self) {
        if !self.finished {
            // Dropping the waiters' senders wakes them; they look the entry up again.
            cache().lock().remove(&self.key);
        }
    }
}

/// This process's mapper for the manager behind `client`, created on first use.
pub(crate) async fn process_mapper(
    client: &MappingManagerClient,
    window_len: u64,
    private: bool,
) -> Result<Arc<VaMapper>, VaMapperError> {
    let key = client.id();
    loop {
        let wait = {
            let mut cache = cache().lock();
            cache.retain(|_, entry| match entry {
                Entry::Built(weak) => weak.strong_count() > 0,
                Entry::Building(_) => true,
            });
            match cache.get_mut(&key) {
                Some(Entry::Built(weak)) => match weak.upgrade() {
                    Some(mapper) => return Ok(mapper),
                    None => {
                        cache.insert(key, Entry::Building(Vec::new()));
                        None
                    }
                },
                Some(Entry::Building(waiters)) => {
                    let (sender, receiver) = oneshot::channel();
                    waiters.push(sender);
                    Some(receiver)
                }
                None => {
                    cache.insert(key, Entry::Building(Vec::new()));
                    None
                }
            }
        };
        match wait {
            // Woken by success (the entry is built), failure or cancellation (it is gone):
            // look again either way.
            Some(receiver) => {
                let _ = receiver.await;
            }
            None => break,
        }
    }

    let mut guard = BuildGuard {
        key,
        finished: false,
    };
    let mapper = Arc::new(VaMapper::new(client.clone(), window_len, private).await?);
    let waiters = {
        let mut cache = cache().lock();
        match cache.insert(key, Entry::Built(Arc::downgrade(&mapper))) {
            Some(Entry::Building(waiters)) => waiters,
            _ => Vec::new(),
        }
    };
    guard.finished = true;
    for waiter in waiters {
        let _ = waiter.send(());
    }
    Ok(mapper)
}

/// The number of entries in the cache (for tests).
#[cfg(test)]
pub(crate) fn entry_count(key: u128) -> usize {
    usize::from(cache().lock().contains_key(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping_manager::new_mapping_manager;
    use futures::executor::block_on;
    use std::future::Future;
    use std::task::Context;

    #[test]
    fn a_cancelled_builder_is_cleaned_up_and_waiters_take_over() {
        // The mapping manager does not run yet, so registration never completes.
        let (client, task) = new_mapping_manager();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut builder = Box::pin(process_mapper(&client, 0x10000, false));
        let mut waiter = Box::pin(process_mapper(&client, 0x10000, false));
        assert!(builder.as_mut().poll(&mut cx).is_pending());
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        assert_eq!(entry_count(client.id()), 1);
        drop(builder);
        // The waiter was woken, finds no entry and becomes the builder.
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        assert_eq!(entry_count(client.id()), 1);
        drop(waiter);
        assert_eq!(entry_count(client.id()), 0);

        let thread = std::thread::spawn(move || block_on(task.run()));
        let mapper = block_on(process_mapper(&client, 0x10000, false)).unwrap();
        let again = block_on(process_mapper(&client, 0x10000, false)).unwrap();
        assert!(Arc::ptr_eq(&mapper, &again));
        // Weak entries never keep a mapper alive; a new one is built after the last goes.
        let first_id = mapper.id();
        drop((mapper, again));
        let rebuilt = block_on(process_mapper(&client, 0x10000, false)).unwrap();
        assert_eq!(rebuilt.len(), 0x10000);
        assert_eq!(rebuilt.id(), first_id, "the freed slot is reused");
        drop(rebuilt);
        client.shutdown();
        thread.join().unwrap();
    }
}
