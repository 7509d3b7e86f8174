//! The binary hash tree behind a node's commitments (a hardware challenge's rows, the
//! receipts a node signs together): leaves hashed by their owner, pairs hashed level by level
//! with `node`, and a level's odd last node carried up unchanged. One construction, one path
//! rule and one check, shared by [`policy::challenge`](crate::policy::challenge) and
//! [`sign::ProvenReceipt`](crate::sign::ProvenReceipt); each owner keeps its own leaf and
//! node hashes (their domain tags differ).

/// A node of the tree.
pub(crate) type Hash = [u8; 32];

/// Every level of the tree over `leaves`, leaves first, the root's level (one node) last;
/// no level for no leaves.
pub(crate) fn levels(leaves: Vec<Hash>, node: impl Fn(&Hash, &Hash) -> Hash) -> Vec<Vec<Hash>> {
    let mut level = leaves;
    let mut levels = Vec::new();
    if level.is_empty() {
        return levels;
    }
    while level.len() > 1 {
        let next = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node(left, right),
                [carried] => *carried,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
        levels.push(std::mem::replace(&mut level, next));
    }
    levels.push(level);
    levels
}

/// The sibling hashes of leaf `index` from its level up to the root's (levels where its
/// node is carried up have none). `index` must be a leaf of `levels`.
pub(crate) fn path(levels: &[Vec<Hash>], index: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    let mut at = index;
    for level in &levels[..levels.len().saturating_sub(1)] {
        if let Some(sibling) = level.get(at ^ 1) {
            path.push(*sibling);
        }
        at /= 2;
    }
    path
}

/// The root that `leaf`, at `index` among `width` leaves, leads to through `path`; `None`
/// when `index` is not below `width` or `path` has too few or too many hashes.
pub(crate) fn root_from_path(
    leaf: Hash,
    index: usize,
    width: usize,
    path: &[Hash],
    node: impl Fn(&Hash, &Hash) -> Hash,
) -> Option<Hash> {
    if index >= width {
        return None;
    }
    let mut hash = leaf;
    let mut path = path.iter();
    let (mut at, mut width) = (index, width);
    while width > 1 {
        if at % 2 == 1 {
            hash = node(path.next()?, &hash);
        } else if at + 1 < width {
            hash = node(&hash, path.next()?);
        }
        at /= 2;
        width = width.div_ceil(2);
    }
    path.next().is_none().then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(l: &Hash, r: &Hash) -> Hash {
        *blake3::Hasher::new()
            .update(l)
            .update(r)
            .finalize()
            .as_bytes()
    }

    /// Every leaf of every width leads to the root through its path, and through no other
    /// index, width or path.
    #[test]
    fn every_leaf_leads_to_the_root_and_nothing_else_does() {
        assert!(levels(Vec::new(), node).is_empty());
        for width in 1..40usize {
            let leaves: Vec<Hash> = (0..width).map(|i| [i as u8; 32]).collect();
            let levels = levels(leaves.clone(), node);
            let root = levels.last().unwrap()[0];
            assert_eq!(levels.last().unwrap().len(), 1);
            for (i, leaf) in leaves.iter().enumerate() {
                let p = path(&levels, i);
                assert_eq!(root_from_path(*leaf, i, width, &p, node), Some(root));
                assert_eq!(root_from_path(*leaf, width, width, &p, node), None);
                let mut longer = p.clone();
                longer.push([0; 32]);
                assert_eq!(root_from_path(*leaf, i, width, &longer, node), None);
                if width > 1 {
                    assert_ne!(root_from_path(*leaf, i ^ 1, width, &p, node), Some(root));
                    assert_ne!(root_from_path([99; 32], i, width, &p, node), Some(root));
                }
            }
        }
    }
}
