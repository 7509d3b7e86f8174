//! The shapes of the inputs each deployment really receives, as its clients tell them
//! ([`ClientCall::InputShapes`]), so that the canaries ([`super::canary`]) send inputs of
//! those shapes, in proportion to how often clients send each.
//!
//! Per deployment at most [`SHAPES_KEPT`] shapes are kept, by the space-saving rule (a new
//! shape takes the place of the least frequent one and inherits its count, so the frequent
//! shapes stay whatever the order they come in); counts are halved when one passes 2³²
//! (recent traffic weighs more). At most [`DEPLOYMENTS_MAX`] deployments are remembered.
//! Only an account's own clients report for its deployments (the call is authenticated and
//! the deployment must be the key's account's), so nobody can steer another account's
//! canaries; a shape that does not fit the model is ignored when a canary is generated.
//!
//! [`ClientCall::InputShapes`]: crat_core::wire::ClientCall::InputShapes

use std::collections::HashMap;

use crat_core::id::DeploymentId;
use crat_core::wire::{SHAPES_MAX, ShapeCount};

/// Shapes kept per deployment.
pub(super) const SHAPES_KEPT: usize = 8;
/// Deployments whose shapes are remembered (the oldest-inserted are forgotten beyond).
pub(super) const DEPLOYMENTS_MAX: usize = 65_536;
const HALVE_ABOVE: u64 = 1 << 32;

/// One shape: each input's name and dimensions.
pub(super) type Shape = Vec<(String, Vec<u64>)>;

/// What clients told of each deployment's input shapes.
#[derive(Default)]
pub(super) struct ShapeBook {
    by_deployment: HashMap<DeploymentId, Vec<(Shape, u64)>>,
}

/// Why a report of shapes is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ShapesError {
    #[error("more than {SHAPES_MAX} shapes in one report")]
    TooMany,
    #[error("a shape over the limits (inputs, name length or rank)")]
    Unbounded,
}

impl ShapeBook {
    /// Whether a report is within the wire limits.
    pub(super) fn check(shapes: &[ShapeCount]) -> Result<(), ShapesError> {
        if shapes.len() > SHAPES_MAX {
            return Err(ShapesError::TooMany);
        }
        if !shapes.iter().all(ShapeCount::is_bounded) {
            return Err(ShapesError::Unbounded);
        }
        Ok(())
    }

    /// Counts what a client of `deployment` reported.
    pub(super) fn record(
        &mut self,
        deployment: DeploymentId,
        shapes: &[ShapeCount],
    ) -> Result<(), ShapesError> {
        Self::check(shapes)?;
        if !self.by_deployment.contains_key(&deployment)
            && self.by_deployment.len() >= DEPLOYMENTS_MAX
            && let Some(victim) = self.by_deployment.keys().next().copied()
        {
            self.by_deployment.remove(&victim);
        }
        let kept = self.by_deployment.entry(deployment).or_default();
        for s in shapes.iter().filter(|s| s.tasks > 0) {
            let shape: Shape = s
                .inputs
                .iter()
                .map(|i| (i.name.clone(), i.dims.clone()))
                .collect();
            if let Some((_, n)) = kept.iter_mut().find(|(k, _)| *k == shape) {
                *n = n.saturating_add(s.tasks);
            } else if kept.len() < SHAPES_KEPT {
                kept.push((shape, s.tasks));
            } else if let Some(least) = kept.iter_mut().min_by_key(|(_, n)| *n) {
                *least = (shape, least.1.saturating_add(s.tasks));
            }
        }
        while kept.iter().any(|(_, n)| *n > HALVE_ABOVE) {
            for (_, n) in kept.iter_mut() {
                *n = (*n / 2).max(1);
            }
        }
        Ok(())
    }

    /// A shape of `deployment` drawn in proportion to its count (`r` uniform), if any was
    /// reported.
    pub(super) fn pick(&self, deployment: &DeploymentId, r: u64) -> Option<Shape> {
        let kept = self.by_deployment.get(deployment)?;
        let total: u64 = kept.iter().map(|(_, n)| *n).sum();
        if total == 0 {
            return None;
        }
        let mut at = r % total;
        for (shape, n) in kept {
            if at < *n {
                return Some(shape.clone());
            }
            at -= n;
        }
        None
    }

    /// Forgets a stopped deployment.
    pub(super) fn forget(&mut self, deployment: &DeploymentId) {
        self.by_deployment.remove(deployment);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crat_core::wire::InputDims;

    fn shape(batch: u64) -> Shape {
        vec![("x".into(), vec![batch, 3])]
    }

    fn count(batch: u64, tasks: u64) -> ShapeCount {
        ShapeCount {
            inputs: vec![InputDims {
                name: "x".into(),
                dims: vec![batch, 3],
            }],
            tasks,
        }
    }

    #[test]
    fn picks_follow_the_counts() {
        let mut book = ShapeBook::default();
        let d = DeploymentId::from_bytes([1; 16]);
        assert_eq!(book.pick(&d, 0), None);
        book.record(d, &[count(1, 90), count(8, 10)]).unwrap();
        let eights = (0..100u64)
            .filter(|r| book.pick(&d, *r) == Some(shape(8)))
            .count();
        assert_eq!(eights, 10);
        book.forget(&d);
        assert_eq!(book.pick(&d, 0), None);
    }

    #[test]
    fn frequent_shapes_stay_and_the_book_is_bounded() {
        let mut book = ShapeBook::default();
        let d = DeploymentId::from_bytes([2; 16]);
        book.record(d, &[count(1, 1_000)]).unwrap();
        for b in 2..200 {
            book.record(d, &[count(b, 1)]).unwrap();
        }
        let kept = &book.by_deployment[&d];
        assert_eq!(kept.len(), SHAPES_KEPT);
        assert!(kept.contains(&(shape(1), 1_000)));
        // Counts are halved rather than overflow.
        book.record(d, &[count(1, u64::MAX)]).unwrap();
        assert!(
            book.by_deployment[&d]
                .iter()
                .all(|(_, n)| *n <= HALVE_ABOVE)
        );
        assert!(book.pick(&d, 12_345).is_some());
    }

    #[test]
    fn oversized_reports_are_refused() {
        let mut book = ShapeBook::default();
        let d = DeploymentId::from_bytes([3; 16]);
        let many: Vec<_> = (0..=SHAPES_MAX as u64).map(|b| count(b, 1)).collect();
        assert_eq!(book.record(d, &many), Err(ShapesError::TooMany));
        let deep = ShapeCount {
            inputs: vec![InputDims {
                name: "x".into(),
                dims: vec![1; 9],
            }],
            tasks: 1,
        };
        assert_eq!(book.record(d, &[deep]), Err(ShapesError::Unbounded));
        assert_eq!(book.pick(&d, 0), None);
    }
}
