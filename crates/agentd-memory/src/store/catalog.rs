//! The in-memory catalog: compact metadata of every live item, rebuilt from sled on open.
//!
//! Filters are evaluated here, on interned integers, never on sled records: a BM25 hit, a vector
//! candidate and a listing row all cost one hash lookup plus a few integer compares. The catalog
//! also knows which version of each key is current, so "superseded" is a flag flip, and the
//! immutable text index never has to be rewritten when an item is superseded.
//!
//! Memory: about 80 bytes per item plus interned names (shared), so a million items cost ~80 MB.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::filter::Filter;
use crate::item::{ItemId, MemoryItem, Readers};

/// An interned name. `NONE` stands for "absent" (no stage, no key).
pub(crate) type Sym = u32;
pub(crate) const NONE: Sym = 0;
/// A name the catalog has never seen: matches nothing.
const UNKNOWN: Sym = u32::MAX;

/// Multiply-shift hasher for integer keys (seq numbers, slots): far cheaper than SipHash on the
/// per-hit lookup path, and keys are store-assigned, so there is no flooding concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Interns strings to small integers (starting at 1; 0 is [`NONE`]).
#[derive(Default)]
pub(crate) struct Interner {
    map: HashMap<Box<str>, Sym>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, name: &str) -> Sym {
        if let Some(&sym) = self.map.get(name) {
            return sym;
        }
        self.names.push(name.into());
        let sym = self.names.len() as Sym;
        self.map.insert(name.into(), sym);
        sym
    }

    pub(crate) fn get(&self, name: &str) -> Sym {
        self.map.get(name).copied().unwrap_or(UNKNOWN)
    }

    pub(crate) fn name(&self, sym: Sym) -> &str {
        match sym {
            NONE | UNKNOWN => "",
            s => &self.names[s as usize - 1],
        }
    }
}

/// Interns sorted sets of symbols (reader sets, tag sets); set 0 is the empty / "all" set.
#[derive(Default)]
struct SetInterner {
    map: HashMap<Vec<Sym>, u32>,
    sets: Vec<Vec<Sym>>,
}

impl SetInterner {
    fn intern(&mut self, mut set: Vec<Sym>) -> u32 {
        if set.is_empty() {
            return 0;
        }
        set.sort_unstable();
        set.dedup();
        if let Some(&id) = self.map.get(&set) {
            return id;
        }
        self.sets.push(set.clone());
        let id = self.sets.len() as u32;
        self.map.insert(set, id);
        id
    }

    fn get(&self, id: u32) -> &[Sym] {
        if id == 0 {
            &[]
        } else {
            &self.sets[id as usize - 1]
        }
    }
}

/// Compact metadata of one live item.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub id: ItemId,
    pub seq: u64,
    pub ns: Sym,
    pub kind: Sym,
    pub stage: Sym,
    pub role: Sym,
    pub node: Sym,
    pub key: Sym,
    pub round: u32,
    pub version: u32,
    /// 0: readable by all; otherwise a reader set.
    pub readers: u32,
    /// 0: no tags; otherwise a tag set.
    pub tags: u32,
    /// Row of the item's vector in its namespace's vector index.
    pub row: u32,
    pub superseded: bool,
}

/// Per-namespace bookkeeping.
#[derive(Default)]
pub(crate) struct NamespaceEntries {
    /// Slots of the namespace's items, in write (sequence) order.
    pub slots: Vec<u32>,
    /// Items per kind, so a listing of absent kinds costs nothing.
    pub kinds: IntMap<Sym, u32>,
}

impl NamespaceEntries {
    /// Whether the namespace may hold items passing `filter`'s kind restriction.
    pub fn may_hold(&self, filter: &CompiledFilter) -> bool {
        filter
            .kinds
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| self.kinds.contains_key(k)))
    }
}

/// Metadata of all live items.
#[derive(Default)]
pub(crate) struct Catalog {
    pub syms: Interner,
    reader_sets: SetInterner,
    tag_sets: SetInterner,
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_id: HashMap<ItemId, u32>,
    by_seq: IntMap<u64, u32>,
    /// (namespace, key) -> slot of the current version.
    keys: HashMap<(Sym, Sym), u32>,
    pub namespaces: IntMap<Sym, NamespaceEntries>,
    live: usize,
}

