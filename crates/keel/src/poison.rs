//! The one rule for poisoned locks (docs/DESIGN.md, rule 9).
//!
//! A lock is poisoned when a thread panicked while holding it, possibly in
//! the middle of an update: the queue of operations waiting to be applied,
//! or the in-memory state, may no longer match the log. Carrying on would
//! risk acknowledging writes that the state does not reflect. So the store
//! fails stop, as after a failed fsync: every later write is refused with
//! [`Error::Poisoned`], reads go on from what is in memory, and a restart
//! recovers from the log, which a panic cannot have damaged (records are
//! only ever appended whole and checksummed).

use crate::error::{Error, Result};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Takes the store's locks, and remembers the first one found poisoned.
#[derive(Default)]
pub(crate) struct Poison {
    first: OnceLock<&'static str>,
}

impl Poison {
    fn note<G>(&self, what: &'static str, poisoned: std::sync::PoisonError<G>) -> G {
        if self.first.set(what).is_ok() {
            tracing::error!(
                lock = what,
                "a thread panicked holding a lock; the store has stopped taking writes"
            );
        }
        poisoned.into_inner()
    }

    /// Refuses a write once any lock was found poisoned.
    pub(crate) fn check(&self) -> Result<()> {
        match self.first.get() {
            Some(what) => Err(Error::Poisoned { what }),
            None => Ok(()),
        }
    }

    pub(crate) fn lock<'a, T>(&self, m: &'a Mutex<T>, what: &'static str) -> MutexGuard<'a, T> {
        m.lock().unwrap_or_else(|p| self.note(what, p))
    }

    pub(crate) fn read<'a, T>(
        &self,
        l: &'a RwLock<T>,
        what: &'static str,
    ) -> RwLockReadGuard<'a, T> {
        l.read().unwrap_or_else(|p| self.note(what, p))
    }

    pub(crate) fn write<'a, T>(
        &self,
        l: &'a RwLock<T>,
        what: &'static str,
    ) -> RwLockWriteGuard<'a, T> {
        l.write().unwrap_or_else(|p| self.note(what, p))
    }

    /// `cv.wait_timeout` (or `cv.wait` with no timeout); true if it timed out.
    pub(crate) fn wait<'a, T>(
        &self,
        cv: &Condvar,
        guard: MutexGuard<'a, T>,
        timeout: Option<Duration>,
        what: &'static str,
    ) -> (MutexGuard<'a, T>, bool) {
        match timeout {
            Some(d) => {
                let (g, r) = cv
                    .wait_timeout(guard, d)
                    .unwrap_or_else(|p| self.note(what, p));
                (g, r.timed_out())
            }
            None => (cv.wait(guard).unwrap_or_else(|p| self.note(what, p)), false),
        }
    }
}
