//! GPUs: discovery and exclusive assignment to operations.
//!
//! The pool is a list of GPU ids (as `CUDA_VISIBLE_DEVICES` takes them)
//! from the config or `nvidia-smi`; no GPU is a normal case. Two operations
//! never hold the same GPU.

use crate::ids::OperationId;
use serde_json::{json, Value};
use std::collections::HashMap;

/// GPUs and their holders.
#[derive(Debug, Default)]
pub struct GpuPool {
    ids: Vec<String>,
    held: HashMap<String, OperationId>,
}

impl GpuPool {
    /// A pool of these GPU ids.
    pub fn new(ids: Vec<String>) -> Self {
        GpuPool {
            ids,
            held: HashMap::new(),
        }
    }

    /// GPUs in the pool.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no GPUs.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// GPUs nobody holds.
    pub fn free_count(&self) -> usize {
        self.ids.len() - self.held.len()
    }

    /// Give `n` free GPUs to `op` (lowest ids first); empty when not enough.
    pub fn take(&mut self, op: &OperationId, n: usize) -> Vec<String> {
        let free: Vec<String> = self
            .ids
            .iter()
            .filter(|g| !self.held.contains_key(*g))
            .take(n)
            .cloned()
            .collect();
        if free.len() < n {
            return Vec::new();
        }
        for g in &free {
            self.held.insert(g.clone(), op.clone());
        }
        free
    }

    /// Give back every GPU `op` holds.
    pub fn release(&mut self, op: &OperationId) {
        self.held.retain(|_, holder| holder != op);
    }

    /// Each GPU with its holder, for `health`.
    pub fn status(&self) -> Value {
        Value::Array(
            self.ids
                .iter()
                .map(|g| json!({ "id": g, "operation_id": self.held.get(g) }))
                .collect(),
        )
    }
}

/// GPU indices reported by `nvidia_smi`, or none when it is absent.
pub fn discover(nvidia_smi: &str) -> Vec<String> {
    let out = std::process::Command::new(nvidia_smi)
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_exclusive() {
        let mut pool = GpuPool::new(vec!["0".into(), "1".into()]);
        let a = OperationId("a".into());
        let b = OperationId("b".into());
        assert_eq!(pool.take(&a, 1), vec!["0"]);
        assert_eq!(pool.take(&b, 2), Vec::<String>::new());
        assert_eq!(pool.take(&b, 1), vec!["1"]);
        assert_eq!(pool.free_count(), 0);
        pool.release(&a);
        assert_eq!(pool.free_count(), 1);
    }
}
