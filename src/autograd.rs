//! Minimal reverse-mode autograd.
//!
//! A tensor that requires grad carries an [`Edge`]: either a [`Leaf`] (a variable, which owns the
//! accumulated `.grad`) or a [`Node`] (the op that produced it). Edges point at nodes, not at input
//! tensors, so recording a graph keeps alive only what each op chose to save. An op's
//! [`BackwardOp`] is taken out of its node when its backward runs and dropped right after, which
//! frees its saved tensors as early as possible.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The backward of one recorded op: maps the gradient of its output to the gradients of its
/// inputs (in the order the op listed them; `None` where an input needs none).
pub trait BackwardOp: Send + Sync {
    fn backward(self: Box<Self>, grad: &Tensor) -> Result<Vec<Option<Tensor>>>;

    /// The op's name in error messages: its type's (e.g. `NormBackward`).
    fn name(&self) -> &'static str {
        let path = std::any::type_name::<Self>();
        path.rsplit("::").next().unwrap_or(path)
    }
}

/// A variable's gradient slot.
#[derive(Default)]
pub struct Leaf {
    grad: Mutex<Option<Tensor>>,
}

/// An op in the recorded graph.
pub struct Node {
    id: usize,
    op: Mutex<Option<Box<dyn BackwardOp>>>,
    next: Vec<Option<Edge>>,
}

#[derive(Clone)]
pub enum Edge {
    Leaf(Arc<Leaf>),
    Node(Arc<Node>),
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record a graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording a graph (like `torch.no_grad()`).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_flag(&GRAD_ENABLED, false, f)
}

/// Runs `f` with the thread-local `flag` set to `value`, restoring it afterwards (also when `f`
/// panics).
pub(crate) fn with_flag<T>(
    flag: &'static std::thread::LocalKey<Cell<bool>>,
    value: bool,
    f: impl FnOnce() -> T,
) -> T {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|c| c.replace(value)));
    f()
}

static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// Whether an op on `inputs` is recorded: recording is on and an input requires grad (an absent
/// optional input does not).
pub(crate) fn records(inputs: &[Option<&Tensor>]) -> bool {
    is_grad_enabled() && inputs.iter().flatten().any(|t| t.requires_grad())
}

/// Attaches a backward to `out` if any input requires grad and recording is on. `make_op` runs
/// only then, so nothing is saved for inference.
pub fn record(
    out: Tensor,
    inputs: &[&Tensor],
    make_op: impl FnOnce() -> Box<dyn BackwardOp>,
) -> Tensor {
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let node = Node {
        id: NEXT_NODE.fetch_add(1, Ordering::Relaxed),
        op: Mutex::new(Some(make_op())),
        next: inputs.iter().map(|t| t.edge().cloned()).collect(),
    };
    out.with_edge(Some(Edge::Node(Arc::new(node))))
}

impl Leaf {
    pub fn grad(&self) -> Option<Tensor> {
        self.grad.lock().expect("grad lock").clone()
    }
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.grad.lock().expect("grad lock") = g;
    }
    fn accumulate(&self, g: Tensor) -> Result<()> {
        let mut slot = self.grad.lock().expect("grad lock");
        *slot = Some(match slot.take() {
            None => g,
            Some(prev) => prev.add(&g)?,
        });
        Ok(())
    }
}

/// Back-propagates from a scalar `root`, accumulating into every reachable variable's `.grad`.
pub fn backward(root: &Tensor) -> Result<()> {
    if root.numel() != 1 {
        return Err(Error::Autograd(format!(
            "backward() needs a scalar, got shape {:?}",
            root.shape()
        )));
    }
    let Some(edge) = root.edge().cloned() else {
        return Err(Error::Autograd(
            "backward() on a tensor that does not require grad".into(),
        ));
    };
    let seed = Tensor::full(root.shape(), 1.0, root.device())?;
    crate::autograd::no_grad(|| run_backward(edge, seed))
}

fn run_backward(root: Edge, seed: Tensor) -> Result<()> {
    let root_node = match root {
        Edge::Leaf(leaf) => return leaf.accumulate(seed),
        Edge::Node(n) => n,
    };
    let order = topo_order(&root_node);
    let mut grads: HashMap<usize, Tensor> = HashMap::new();
    grads.insert(root_node.id, seed);
    for node in order {
        let Some(grad) = grads.remove(&node.id) else {
            continue;
        };
        let op = node.op.lock().expect("node lock").take();
        let Some(op) = op else {
            return Err(Error::Autograd(
                "graph already back-propagated (backward called twice)".into(),
            ));
        };
        let name = op.name();
        let input_grads = op.backward(&grad)?;
        drop(grad);
        if input_grads.len() != node.next.len() {
            return Err(Error::Autograd(format!(
                "{name}: backward returned {} grads for {} inputs",
                input_grads.len(),
                node.next.len()
            )));
        }
        for (edge, g) in node.next.iter().zip(input_grads) {
            let (Some(edge), Some(g)) = (edge, g) else {
                continue;
            };
            match edge {
                Edge::Leaf(leaf) => leaf.accumulate(g)?,
                Edge::Node(n) => {
                    let acc = match grads.remove(&n.id) {
                        None => g,
                        Some(prev) => prev.add(&g)?,
                    };
                    grads.insert(n.id, acc);
                }
            }
        }
    }
    Ok(())
}

/// Nodes in an order where every node precedes the nodes it feeds gradients to (its inputs).
fn topo_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut visited = std::collections::HashSet::new();
    let mut post = Vec::new();
    // Iterative DFS: (node, next child index).
    let mut stack: Vec<(Arc<Node>, usize)> = vec![(root.clone(), 0)];
    visited.insert(root.id);
    while let Some((node, i)) = stack.pop() {
        if i < node.next.len() {
            stack.push((node.clone(), i + 1));
            if let Some(Edge::Node(child)) = &node.next[i] {
                if visited.insert(child.id) {
                    stack.push((child.clone(), 0));
                }
            }
        } else {
            post.push(node);
        }
    }
    post.reverse();
    post
}
