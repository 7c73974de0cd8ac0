//! A slab of in-flight operations keyed by generation-tagged [`OpKey`]s.

use super::OpKey;

/// Slots for in-flight operations. A slot's generation advances every time
/// it is freed, so a key outlives its operation harmlessly: lookups with a
/// stale key find nothing.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Stores `value`, returning its key.
    pub(crate) fn insert(&mut self, value: T) -> OpKey {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let e = &mut self.entries[index as usize];
            e.value = Some(value);
            return OpKey {
                index,
                generation: e.generation,
            };
        }
        let index = u32::try_from(self.entries.len()).expect("more than 2^32 ops in flight");
        self.entries.push(Entry {
            generation: 0,
            value: Some(value),
        });
        OpKey {
            index,
            generation: 0,
        }
    }

    /// The value under a live key.
    pub(crate) fn get(&self, key: OpKey) -> Option<&T> {
        let e = self.entries.get(key.index as usize)?;
        (e.generation == key.generation).then_some(e.value.as_ref()?)
    }

    /// The value under a live key, mutably.
    pub(crate) fn get_mut(&mut self, key: OpKey) -> Option<&mut T> {
        let e = self.entries.get_mut(key.index as usize)?;
        if e.generation != key.generation {
            return None;
        }
        e.value.as_mut()
    }

    /// Removes and returns the value under a live key, retiring the key.
    pub(crate) fn remove(&mut self, key: OpKey) -> Option<T> {
        let e = self.entries.get_mut(key.index as usize)?;
        if e.generation != key.generation {
            return None;
        }
        let value = e.value.take()?;
        e.generation = e.generation.wrapping_add(1);
        self.free.push(key.index);
        self.len -= 1;
        Some(value)
    }

    /// The keys of every live value, in index order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = OpKey> + '_ {
        self.entries.iter().enumerate().filter_map(|(index, e)| {
            e.value.as_ref().map(|_| OpKey {
                index: index as u32,
                generation: e.generation,
            })
        })
    }

    /// Number of live values.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is live.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Encodes a key as the 64-bit user data the kernel hands back.
    pub(crate) fn encode(key: OpKey) -> u64 {
        (u64::from(key.generation) << 32) | u64::from(key.index)
    }

    /// Decodes [`Slots::encode`].
    pub(crate) fn decode(data: u64) -> OpKey {
        OpKey {
            index: data as u32,
            generation: (data >> 32) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_key_finds_nothing_after_reuse() {
        let mut s = Slots::default();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_eq!(a.index, b.index);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&2));
        let c = s.insert(3);
        assert_eq!(s.keys().collect::<Vec<_>>(), [b, c]);
        s.remove(b);
        assert_eq!(s.keys().collect::<Vec<_>>(), [c]);
        assert_eq!(Slots::<u8>::decode(Slots::<u8>::encode(b)), b);
    }
}
