//! Channel classes: union-find over single channels. An operator's channel map ties output
//! channels to the input channels they are (an elementwise op ties `c` to `c`, a Concat ties
//! input channel `c` to output channel `offset + c`); a class is kept or removed as one.

use petgraph::unionfind::UnionFind;

use super::ids::{ChannelId, IdVec, ValueId};
use super::layout::{Layout, Layouts};
use super::reasons::{Forced, Why};
use super::values::{at_node, At};
use super::Graph;

pub(crate) struct Classes {
    /// Start of each value's channels in the flat channel space.
    offset: IdVec<ValueId, usize>,
    uf: UnionFind<usize>,
    total: usize,
}

impl Classes {
    pub fn channel(&self, v: ValueId, c: usize) -> ChannelId {
        ChannelId(self.offset[v] + c)
    }

    /// The class of a channel, as an index below [`Classes::len`].
    pub fn class(&self, v: ValueId, c: usize) -> usize {
        self.uf.find(self.channel(v, c).0)
    }

    pub fn len(&self) -> usize {
        self.total
    }
}

pub(crate) fn build(g: &Graph, layouts: &Layouts, forced: &mut Forced) -> Classes {
    let mut total = 0;
    let offset = layouts
        .values()
        .map(|l| {
            let at = total;
            total += l.width.unwrap_or(0);
            at
        })
        .collect();
    let mut classes = Classes { offset, uf: UnionFind::new(total), total };
    for (node, op) in g.ops() {
        op.ties(&mut TieCx { at: At { graph: g, node }, layouts, forced, classes: &mut classes });
    }
    classes
}

/// What an operator's `ties` may read (widths) and do: tie channel ranges, or force values
/// whose channels it cannot map.
pub(crate) struct TieCx<'a, 'g> {
    at: At<'a, 'g>,
    layouts: &'a Layouts,
    forced: &'a mut Forced,
    classes: &'a mut Classes,
}

at_node!(TieCx);

impl TieCx<'_, '_> {
    /// Every value the node touches.
    pub fn values(&self) -> Vec<ValueId> {
        self.at.graph.inputs(self.at.node).chain(self.at.graph.outputs(self.at.node)).collect()
    }

    pub fn layout(&self, v: ValueId) -> Layout {
        self.layouts[v]
    }

    pub fn width(&self, v: ValueId) -> Option<usize> {
        self.layouts[v].width
    }

    /// Channels `x[xo + c]` and `y[yo + c]` for `c < len` are the same channel.
    pub fn tie(&mut self, x: ValueId, xo: usize, y: ValueId, yo: usize, len: usize) {
        let fits = |v: ValueId, at: usize| at + len <= self.layouts[v].width.unwrap_or(0);
        debug_assert!(fits(x, xo) && fits(y, yo), "ties stay within the widths");
        for c in 0..len {
            let (i, j) = (self.classes.channel(x, xo + c), self.classes.channel(y, yo + c));
            self.classes.uf.union(i.0, j.0);
        }
    }

    pub fn force(&mut self, v: ValueId, why: Why) {
        self.forced.by_node(v, self.at.node, why);
    }
}
