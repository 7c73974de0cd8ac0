//! A FIFO queue that keeps its first element inline: the queues a
//! connection owns (its held data, its send chunks, its parked ops on
//! `poll`) hold zero or one element nearly all the time, so an idle
//! connection's queues own no heap memory, and a busy one allocates only
//! while a second element waits.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// A FIFO queue whose front element is stored inline, and the others (the
/// overflow) in a boxed `VecDeque` that exists only while there are any:
/// an empty or one-element queue owns no heap memory, and the queue itself
/// is one pointer larger than its element.
///
/// Invariant: `rest` is `None` or not empty, and `head` is `Some` whenever
/// `rest` is (so `head`, when there is one, is the oldest element).
#[derive(Debug)]
pub(crate) struct InlineDeque<T> {
    head: Option<T>,
    /// Boxed on purpose: a pointer here instead of a `VecDeque`'s four
    /// words, in every queue of every connection; the box is allocated only
    /// while a second element waits.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<T>>>,
}

impl<T> Default for InlineDeque<T> {
    fn default() -> Self {
        InlineDeque::new()
    }
}

impl<T> InlineDeque<T> {
    /// An empty queue (allocates nothing).
    pub(crate) const fn new() -> Self {
        InlineDeque {
            head: None,
            rest: None,
        }
    }

    /// Whether the queue holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    /// The oldest element.
    pub(crate) fn front(&self) -> Option<&T> {
        self.head.as_ref()
    }

    /// Appends `value` after every element.
    pub(crate) fn push_back(&mut self, value: T) {
        if self.head.is_none() {
            self.head = Some(value);
        } else {
            self.rest.get_or_insert_default().push_back(value);
        }
    }

    /// Puts `value` in front of every element.
    pub(crate) fn push_front(&mut self, value: T) {
        if let Some(old) = self.head.replace(value) {
            self.rest.get_or_insert_default().push_front(old);
        }
    }

    /// Takes the oldest element.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let value = self.head.take()?;
        if let Some(rest) = &mut self.rest {
            self.head = rest.pop_front();
            if rest.is_empty() {
                self.rest = None;
            }
        }
        Some(value)
    }

    /// Removes the first element equal to `value`; returns whether one was.
    pub(crate) fn remove(&mut self, value: &T) -> bool
    where
        T: PartialEq,
    {
        if self.head.as_ref() == Some(value) {
            self.pop_front();
            return true;
        }
        let Some(rest) = &mut self.rest else {
            return false;
        };
        let Some(i) = rest.iter().position(|v| v == value) else {
            return false;
        };
        rest.remove(i);
        if rest.is_empty() {
            self.rest = None;
        }
        true
    }

    /// Appends clones of the `max` oldest elements (fewer if there are
    /// fewer) to `out`, oldest first: the hot path of `iter().take().cloned()`.
    pub(crate) fn clone_front_into(&self, max: usize, out: &mut Vec<T>)
    where
        T: Clone,
    {
        let Some(head) = self.head.as_ref().filter(|_| max > 0) else {
            return;
        };
        out.push(head.clone());
        if let Some(rest) = &self.rest {
            out.extend(rest.iter().take(max - 1).cloned());
        }
    }

    /// The elements, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.head
            .iter()
            .chain(self.rest.iter().flat_map(|r| r.iter()))
    }

    /// Removes every element, oldest first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> {
        let head = self.head.take();
        let rest = self.rest.take();
        head.into_iter().chain(rest.into_iter().flat_map(|r| *r))
    }

    /// Drops every element.
    pub(crate) fn clear(&mut self) {
        self.head = None;
        self.rest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        PushBack(u8),
        PushFront(u8),
        Pop,
        Remove(u8),
        Clear,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => any::<u8>().prop_map(Step::PushBack),
            1 => any::<u8>().prop_map(Step::PushFront),
            4 => Just(Step::Pop),
            1 => (0u8..8).prop_map(Step::Remove),
            1 => Just(Step::Clear),
        ]
    }

    proptest! {
        /// Behaves as a `VecDeque`, and owns no memory whenever it is empty.
        #[test]
        fn matches_a_vecdeque(steps in prop::collection::vec(step(), 0..200)) {
            let mut q = InlineDeque::new();
            let mut model = VecDeque::new();
            for s in steps {
                match s {
                    Step::PushBack(v) => { q.push_back(v); model.push_back(v); }
                    Step::PushFront(v) => { q.push_front(v); model.push_front(v); }
                    Step::Pop => prop_assert_eq!(q.pop_front(), model.pop_front()),
                    Step::Remove(v) => {
                        let i = model.iter().position(|x| *x == v);
                        if let Some(i) = i { model.remove(i); }
                        prop_assert_eq!(q.remove(&v), i.is_some());
                    }
                    Step::Clear => { q.clear(); model.clear(); }
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.is_empty(), model.is_empty());
                prop_assert_eq!(q.front(), model.front());
                prop_assert!(q.iter().eq(model.iter()));
                prop_assert_eq!(
                    q.rest.is_some(),
                    model.len() > 1,
                    "memory beyond the head only while more than one element waits"
                );
            }
            for max in [0, 1, 2, 5] {
                let mut front = vec![7];
                q.clone_front_into(max, &mut front);
                let want: Vec<u8> = std::iter::once(7).chain(model.iter().take(max).copied()).collect();
                prop_assert_eq!(front, want);
            }
            let drained: Vec<_> = q.drain().collect();
            prop_assert!(drained.iter().eq(model.iter()));
            prop_assert!(q.is_empty() && q.rest.is_none());
        }
    }
}
