//! Typed indices, so that a node, a value and a channel can never be confused (rustc's `Idx`).

use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) struct $name(pub(crate) usize);

        impl Id for $name {
            fn new(i: usize) -> Self {
                $name(i)
            }
            fn index(self) -> usize {
                self.0
            }
        }
    };
}

pub(crate) trait Id: Copy {
    fn new(i: usize) -> Self;
    fn index(self) -> usize;
}

id!(
    /// A node of the graph: its index in `GraphProto::node`.
    NodeId
);
id!(
    /// An activation (a tensor that is neither a constant nor unnamed), numbered in first-seen order.
    ValueId
);
id!(
    /// One channel of one value, in the flat space that union-find runs over.
    ChannelId
);

/// A vector indexed by a typed id.
#[derive(Debug, Clone)]
pub(crate) struct IdVec<I, T> {
    raw: Vec<T>,
    _id: PhantomData<fn(I)>,
}

impl<I: Id, T> IdVec<I, T> {
    pub fn from_raw(raw: Vec<T>) -> Self {
        IdVec { raw, _id: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn ids(&self) -> std::iter::Map<std::ops::Range<usize>, fn(usize) -> I> {
        (0..self.raw.len()).map(I::new)
    }

    pub fn values(&self) -> std::slice::Iter<'_, T> {
        self.raw.iter()
    }
}

impl<I: Id, T: Clone> IdVec<I, T> {
    pub fn filled(value: T, len: usize) -> Self {
        Self::from_raw(vec![value; len])
    }
}

impl<I: Id, T> Index<I> for IdVec<I, T> {
    type Output = T;
    fn index(&self, i: I) -> &T {
        &self.raw[i.index()]
    }
}

impl<I: Id, T> IndexMut<I> for IdVec<I, T> {
    fn index_mut(&mut self, i: I) -> &mut T {
        &mut self.raw[i.index()]
    }
}

impl<I: Id, T> FromIterator<T> for IdVec<I, T> {
    fn from_iter<It: IntoIterator<Item = T>>(iter: It) -> Self {
        Self::from_raw(iter.into_iter().collect())
    }
}
