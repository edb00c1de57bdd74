use std::sync::Arc;

/// Ids per sealed chunk: appending copies at most one open chunk of this
/// many ids when a snapshot shares the list, instead of the whole list.
const CHUNK_IDS: usize = 32;

/// An append-mostly list shared between snapshots: full chunks are sealed
/// behind `Arc`s and shared by every copy; only the open tail is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunked<T> {
    sealed: Vec<Arc<Vec<T>>>,
    tail: Vec<T>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked { sealed: Vec::new(), tail: Vec::new() }
    }
}

impl<T: Clone + PartialEq> Chunked<T> {
    pub(crate) fn push(&mut self, value: T) {
        if self.tail.len() == CHUNK_IDS {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK_IDS));
            self.sealed.push(Arc::new(full));
        }
        self.tail.push(value);
    }

    pub(crate) fn extend(&mut self, values: impl IntoIterator<Item = T>) {
        for v in values {
            self.push(v);
        }
    }

    /// Remove every value `doomed` picks (rare: garbage collection).
    pub(crate) fn remove_where(&mut self, doomed: impl Fn(&T) -> bool) {
        let mut all: Vec<T> = self.iter().filter(|v| !doomed(v)).cloned().collect();
        let tail_len = all.len() % CHUNK_IDS;
        let tail = all.split_off(all.len() - tail_len);
        self.sealed = all.chunks(CHUNK_IDS).map(|c| Arc::new(c.to_vec())).collect();
        self.tail = tail;
    }

    /// The first value `wanted` picks, to change in place: a sealed chunk
    /// a snapshot shares is copied first (at most [`CHUNK_IDS`] values).
    pub(crate) fn find_mut(&mut self, wanted: impl Fn(&T) -> bool) -> Option<&mut T> {
        if let Some(at) = self.tail.iter().position(&wanted) {
            return Some(&mut self.tail[at]);
        }
        let (chunk, at) =
            self.sealed.iter().enumerate().find_map(|(c, chunk)| chunk.iter().position(&wanted).map(|at| (c, at)))?;
        Some(&mut Arc::make_mut(&mut self.sealed[chunk])[at])
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.sealed.iter().flat_map(|c| c.iter()).chain(self.tail.iter())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sealed.len() * CHUNK_IDS + self.tail.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_iterate_remove() {
        let mut list: Chunked<u32> = Chunked::default();
        list.extend(0..100);
        let shared = list.clone();
        list.push(100);
        assert_eq!(list.len(), 101);
        assert_eq!(shared.len(), 100, "a copy does not see later appends");
        assert!(Arc::ptr_eq(&list.sealed[0], &shared.sealed[0]), "sealed chunks are shared");
        list.remove_where(|v| *v == 5);
        list.remove_where(|v| *v == 64);
        let expected: Vec<u32> = (0..101).filter(|v| *v != 5 && *v != 64).collect();
        assert_eq!(list.iter().copied().collect::<Vec<_>>(), expected);
        assert_eq!(list.len(), 99);
    }

    #[test]
    fn find_mut_copies_only_a_shared_chunk() {
        let mut list: Chunked<u32> = Chunked::default();
        list.extend(0..100);
        let shared = list.clone();
        *list.find_mut(|v| *v == 40).expect("listed") = 1040;
        *list.find_mut(|v| *v == 99).expect("listed") = 1099;
        assert!(list.find_mut(|v| *v == 5000).is_none());
        assert!(!Arc::ptr_eq(&list.sealed[1], &shared.sealed[1]), "the changed chunk is copied");
        assert!(Arc::ptr_eq(&list.sealed[0], &shared.sealed[0]), "the others stay shared");
        assert!(shared.iter().copied().eq(0..100), "a copy does not see the change");
        let expected: Vec<u32> = (0..100).map(|v| if v == 40 || v == 99 { v + 1000 } else { v }).collect();
        assert_eq!(list.iter().copied().collect::<Vec<_>>(), expected);
    }
}
