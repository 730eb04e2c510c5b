//! Sessions (`X-Instance-Session: {"sessionID":"s1","sessionTTL":60,"concurrency":1}`): calls of
//! one function carrying one session ID go to one instance.
//!
//! The first call of a session is invoked normally and the instance that served it is
//! remembered (calls that arrive while the first is running wait for it, so they cannot pick
//! another instance); later calls name that instance (`InvokeRequest.instance`, which the proxy
//! delivers to that very instance, on this node or forwarded to its node). If the proxy answers
//! that the instance is gone (not found: stopped when idle, or exited for good), the session
//! forgets it and the call is invoked normally, binding the session to the new instance; if the
//! instance died during the call (instance fatal, 1007), that call is not repeated (it may have
//! run), but the session's next call goes elsewhere. These decisions read the reply's error
//! kind, never its text.
//!
//! A session is forgotten `sessionTTL` seconds (default 600, at most 86,400) after its last
//! call; at most [`MAX_SESSIONS`] (100,000) are kept, the least recently used dropped first.
//! `concurrency` is validated (1 to 65,535) but not enforced here: the instance's own
//! concurrency applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::Value;
use yr_proto::{ErrorKind, InvokeReply};

use super::{kind_of, lock, send, Front, Invocation};
use crate::rest::Problem;

/// Sessions remembered at most.
pub(super) const MAX_SESSIONS: usize = 100_000;
const DEFAULT_SESSION_TTL: u64 = 600;
const MAX_SESSION_TTL: u64 = 86_400;
const MAX_SESSION_ID: usize = 256;

/// What `X-Instance-Session` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SessionHeader {
    id: String,
    ttl: Duration,
}

/// The instance a session is bound to (`None` until its first call has been served). Calls of
/// the session hold this lock while binding, so concurrent first calls cannot bind two.
type Binding = Arc<tokio::sync::Mutex<Option<String>>>;

/// (function, session ID): one session ID may be used with several functions, each bound to an
/// instance of its own.
type SessionKey = (String, String);

struct SessionSlot {
    binding: Binding,
    expires: Instant,
    /// Its key in the recency index.
    used: u64,
}

#[derive(Default)]
struct SessionTable {
    slots: HashMap<SessionKey, SessionSlot>,
    /// Last use → key, least recent first.
    recency: BTreeMap<u64, SessionKey>,
    tick: u64,
}

pub(super) struct Sessions {
    max: usize,
    table: Mutex<SessionTable>,
}

impl Sessions {
    pub(super) fn new(max: usize) -> Sessions {
        Sessions {
            max: max.max(1),
            table: Mutex::new(SessionTable::default()),
        }
    }

    /// The session's binding, created if new or expired; its TTL starts again.
    fn binding(&self, key: SessionKey, ttl: Duration) -> Binding {
        let now = Instant::now();
        let mut guard = lock(&self.table);
        let t = &mut *guard;
        t.tick += 1;
        let tick = t.tick;
        // Forget sessions whose time is up, least recently used first (cheap: stops at the
        // first live one; the others go when they reach the front or the table is full).
        while let Some((&used, k)) = t.recency.first_key_value() {
            if t.slots.get(k).is_some_and(|s| s.expires > now) {
                break;
            }
            if let Some(k) = t.recency.remove(&used) {
                t.slots.remove(&k);
            }
        }
        if let Some(s) = t.slots.get_mut(&key) {
            if s.expires > now {
                t.recency.remove(&s.used);
                s.used = tick;
                s.expires = now + ttl;
                let b = Arc::clone(&s.binding);
                t.recency.insert(tick, key);
                return b;
            }
        }
        if let Some(old) = t.slots.remove(&key) {
            t.recency.remove(&old.used);
        }
        while t.slots.len() >= self.max {
            let Some((_, k)) = t.recency.pop_first() else {
                break;
            };
            t.slots.remove(&k);
        }
        let binding = Binding::default();
        t.slots.insert(
            key.clone(),
            SessionSlot {
                binding: Arc::clone(&binding),
                expires: now + ttl,
                used: tick,
            },
        );
        t.recency.insert(tick, key);
        binding
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.table).slots.len()
    }
}

/// A whole number in a JSON field, sent as a number or as a string (openYuanrong clients send
/// both).
fn whole(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The session a call's `X-Instance-Session` header asks for, if any.
pub(super) fn parse(headers: &HeaderMap) -> Result<Option<SessionHeader>, Problem> {
    let Some(raw) = headers.get("x-instance-session") else {
        return Ok(None);
    };
    let bad = |why: String| {
        Problem::bad_request(format!(
            "X-Instance-Session: {why}; expected JSON like \
             {{\"sessionID\":\"s1\",\"sessionTTL\":60,\"concurrency\":1}}"
        ))
    };
    let text = raw
        .to_str()
        .map_err(|_| bad("the value is not visible ASCII".into()))?;
    let v: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("the value is not JSON ({e})")))?;
    let Some(obj) = v.as_object() else {
        return Err(bad("the value is not a JSON object".into()));
    };
    let id = match obj.get("sessionID") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SESSION_ID => s.clone(),
        Some(Value::String(s)) if s.is_empty() => return Err(bad("sessionID is empty".into())),
        Some(Value::String(_)) => {
            return Err(bad(format!(
                "sessionID is longer than {MAX_SESSION_ID} bytes"
            )))
        }
        None | Some(Value::Null) => return Err(bad("sessionID is missing".into())),
        Some(other) => return Err(bad(format!("sessionID {other} is not a string"))),
    };
    let ttl = match obj.get("sessionTTL") {
        None | Some(Value::Null) => DEFAULT_SESSION_TTL,
        Some(v) => match whole(v) {
            Some(0) => DEFAULT_SESSION_TTL,
            Some(n) if n <= MAX_SESSION_TTL => n,
            _ => {
                return Err(bad(format!(
                    "sessionTTL {v} is not a whole number of seconds from 0 (the default, \
                     {DEFAULT_SESSION_TTL}) to {MAX_SESSION_TTL}"
                )))
            }
        },
    };
    match obj.get("concurrency") {
        None | Some(Value::Null) => {}
        Some(v) => match whole(v) {
            Some(n) if (1..=65_535).contains(&n) => {}
            _ => {
                return Err(bad(format!(
                    "concurrency {v} is not a whole number from 1 to 65535"
                )))
            }
        },
    }
    Ok(Some(SessionHeader {
        id,
        ttl: Duration::from_secs(ttl),
    }))
}

