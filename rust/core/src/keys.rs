//! The bounded `service::operation` key table.
//!
//! Keys are interned to dense ids `0..len()`; once `max_keys` are known, every new name maps to
//! the single [`OVERFLOW`] id and is counted, so memory stays bounded whatever the traffic.
//! The overflow key is then one more key: the featurizer keeps its latency model and context in
//! a field of their own, learned and judged like any key's, so per-key state grows with the keys
//! seen (plus one), never with `max_keys`.
//! Look-ups hash the two names in place (no allocation); only a new key allocates its name.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// A dense key id.
pub type KeyId = u32;

/// The id shared by every key past the table's bound.
pub const OVERFLOW: KeyId = u32::MAX;

const NONE: u32 = u32::MAX;

/// Name of the overflow key in reports.
pub const OVERFLOW_NAME: &str = "<overflow>";

/// FNV-1a over the two names with a separator byte that cannot occur in UTF-8.
fn hash(service: &str, operation: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in service
        .as_bytes()
        .iter()
        .chain([0xffu8].iter())
        .chain(operation.as_bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The map's keys are already FNV-1a hashes: pass them through instead of hashing again.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashIndex = HashMap<u64, u32, BuildHasherDefault<PassThrough>>;

/// A dense service id: the services of the keys held, numbered in order of appearance.
pub type ServiceId = u32;

/// Interned keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyTable {
    max_keys: u32,
    names: Vec<(Box<str>, Box<str>)>,
    /// Each key's service id.
    key_service: Vec<ServiceId>,
    /// Service name → id (at most one per key, so bounded like the keys).
    services: std::collections::BTreeMap<Box<str>, ServiceId>,
    /// hash → first id with that hash; `next` chains ids sharing a hash.
    heads: HashIndex,
    next: Vec<u32>,
    overflowed: u64,
}

impl KeyTable {
    /// An empty table that will hold at most `max_keys` keys.
    pub fn new(max_keys: u32) -> Self {
        Self {
            max_keys,
            ..Default::default()
        }
    }

    /// The id of `service::operation`, adding it if there is room, else [`OVERFLOW`] (counted).
    /// The second value is true when the key was added by this call.
    pub fn intern(&mut self, service: &str, operation: &str) -> (KeyId, bool) {
        let h = hash(service, operation);
        let mut id = self.heads.get(&h).copied().unwrap_or(NONE);
        let head = id;
        while id != NONE {
            let (s, o) = &self.names[id as usize];
            if &**s == service && &**o == operation {
                return (id, false);
            }
            id = self.next[id as usize];
        }
        if self.names.len() as u32 >= self.max_keys {
            self.overflowed += 1;
            return (OVERFLOW, false);
        }
        let new = self.names.len() as u32;
        let n = self.services.len() as ServiceId;
        let sid = *self.services.entry(service.into()).or_insert(n);
        self.key_service.push(sid);
        self.names.push((service.into(), operation.into()));
        self.next.push(head);
        self.heads.insert(h, new);
        (new, true)
    }

    /// The id of a known key, without adding it.
    pub fn get(&self, service: &str, operation: &str) -> Option<KeyId> {
        let mut id = self
            .heads
            .get(&hash(service, operation))
            .copied()
            .unwrap_or(NONE);
        while id != NONE {
            let (s, o) = &self.names[id as usize];
            if &**s == service && &**o == operation {
                return Some(id);
            }
            id = self.next[id as usize];
        }
        None
    }

    /// The service id of a key; `None` for [`OVERFLOW`] or an unknown id.
    pub fn service_of(&self, id: KeyId) -> Option<ServiceId> {
        self.key_service.get(id as usize).copied()
    }

    /// `(service, operation)` of a key; `None` for [`OVERFLOW`] or an unknown id.
    pub fn names(&self, id: KeyId) -> Option<(&str, &str)> {
        self.names.get(id as usize).map(|(s, o)| (&**s, &**o))
    }

    /// `service::operation`, or [`OVERFLOW_NAME`].
    pub fn display(&self, id: KeyId) -> String {
        match self.names(id) {
            Some((s, o)) => format!("{s}::{o}"),
            None => OVERFLOW_NAME.to_string(),
        }
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The bound.
    pub fn max_keys(&self) -> u32 {
        self.max_keys
    }

    /// Look-ups that fell into the overflow key.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Approximate heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        let names: usize = self.names.iter().map(|(s, o)| s.len() + o.len()).sum();
        names
            + self.names.capacity() * std::mem::size_of::<(Box<str>, Box<str>)>()
            + self.key_service.capacity() * 4
            + self.services.len() * (16 + 4 + 32)
            + self.services.keys().map(|s| s.len()).sum::<usize>()
            + self.next.capacity() * 4
            + self.heads.capacity() * (8 + 4 + 8)
    }
}

/// Glob match with `*` (any run) and `?` (one char); everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, usize::MAX, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = pi;
            pi += 1;
            mark = ti;
        } else if star != usize::MAX {
            pi = star + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_and_bounds() {
        let mut t = KeyTable::new(2);
        assert_eq!(t.intern("a", "x"), (0, true));
        assert_eq!(t.intern("a", "x"), (0, false));
        assert_eq!(t.intern("a", "y"), (1, true));
        assert_eq!(t.intern("b", "x"), (OVERFLOW, false));
        assert_eq!(t.overflowed(), 1);
        assert_eq!(t.get("a", "y"), Some(1));
        assert_eq!(t.get("b", "x"), None);
        assert_eq!(t.display(1), "a::y");
        assert_eq!(t.display(OVERFLOW), OVERFLOW_NAME);
        assert_eq!(
            (t.service_of(0), t.service_of(1), t.services.len()),
            (Some(0), Some(0), 1)
        );
        assert_eq!(t.service_of(OVERFLOW), None);
    }

    #[test]
    fn separator_is_unambiguous() {
        let mut t = KeyTable::new(10);
        let (a, _) = t.intern("ab", "c");
        let (b, _) = t.intern("a", "bc");
        assert_ne!(a, b);
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match(
            "oteldemo.*/Place*",
            "oteldemo.CheckoutService/PlaceOrder"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("*d", "abcd"));
        assert!(!glob_match("*x*", "abcd"));
    }
}
