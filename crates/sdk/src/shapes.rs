//! The shapes of the inputs a deployment handle sends, told to the dispatcher
//! ([`ClientCall::InputShapes`](crat_core::wire::ClientCall::InputShapes)) so that its
//! canary tasks have the shapes the deployment really receives and look like this client's
//! traffic to a node. Only names and dimensions leave the client, never values; turned off by
//! [`ClientConfig::input_shapes_report_s`](crate::ClientConfig) = 0.
//!
//! At most [`SHAPES_MAX`] distinct shapes are kept; a new one takes the place of one with no
//! tasks since the last report, or is not counted. A shape never reported goes with the next
//! acknowledgement flush; counts of known shapes every `input_shapes_report_s`.

use std::hash::{Hash, Hasher};

use crat_core::tensor::NamedTensor;
use crat_core::wire::{InputDims, SHAPE_INPUTS_MAX, SHAPE_NAME_BYTES_MAX, SHAPES_MAX, ShapeCount};

struct Entry {
    fingerprint: u64,
    inputs: Vec<InputDims>,
    /// Tasks since the last report.
    pending: u64,
    /// Never reported.
    new: bool,
}

/// The shapes one deployment handle sent.
#[derive(Default)]
pub(crate) struct ShapeTally {
    entries: Vec<Entry>,
    /// When the counts were last reported.
    reported_at_s: u64,
}

fn fingerprint(inputs: &[NamedTensor]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in inputs {
        t.name.hash(&mut h);
        t.tensor.shape().hash(&mut h);
    }
    h.finish()
}

impl ShapeTally {
    /// Counts one task sent with `inputs`.
    pub(crate) fn sent(&mut self, inputs: &[NamedTensor]) {
        let fp = fingerprint(inputs);
        if let Some(e) = self.entries.iter_mut().find(|e| e.fingerprint == fp) {
            e.pending = e.pending.saturating_add(1);
            return;
        }
        // Shapes the dispatcher would refuse are not kept.
        if inputs.len() > SHAPE_INPUTS_MAX
            || inputs.iter().any(|t| t.name.len() > SHAPE_NAME_BYTES_MAX)
        {
            return;
        }
        let entry = Entry {
            fingerprint: fp,
            inputs: inputs
                .iter()
                .map(|t| InputDims {
                    name: t.name.clone(),
                    dims: t.tensor.shape().to_vec(),
                })
                .collect(),
            pending: 1,
            new: true,
        };
        if self.entries.len() < SHAPES_MAX {
            self.entries.push(entry);
        } else if let Some(idle) = self.entries.iter_mut().find(|e| e.pending == 0) {
            *idle = entry;
        }
    }

    /// The counts to report at `now_s`, if a new shape was seen or `every_s` passed since the
    /// last report (0: never), and resets them; `None` when there is nothing to report.
    pub(crate) fn due(&mut self, now_s: u64, every_s: u64) -> Option<Vec<ShapeCount>> {
        if every_s == 0 {
            return None;
        }
        let new = self.entries.iter().any(|e| e.new);
        let pending = self.entries.iter().any(|e| e.pending > 0);
        if !pending || !(new || now_s >= self.reported_at_s.saturating_add(every_s)) {
            return None;
        }
        self.reported_at_s = now_s;
        Some(
            self.entries
                .iter_mut()
                .filter(|e| e.pending > 0)
                .map(|e| {
                    e.new = false;
                    ShapeCount {
                        inputs: e.inputs.clone(),
                        tasks: std::mem::take(&mut e.pending),
                    }
                })
                .collect(),
        )
    }

    /// Puts back counts that could not be delivered (sent again at the next interval).
    pub(crate) fn undelivered(&mut self, shapes: Vec<ShapeCount>) {
        for s in shapes {
            if let Some(e) = self.entries.iter_mut().find(|e| e.inputs == s.inputs) {
                e.pending = e.pending.saturating_add(s.tasks);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crat_core::tensor::Tensor;

    fn batch(n: u64) -> Vec<NamedTensor> {
        let values = vec![0f32; n as usize * 3];
        vec![NamedTensor::new(
            "x",
            Tensor::from_slice(&[n, 3], &values).unwrap(),
        )]
    }

    #[test]
    fn new_shapes_are_reported_at_once_and_counts_at_the_interval() {
        let mut t = ShapeTally::default();
        assert_eq!(t.due(0, 60), None);
        t.sent(&batch(4));
        t.sent(&batch(4));
        let first = t.due(10, 60).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].inputs[0].name, "x");
        assert_eq!(first[0].inputs[0].dims, vec![4, 3]);
        assert_eq!(first[0].tasks, 2);
        t.sent(&batch(4));
        assert_eq!(t.due(20, 60), None, "known shape, interval not over");
        let later = t.due(70, 60).unwrap();
        assert_eq!(later[0].tasks, 1);
        t.sent(&batch(1));
        assert_eq!(t.due(71, 60).unwrap()[0].inputs[0].dims, vec![1, 3]);
        t.sent(&batch(2));
        assert_eq!(t.due(72, 0), None, "turned off");
    }

    #[test]
    fn distinct_shapes_are_bounded_and_undelivered_counts_come_back() {
        let mut t = ShapeTally::default();
        for n in 1..=100 {
            t.sent(&batch(n));
        }
        let all = t.due(0, 60).unwrap();
        assert_eq!(all.len(), SHAPES_MAX);
        t.undelivered(all);
        assert_eq!(t.due(1, 60), None, "sent again at the interval");
        let again = t.due(60, 60).unwrap();
        assert_eq!(again.len(), SHAPES_MAX);
        assert!(again.iter().all(|s| s.tasks == 1));
        // Idle entries make room for new shapes.
        t.sent(&batch(500));
        let next = t.due(61, 60).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].inputs[0].dims, vec![500, 3]);
    }
}