/// Sends the call of session `session` to the session's instance, binding the session to one
/// first if it has none.
pub(super) async fn invoke(
    front: &Front,
    inv: &Invocation,
    session: &SessionHeader,
) -> Result<InvokeReply, Problem> {
    let binding = front
        .sessions
        .binding((inv.function.clone(), session.id.clone()), session.ttl);
    // The instance that just answered "not found": forgotten, and not tried again.
    let mut gone: Option<String> = None;
    loop {
        let mut bound = binding.lock().await;
        if gone.is_some() && *bound == gone {
            *bound = None;
        }
        match bound.clone() {
            Some(instance) => {
                // Bound: later calls need not wait for this one.
                drop(bound);
                let r = send(front, inv, instance.clone()).await?;
                match kind_of(&r) {
                    // Gone before the call reached it (stopped when idle, or no longer
                    // running): nothing ran, so invoking afresh is safe.
                    ErrorKind::ErrorNotFound if gone.is_none() => {
                        tracing::debug!(%instance, function = %inv.function,
                            "session instance gone; choosing another");
                        gone = Some(instance);
                        continue;
                    }
                    // It died, perhaps during the call: that call may have run, so it is
                    // not repeated, but the next call of the session goes elsewhere.
                    ErrorKind::ErrorInstanceFatal => {
                        let mut bound = binding.lock().await;
                        if bound.as_deref() == Some(instance.as_str()) {
                            *bound = None;
                        }
                    }
                    _ => {}
                }
                return Ok(r);
            }
            None => {
                // Keeps the lock while the first call runs: the session's other calls wait to
                // learn its instance instead of each choosing one.
                let r = send(front, inv, String::new()).await?;
                if !r.instance_id.is_empty() {
                    *bound = Some(r.instance_id.clone());
                }
                return Ok(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_are_bounded_and_refreshed() {
        let s = Sessions::new(2);
        let ttl = Duration::from_secs(60);
        let key = |id: &str| ("f".to_string(), id.to_string());
        let a = s.binding(key("a"), ttl);
        let _b = s.binding(key("b"), ttl);
        // a used again: b is now the least recently used.
        assert!(Arc::ptr_eq(&a, &s.binding(key("a"), ttl)));
        let _c = s.binding(key("c"), ttl);
        assert_eq!(s.len(), 2);
        assert!(Arc::ptr_eq(&a, &s.binding(key("a"), ttl)));
        // The same session ID with another function is another session.
        let other = s.binding(("g".into(), "a".into()), ttl);
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(s.len(), 2);
        // Expired sessions start afresh and are cleared.
        let s = Sessions::new(10);
        let x = s.binding(key("x"), Duration::ZERO);
        assert!(!Arc::ptr_eq(&x, &s.binding(key("x"), ttl)));
        assert_eq!(s.len(), 1);
    }

    fn with_session(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-instance-session",
            HeaderValue::from_str(v).expect("value"),
        );
        h
    }

    #[test]
    fn session_headers() {
        assert_eq!(parse(&HeaderMap::new()).ok(), Some(None));
        let s = parse(&with_session(
            r#"{"sessionID":"s1","sessionTTL":60,"concurrency":1}"#,
        ));
        assert_eq!(
            s.ok().flatten(),
            Some(SessionHeader {
                id: "s1".into(),
                ttl: Duration::from_secs(60)
            })
        );
        let s = parse(&with_session(r#"{"sessionID":"s1","sessionTTL":"30"}"#));
        assert_eq!(
            s.ok().flatten().map(|s| s.ttl),
            Some(Duration::from_secs(30))
        );
        let s = parse(&with_session(r#"{"sessionID":"s1"}"#));
        assert_eq!(
            s.ok().flatten().map(|s| s.ttl),
            Some(Duration::from_secs(DEFAULT_SESSION_TTL))
        );
        for bad in [
            "nope",
            "[]",
            r#"{"sessionTTL":5}"#,
            r#"{"sessionID":""}"#,
            r#"{"sessionID":7}"#,
            r#"{"sessionID":"s","sessionTTL":-1}"#,
            r#"{"sessionID":"s","sessionTTL":1e9}"#,
            r#"{"sessionID":"s","concurrency":0}"#,
        ] {
            assert!(parse(&with_session(bad)).is_err(), "{bad}");
        }
    }
}
