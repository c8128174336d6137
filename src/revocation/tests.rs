use super::*;

fn with(ttl_secs: u64, max_entries: usize) -> (Revocations, Arc<ArcSwap<RevocationPart>>) {
    let part = Arc::new(ArcSwap::from_pointee(RevocationPart {
        redis: None,
        ttl: Duration::from_secs(ttl_secs),
        max_entries,
    }));
    (Revocations::new(Arc::clone(&part)), part)
}

#[test]
fn a_revocation_refuses_what_was_issued_before_it_and_only_that() {
    let list = Revocations::default();
    assert!(list.is_empty());
    assert!(!list.refuses(Some("alice"), None, None, None));
    let at = list.revoke(Revocation::Sub("alice".into())).unwrap();
    assert!(!list.is_empty());
    assert_eq!(list.len(), 1);
    // Issued before, in the same second (whole seconds cannot tell), or at an unknown time.
    assert!(list.refuses(Some("alice"), None, None, Some(at - 100)));
    assert!(list.refuses(Some("alice"), None, None, Some(at)));
    assert!(list.refuses(Some("alice"), None, None, None));
    // Issued after: a new login passes.
    assert!(!list.refuses(Some("alice"), None, None, Some(at + 1)));
    // Others pass; an id of another kind with the same text is another id.
    assert!(!list.refuses(Some("bob"), None, None, None));
    assert!(!list.refuses(None, Some("alice"), Some("alice"), None));
    // The hashed form decides alike, and asks only for the kinds that have entries.
    let asked = std::cell::Cell::new(0);
    let tags = |kind: Kind| {
        asked.set(asked.get() + 1);
        match kind {
            Kind::Sub => Some(Tag::of("alice")),
            Kind::Sid => Some(Tag::of("s")),
            Kind::Jti => None,
        }
    };
    assert!(list.refuses_with(Some(at), tags));
    assert_eq!(asked.get(), 1, "only sub has entries");
    assert!(!list.refuses_with(Some(at + 1), tags));
    assert!(!list.refuses_with(None, |_| None));
    assert_eq!(Tag::from_bits(Tag::of("x").to_bits()), Some(Tag::of("x")));
    assert_eq!(Tag::from_bits(0), None);
}

#[test]
fn each_kind_matches_its_own_id() {
    let list = Revocations::default();
    list.revoke(Revocation::new(Kind::Sid, "session-1"))
        .unwrap();
    list.revoke(Revocation::new(Kind::Jti, "token-1")).unwrap();
    assert!(list.refuses(Some("anyone"), Some("session-1"), None, None));
    assert!(list.refuses(None, None, Some("token-1"), None));
    assert!(!list.refuses(Some("session-1"), None, Some("session-1"), None));
    assert!(!list.refuses(Some("token-1"), Some("token-1"), None, None));
    assert!(!list.refuses(Some("anyone"), Some("session-2"), Some("token-2"), None));
}

#[test]
fn bad_ids_are_refused_and_nothing_is_revoked() {
    let list = Revocations::default();
    assert_eq!(
        list.revoke(Revocation::Sub(String::new())),
        Err(RevokeError::Empty)
    );
    assert_eq!(
        list.revoke(Revocation::Jti("x".repeat(MAX_VALUE_BYTES + 1))),
        Err(RevokeError::TooLong)
    );
    list.revoke(Revocation::Jti("x".repeat(MAX_VALUE_BYTES)))
        .unwrap();
    assert_eq!(list.len(), 1);
}

#[test]
fn entries_from_the_fleet_keep_the_later_time() {
    let list = Revocations::default();
    let now = unix_now();
    let alice: Arc<str> = Arc::from("alice");
    assert_eq!(list.apply([(Kind::Sub, Arc::clone(&alice), now - 50)]), 1);
    assert!(!list.refuses(Some("alice"), None, None, Some(now - 40)));
    // An older copy of it changes nothing; a later one moves it.
    assert_eq!(list.apply([(Kind::Sub, Arc::clone(&alice), now - 60)]), 0);
    assert_eq!(list.apply([(Kind::Sub, Arc::clone(&alice), now - 50)]), 0);
    assert_eq!(list.apply([(Kind::Sub, Arc::clone(&alice), now - 10)]), 1);
    assert!(list.refuses(Some("alice"), None, None, Some(now - 40)));
    assert_eq!(list.len(), 1);
    assert_eq!(list.entries().len(), 1);
}

#[test]
fn entries_past_the_ttl_go_and_the_list_is_free_again() {
    let (list, part) = with(100, 10);
    let now = unix_now();
    // Already past the TTL: never taken.
    assert_eq!(list.apply([(Kind::Sub, Arc::from("old"), now - 100)]), 0);
    assert_eq!(list.apply([(Kind::Sub, Arc::from("a"), now - 50)]), 1);
    list.sweep();
    assert_eq!(list.len(), 1, "not due");
    // A reload that shortens the TTL: the next sweep drops it.
    part.store(Arc::new(RevocationPart {
        redis: None,
        ttl: Duration::from_secs(20),
        max_entries: 10,
    }));
    list.sweep();
    assert_eq!(list.len(), 0);
    assert!(list.is_empty(), "back on the one-load path");
    assert!(!list.refuses(Some("a"), None, None, None));
}

#[test]
fn at_the_cap_the_oldest_entries_are_evicted_and_counted() {
    let (list, part) = with(3600, 3);
    let now = unix_now();
    let evicted = || METRICS.session_revocations_evicted.get();
    let before = evicted();
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        list.apply([(Kind::Sid, Arc::from(*name), now - 100 + i as u64)]);
    }
    assert_eq!(list.len(), 3);
    assert!(evicted() >= before + 2, "two evicted");
    for gone in ["a", "b"] {
        assert!(!list.refuses(None, Some(gone), None, None), "{gone}");
    }
    for kept in ["c", "d", "e"] {
        assert!(list.refuses(None, Some(kept), None, None), "{kept}");
    }
    // A lower cap after a reload applies at the next sweep.
    part.store(Arc::new(RevocationPart {
        redis: None,
        ttl: Duration::from_secs(3600),
        max_entries: 1,
    }));
    list.sweep();
    assert_eq!(list.len(), 1);
    assert!(list.refuses(None, Some("e"), None, None));
}

#[test]
fn the_outbox_holds_what_redis_has_not_taken_in_order() {
    let (list, _part) = with(3600, 2);
    for name in ["a", "b", "c"] {
        list.revoke(Revocation::Sub(name.into())).unwrap();
    }
    let out = list.outgoing(10);
    let names: Vec<&str> = out.iter().map(|o| &*o.value).collect();
    assert_eq!(names, ["b", "c"], "bounded by the cap, oldest dropped");
    list.sent(out[0].seq);
    let left: Vec<String> = list
        .outgoing(10)
        .iter()
        .map(|o| o.value.to_string())
        .collect();
    assert_eq!(left, ["c"]);
    list.revoke(Revocation::Sub("d".into())).unwrap();
    list.discard_outgoing();
    assert!(list.outgoing(10).is_empty());
}