impl Catalog {
    /// Number of live items (current and superseded).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn slot_of_id(&self, id: &ItemId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub fn slot_of_seq(&self, seq: u64) -> Option<u32> {
        self.by_seq.get(&seq).copied()
    }

    pub fn entry(&self, slot: u32) -> &Entry {
        self.entries[slot as usize]
            .as_ref()
            .expect("catalog slots handed out are live")
    }

    /// The current version of `key` in `namespace`: (slot, version).
    pub fn current_version(&self, namespace: &str, key: &str) -> Option<(u32, u32)> {
        let ns = self.syms.get(namespace);
        let key = self.syms.get(key);
        let slot = *self.keys.get(&(ns, key))?;
        Some((slot, self.entry(slot).version))
    }

    /// Adds an item (its row in the vector index is given); returns its slot. Marks the previous
    /// version of its key superseded when this one is newer; if an equal or newer version is
    /// already current (replay out of order), this item is the superseded one.
    pub fn insert(&mut self, item: &MemoryItem, row: u32) -> u32 {
        let ns = self.syms.intern(&item.namespace);
        let kind = self.syms.intern(item.kind.as_str());
        let stage = item.stage.as_deref().map_or(NONE, |s| self.syms.intern(s));
        let role = self.syms.intern(&item.producer.role);
        let node = self.syms.intern(&item.producer.node);
        let key = item.key.as_deref().map_or(NONE, |k| self.syms.intern(k));
        let readers = match &item.readers {
            Readers::All => 0,
            Readers::Roles(roles) => {
                let set: Vec<Sym> = roles.iter().map(|r| self.syms.intern(r)).collect();
                // An explicit empty reader list means "nobody": keep it distinct from "all".
                if set.is_empty() {
                    u32::MAX
                } else {
                    self.reader_sets.intern(set)
                }
            }
        };
        let tags = {
            let set: Vec<Sym> = item.tags.iter().map(|t| self.syms.intern(t)).collect();
            self.tag_sets.intern(set)
        };
        let mut entry = Entry {
            id: item.id,
            seq: item.seq,
            ns,
            kind,
            stage,
            role,
            node,
            key,
            round: item.producer.round,
            version: item.version,
            readers,
            tags,
            row,
            superseded: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push(None);
                (self.entries.len() - 1) as u32
            }
        };
        if key != NONE {
            match self.keys.get(&(ns, key)).copied() {
                Some(prev) => {
                    let prev_entry = self.entries[prev as usize].as_mut().expect("live slot");
                    if prev_entry.version < entry.version {
                        prev_entry.superseded = true;
                        self.keys.insert((ns, key), slot);
                    } else {
                        entry.superseded = true;
                    }
                }
                None => {
                    self.keys.insert((ns, key), slot);
                }
            }
        }
        let ns_entries = self.namespaces.entry(ns).or_default();
        ns_entries.slots.push(slot);
        *ns_entries.kinds.entry(kind).or_default() += 1;
        self.by_id.insert(entry.id, slot);
        self.by_seq.insert(entry.seq, slot);
        self.entries[slot as usize] = Some(entry);
        self.live += 1;
        slot
    }

    /// Forgets every item of a namespace; returns their ids.
    pub fn remove_namespace(&mut self, namespace: &str) -> Vec<ItemId> {
        let ns = self.syms.get(namespace);
        let Some(ns_entries) = self.namespaces.remove(&ns) else {
            return Vec::new();
        };
        let mut ids = Vec::with_capacity(ns_entries.slots.len());
        for slot in ns_entries.slots {
            if let Some(entry) = self.entries[slot as usize].take() {
                self.by_id.remove(&entry.id);
                self.by_seq.remove(&entry.seq);
                if entry.key != NONE && self.keys.get(&(ns, entry.key)) == Some(&slot) {
                    self.keys.remove(&(ns, entry.key));
                }
                ids.push(entry.id);
                self.free.push(slot);
                self.live -= 1;
            }
        }
        ids
    }

    /// Slots of all versions of `key` in `namespace`, oldest first.
    pub fn history(&self, namespace: &str, key: &str) -> Vec<u32> {
        let ns = self.syms.get(namespace);
        let key = self.syms.get(key);
        let Some(entries) = self.namespaces.get(&ns) else {
            return Vec::new();
        };
        let mut slots: Vec<u32> = entries
            .slots
            .iter()
            .copied()
            .filter(|&s| self.entry(s).key == key)
            .collect();
        slots.sort_by_key(|&s| self.entry(s).version);
        slots
    }

    /// Turns a filter into interned form for fast evaluation.
    pub fn compile(&self, filter: &Filter) -> CompiledFilter {
        let syms = |names: &mut dyn Iterator<Item = &str>| -> Option<Vec<Sym>> {
            let v: Vec<Sym> = names.map(|n| self.syms.get(n)).collect();
            if v.is_empty() { None } else { Some(v) }
        };
        let tags: Vec<Sym> = filter.tags.iter().map(|t| self.syms.get(t)).collect();
        CompiledFilter {
            namespaces: syms(&mut filter.namespaces.iter().map(String::as_str)),
            kinds: syms(&mut filter.kinds.iter().map(|k| k.as_str())),
            stages: syms(&mut filter.stages.iter().map(String::as_str)),
            roles: syms(&mut filter.producer_roles.iter().map(String::as_str)),
            nodes: syms(&mut filter.producer_nodes.iter().map(String::as_str)),
            rounds: filter.rounds,
            reader: filter.reader.as_deref().map(|r| self.syms.get(r)),
            tags,
            include_superseded: filter.include_superseded,
            max_seq: filter.max_seq,
        }
    }

    /// Whether the entry in `slot` passes `filter`.
    #[inline]
    pub fn matches(&self, filter: &CompiledFilter, entry: &Entry) -> bool {
        if entry.superseded && !filter.include_superseded {
            return false;
        }
        if let Some(max) = filter.max_seq
            && entry.seq > max
        {
            return false;
        }
        if let Some(ns) = &filter.namespaces
            && !ns.contains(&entry.ns)
        {
            return false;
        }
        if let Some(kinds) = &filter.kinds
            && !kinds.contains(&entry.kind)
        {
            return false;
        }
        if let Some(stages) = &filter.stages
            && !stages.contains(&entry.stage)
        {
            return false;
        }
        if let Some(roles) = &filter.roles
            && !roles.contains(&entry.role)
        {
            return false;
        }
        if let Some(nodes) = &filter.nodes
            && !nodes.contains(&entry.node)
        {
            return false;
        }
        if let Some((a, b)) = filter.rounds
            && !(a..=b).contains(&entry.round)
        {
            return false;
        }
        if let Some(reader) = filter.reader {
            match entry.readers {
                0 => {}
                u32::MAX => return false,
                set => {
                    if !self.reader_sets.get(set).contains(&reader) {
                        return false;
                    }
                }
            }
        }
        if !filter.tags.is_empty() {
            let tags = self.tag_sets.get(entry.tags);
            if !filter.tags.iter().all(|t| tags.contains(t)) {
                return false;
            }
        }
        true
    }

    /// Whether the live item with sequence number `seq` passes `filter`; `None` if no live item
    /// has that sequence number (deleted, or a stale index entry).
    #[inline]
    pub fn matches_seq(&self, filter: &CompiledFilter, seq: u64) -> Option<u32> {
        let slot = self.slot_of_seq(seq)?;
        self.matches(filter, self.entry(slot)).then_some(slot)
    }

    /// Namespaces a filter reads: its own list, or every namespace.
    pub fn namespaces_of(&self, filter: &CompiledFilter) -> Vec<Sym> {
        match &filter.namespaces {
            Some(ns) => ns.clone(),
            None => {
                let mut all: Vec<Sym> = self.namespaces.keys().copied().collect();
                all.sort_unstable();
                all
            }
        }
    }

    /// Live items in the given namespaces.
    pub fn count_in(&self, namespaces: &[Sym]) -> usize {
        namespaces
            .iter()
            .filter_map(|ns| self.namespaces.get(ns))
            .map(|n| n.slots.len())
            .sum()
    }
}

/// A [`Filter`] with names replaced by interned symbols.
#[derive(Clone, Debug)]
pub(crate) struct CompiledFilter {
    pub namespaces: Option<Vec<Sym>>,
    pub kinds: Option<Vec<Sym>>,
    pub stages: Option<Vec<Sym>>,
    pub roles: Option<Vec<Sym>>,
    pub nodes: Option<Vec<Sym>>,
    pub rounds: Option<(u32, u32)>,
    pub reader: Option<Sym>,
    pub tags: Vec<Sym>,
    pub include_superseded: bool,
    pub max_seq: Option<u64>,
}

impl CompiledFilter {
    /// True when only the namespace list (and liveness) constrains items, so a namespace's
    /// size is the number of candidates.
    pub fn is_namespace_only(&self) -> bool {
        self.kinds.is_none()
            && self.stages.is_none()
            && self.roles.is_none()
            && self.nodes.is_none()
            && self.rounds.is_none()
            && self.reader.is_none()
            && self.tags.is_empty()
            && self.max_seq.is_none()
    }
}
