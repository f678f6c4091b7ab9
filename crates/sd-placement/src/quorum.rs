//! Who may act after a failure: [`majority`], and who takes a lost root over: [`successor`].

use std::cmp::Ordering;

/// Whether `alive` members are a strict majority of the `known` members: more than half.
///
/// The split-brain rule: only a side of a partition that sees a majority replaces the
/// components it lost, so two sides never both replace the same component (INV-1). An even
/// split has no majority; nor does an empty cluster.
///
/// ```
/// use sd_placement::majority;
/// assert!(majority(5, 3));
/// assert!(!majority(5, 2));
/// assert!(!majority(4, 2));
/// ```
pub const fn majority(known: usize, alive: usize) -> bool {
    // alive * 2 > known, without overflow: for an integer `alive` it is alive > known / 2.
    alive > known / 2
}

/// FNV-1a, 64 bits, of `bytes`: a stable hash, the same on every node and every build.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(PRIME);
        i += 1;
    }
    hash
}

/// The rendezvous (highest random weight) weight of `node` for `deployment`: FNV-1a 64 of
/// the deployment name, a separator byte that no UTF-8 text holds, and the node name, then
/// mixed (the 64-bit finaliser of MurmurHash3) so that similar names get unrelated weights.
pub fn rendezvous_weight(deployment: &str, node: &str) -> u64 {
    let mut bytes = Vec::with_capacity(deployment.len() + 1 + node.len());
    bytes.extend_from_slice(deployment.as_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(node.as_bytes());
    let mut hash = fnv1a64(&bytes);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash
}

/// Orders nodes by who should take `deployment` first: highest weight first, then by name.
fn by_preference(deployment: &str, x: &str, y: &str) -> Ordering {
    rendezvous_weight(deployment, y)
        .cmp(&rendezvous_weight(deployment, x))
        .then_with(|| x.cmp(y))
}

/// Which of `candidates` (the live nodes holding a replica of `deployment`'s root) takes the
/// deployment over when its root is lost; `None` when there is no candidate.
///
/// Every node that sees the same candidates makes the same choice, and the choice is stable:
/// a node joining or leaving changes it only if that node is, or becomes, the successor
/// (rendezvous hashing: the candidate with the highest [`rendezvous_weight`], ties by name).
///
/// ```
/// use sd_placement::successor;
/// let chosen = successor("web", ["a", "b", "c"]);
/// assert!(chosen.is_some());
/// assert_eq!(successor("web", ["c", "b", "a"]), chosen);
/// assert_eq!(successor("web", []), None);
/// ```
pub fn successor<'a>(
    deployment: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .min_by(|x, y| by_preference(deployment, x, y))
}

/// All of `candidates`, without duplicates, in the order they should take `deployment` over:
/// [`successor`] first, then who takes over if that one is lost too, and so on.
pub fn succession_order<'a>(
    deployment: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut order: Vec<&'a str> = candidates.into_iter().collect();
    order.sort_by(|x, y| by_preference(deployment, x, y));
    order.dedup();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_is_strict() {
        assert!(majority(5, 3));
        assert!(!majority(5, 2));
        assert!(!majority(4, 2));
        assert!(majority(4, 3));
        assert!(majority(1, 1));
        assert!(!majority(0, 0));
        assert!(!majority(2, 1));
        assert!(majority(usize::MAX, usize::MAX / 2 + 1));
        assert!(!majority(usize::MAX, usize::MAX / 2));
    }

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn weights_are_stable_and_depend_on_both_names() {
        // Pinned values: the weight must never change between builds or versions, or nodes
        // running different versions would disagree on the successor.
        let weight = rendezvous_weight("web", "node-a");
        assert_eq!(weight, 0xcea6_7319_f0a7_5415);
        assert_eq!(rendezvous_weight("web", "node-b"), 0xff9c_f9fa_d79f_85bc);
        assert_eq!(successor("web", ["node-a", "node-b"]), Some("node-b"));
        assert_ne!(weight, rendezvous_weight("web", "node-b"));
        assert_ne!(weight, rendezvous_weight("db", "node-a"));
        assert_ne!(rendezvous_weight("ab", "c"), rendezvous_weight("a", "bc"));
    }

    #[test]
    fn successor_ignores_order_and_duplicates() {
        let nodes = ["a", "b", "c", "d", "e"];
        let chosen = successor("web", nodes);
        let mut reversed = nodes;
        reversed.reverse();
        assert_eq!(successor("web", reversed), chosen);
        assert_eq!(
            successor("web", nodes.iter().chain(&nodes).copied()),
            chosen
        );
        assert_eq!(successor("web", ["x"]), Some("x"));
        let order = succession_order("web", ["c", "a", "b", "a"]);
        assert_eq!(order.len(), 3);
        assert_eq!(order.first().copied(), successor("web", ["a", "b", "c"]));
    }

    #[test]
    fn deployments_spread_over_nodes() {
        let nodes = ["node-1", "node-2", "node-3", "node-4"];
        let mut counts = [0_usize; 4];
        for i in 0..400 {
            let deployment = format!("deployment-{i}");
            let chosen = successor(&deployment, nodes);
            let index = nodes.iter().position(|n| Some(*n) == chosen);
            counts[index.unwrap_or_else(|| panic!("{chosen:?} is not a candidate"))] += 1;
        }
        assert!(counts.iter().all(|&count| count > 50), "{counts:?}");
    }
}
