//! Process-wide string interner for the few strings the scheduler compares on
//! every node (datacenter, node pool, node class). Interning happens once, when
//! a node or job is written; the hot path compares `Sym`s, which are integers.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

/// An interned string. Equal strings have equal `Sym`s for the life of the process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sym(u32);

#[derive(Default)]
struct Table {
    by_text: HashMap<Arc<str>, u32>,
    texts: Vec<Arc<str>>,
}

/// Bound on distinct interned strings. Datacenters, pools and classes number in
/// the thousands at most; a runaway caller interning unique values must fail
/// loudly rather than grow the table without end.
const SYMBOLS_MAX: usize = 1 << 24;

fn table() -> &'static RwLock<Table> {
    static TABLE: OnceLock<RwLock<Table>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

impl Sym {
    pub fn new(text: &str) -> Sym {
        if let Some(&id) = table().read().expect("interner poisoned").by_text.get(text) {
            return Sym(id);
        }
        let mut t = table().write().expect("interner poisoned");
        if let Some(&id) = t.by_text.get(text) {
            return Sym(id);
        }
        assert!(t.texts.len() < SYMBOLS_MAX, "interner full: too many distinct symbols");
        let id = u32::try_from(t.texts.len()).expect("bounded by SYMBOLS_MAX");
        let text: Arc<str> = text.into();
        t.texts.push(text.clone());
        t.by_text.insert(text, id);
        Sym(id)
    }

    /// The interned text. Takes a read lock: not for the hot path.
    pub fn text(self) -> Arc<str> {
        table().read().expect("interner poisoned").texts[self.0 as usize].clone()
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.text())
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl From<&str> for Sym {
    fn from(s: &str) -> Sym {
        Sym::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_equal_sym() {
        assert_eq!(Sym::new("dc1"), Sym::new("dc1"));
        assert_ne!(Sym::new("dc1"), Sym::new("dc2"));
        assert_eq!(&*Sym::new("pool-a").text(), "pool-a");
    }
}
