//! Poison-tolerant locking.
//!
//! A `std::sync::Mutex` is poisoned when a thread panics while holding it. Every mutex in
//! Openloop guards a map or a small record that each critical section leaves consistent
//! (inserts, removes, counter updates: no multi-step invariants half-applied), so the data
//! behind a poisoned lock is still valid. Treating poison as "skip this write" (the old
//! `lock().ok()` pattern) silently lost registrations, removals and status changes instead;
//! [`lock`] takes the guard either way.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, recovering the guard of a poisoned mutex (see the crate docs for why that is
/// sound here). Never panics and never drops the caller's write.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::lock;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_poisoned_mutex_still_takes_writes() {
        let m = Arc::new(Mutex::new(vec![1]));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        lock(&m).push(2);
        assert_eq!(*lock(&m), vec![1, 2]);
    }
}
