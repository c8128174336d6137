//! What the token check tells its span from deep inside the auth code, without a trace
//! handle passed through every call: how the token was checked and whether the request
//! waited for a key fetch. Recorded into a task-local slot that [`noting`] opens around a
//! sampled request's token check; outside one every call here is a no-op (one thread-local
//! look, no allocation).

use std::cell::RefCell;
use std::future::Future;
use std::time::SystemTime;

tokio::task_local! {
    static NOTES: RefCell<Notes>;
}

/// What the token check recorded.
#[derive(Debug, Default)]
pub struct Notes {
    /// How it was checked: `cache_hit`, `verification`, `introspection`, `session`.
    pub check: Option<&'static str>,
    /// A key fetch the request asked for and waited on.
    pub key_fetch: Option<KeyFetch>,
}

/// A request's wait for its issuer's keys, fetched for an unknown `kid`.
#[derive(Debug)]
pub struct KeyFetch {
    /// The issuer's name.
    pub issuer: String,
    /// When the wait began and ended.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Whether a fetch finished while the request waited.
    pub fetched: bool,
}

/// Run `f` with a slot for notes, and return them with its output.
pub async fn noting<F: Future>(f: F) -> (F::Output, Notes) {
    NOTES
        .scope(RefCell::new(Notes::default()), async {
            let out = f.await;
            let notes = NOTES.try_with(|n| n.take()).unwrap_or_default();
            (out, notes)
        })
        .await
}

/// Record how the token was checked.
pub fn note_check(how: &'static str) {
    let _ = NOTES.try_with(|n| n.borrow_mut().check = Some(how));
}

/// When a key-fetch wait starts: the time, only inside [`noting`].
pub fn key_wait_start() -> Option<SystemTime> {
    NOTES.try_with(|_| SystemTime::now()).ok()
}

/// The key-fetch wait that began at `start` ended.
pub fn note_key_fetch(start: Option<SystemTime>, issuer: &str, fetched: bool) {
    let Some(start) = start else { return };
    let _ = NOTES.try_with(|n| {
        n.borrow_mut().key_fetch = Some(KeyFetch {
            issuer: issuer.to_string(),
            start,
            end: SystemTime::now(),
            fetched,
        })
    });
}
