//! Map keys that can be looked up without allocating: the owned key is stored, a borrowed view
//! with the same `Hash` is used for lookups (hashbrown's `Equivalent`).

use hashbrown::Equivalent;

/// Owned (ns, svc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SvcKey {
    pub ns: String,
    pub svc: String,
}

/// Borrowed (ns, svc); hashes exactly like [`SvcKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SvcRef<'a> {
    pub ns: &'a str,
    pub svc: &'a str,
}

impl Equivalent<SvcKey> for SvcRef<'_> {
    fn equivalent(&self, key: &SvcKey) -> bool {
        self.ns == key.ns && self.svc == key.svc
    }
}

impl SvcRef<'_> {
    pub fn to_owned(self) -> SvcKey {
        SvcKey { ns: self.ns.to_owned(), svc: self.svc.to_owned() }
    }
}

/// Owned (ns, uid, svc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LinkKey {
    pub ns: String,
    pub uid: String,
    pub svc: String,
}

/// Borrowed (ns, uid, svc); hashes exactly like [`LinkKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LinkRef<'a> {
    pub ns: &'a str,
    pub uid: &'a str,
    pub svc: &'a str,
}

impl Equivalent<LinkKey> for LinkRef<'_> {
    fn equivalent(&self, key: &LinkKey) -> bool {
        self.uid == key.uid && self.svc == key.svc && self.ns == key.ns
    }
}

impl LinkRef<'_> {
    pub fn to_owned(self) -> LinkKey {
        LinkKey { ns: self.ns.to_owned(), uid: self.uid.to_owned(), svc: self.svc.to_owned() }
    }
}
