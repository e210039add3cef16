//! A small dense network (ReLU hidden layers, one sigmoid output) trained
//! with binary cross-entropy and Adam, in plain f64.
//!
//! Bit-for-bit reproducibility drives the shape of this code: parameters live
//! in one flat `Vec<f64>`, every sum runs in one fixed sequential order (no
//! threads, no SIMD reductions that reorder additions), the batch gradient is
//! accumulated sample by sample in batch order, and Adam's bias corrections
//! use running products of the betas (stored in the state) rather than
//! `powi`. Initialization uses uniform He / Glorot limits, which only need
//! `sqrt` (correctly rounded by IEEE 754), so the initial weights are the same
//! on every platform. The forward pass uses `exp`/`ln` from the platform's
//! libm, so bit identity is guaranteed on one platform, not across them.
//!
//! Layout of the flat parameters: for each layer, the weights `W[out][in]`
//! row-major, then the `out` biases.

use super::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// The network's architecture and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// Layer widths: inputs, each hidden layer, then 1 output.
    pub sizes: Vec<usize>,
    /// All weights and biases, flat (see the module documentation).
    pub params: Vec<f64>,
}

/// Number of parameters of a network with these layer `sizes`.
pub fn param_count(sizes: &[usize]) -> usize {
    sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// Logistic function, written to avoid overflow for large |z|.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Binary cross-entropy of logit `z` against label `y` in {0, 1}, computed
/// from the logit (`max(z,0) - z*y + ln(1+e^-|z|)`) so it never takes ln(0).
pub fn bce_with_logit(z: f64, y: f64) -> f64 {
    z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
}

impl Mlp {
    /// A freshly initialized network: hidden (ReLU) layers get He-uniform
    /// weights `U(±sqrt(6/fan_in))`, the sigmoid output Glorot-uniform
    /// `U(±sqrt(6/(fan_in+fan_out)))`; biases start at 0.
    pub fn new(sizes: Vec<usize>, rng: &mut SplitMix64) -> Mlp {
        let mut params = Vec::with_capacity(param_count(&sizes));
        let layers = sizes.len() - 1;
        for (l, w) in sizes.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let limit = if l + 1 < layers {
                (6.0 / fan_in as f64).sqrt()
            } else {
                (6.0 / (fan_in + fan_out) as f64).sqrt()
            };
            for _ in 0..fan_in * fan_out {
                params.push(rng.uniform_symmetric(limit));
            }
            params.extend(std::iter::repeat_n(0.0, fan_out));
        }
        Mlp { sizes, params }
    }

    /// Inputs per sample.
    pub fn input_dim(&self) -> usize {
        self.sizes[0]
    }

    /// The output logit for one input row; `acts` is scratch space from
    /// [`Workspace`] and afterwards holds every layer's activations.
    pub fn forward(&self, x: &[f64], acts: &mut [f64]) -> f64 {
        let n0 = self.sizes[0];
        acts[..n0].copy_from_slice(x);
        let (mut p_off, mut a_in) = (0, 0);
        let layers = self.sizes.len() - 1;
        for l in 0..layers {
            let (nin, nout) = (self.sizes[l], self.sizes[l + 1]);
            let a_out = a_in + nin;
            let (w, rest) = self.params[p_off..].split_at(nin * nout);
            let b = &rest[..nout];
            let (prev, next) = acts.split_at_mut(a_out);
            let input = &prev[a_in..];
            for j in 0..nout {
                let row = &w[j * nin..(j + 1) * nin];
                let mut s = b[j];
                for (wi, xi) in row.iter().zip(input) {
                    s += wi * xi;
                }
                // ReLU on hidden layers; the output stays a logit.
                next[j] = if l + 1 < layers { s.max(0.0) } else { s };
            }
            p_off += nin * nout + nout;
            a_in = a_out;
        }
        acts[a_in]
    }

    /// Add the gradient of the loss for one sample to `grad`, given the
    /// activations left by [`Mlp::forward`] and `dz = dLoss/dlogit`.
    fn backward(&self, acts: &[f64], dz: f64, deltas: &mut [f64], grad: &mut [f64]) {
        let layers = self.sizes.len() - 1;
        // Walk the layers backwards, tracking where each one's activations
        // and parameters end.
        let total_acts: usize = self.sizes.iter().sum();
        let mut a_end = total_acts;
        let mut p_end = self.params.len();
        // deltas holds the delta of the current layer's outputs at [..nout].
        deltas[0] = dz;
        for l in (0..layers).rev() {
            let (nin, nout) = (self.sizes[l], self.sizes[l + 1]);
            let a_out_start = a_end - nout;
            let a_in_start = a_out_start - nin;
            let p_start = p_end - (nin * nout + nout);
            let input = &acts[a_in_start..a_out_start];
            let (gw, gb) = grad[p_start..p_end].split_at_mut(nin * nout);
            let (cur, nxt) = deltas.split_at_mut(nout);
            for j in 0..nout {
                let d = cur[j];
                gb[j] += d;
                let grow = &mut gw[j * nin..(j + 1) * nin];
                for (g, xi) in grow.iter_mut().zip(input) {
                    *g += d * xi;
                }
            }
            if l > 0 {
                // Delta of the previous (ReLU) layer, into nxt, then moved to
                // the front for the next iteration.
                let w = &self.params[p_start..p_start + nin * nout];
                let prev = &mut nxt[..nin];
                prev.iter_mut().for_each(|v| *v = 0.0);
                for j in 0..nout {
                    let d = cur[j];
                    let row = &w[j * nin..(j + 1) * nin];
                    for (p, wi) in prev.iter_mut().zip(row) {
                        *p += wi * d;
                    }
                }
                for (p, a) in prev.iter_mut().zip(input) {
                    if *a <= 0.0 {
                        *p = 0.0;
                    }
                }
                deltas.copy_within(nout..nout + nin, 0);
            }
            a_end = a_out_start;
            p_end = p_start;
        }
    }
}

/// Scratch buffers sized once per network so the training loop never
/// allocates per sample.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Activations of every layer for one sample.
    pub acts: Vec<f64>,
    deltas: Vec<f64>,
    grad: Vec<f64>,
}

impl Workspace {
    /// Buffers for `net`.
    pub fn new(net: &Mlp) -> Workspace {
        let widest = net.sizes.iter().copied().max().unwrap_or(1);
        Workspace {
            acts: vec![0.0; net.sizes.iter().sum()],
            deltas: vec![0.0; 2 * widest],
            grad: vec![0.0; net.params.len()],
        }
    }
}

/// Adam's moments and step count: part of the resumable training state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamState {
    /// First moment estimates, one per parameter.
    pub m: Vec<f64>,
    /// Second moment estimates, one per parameter.
    pub v: Vec<f64>,
    /// Updates applied so far.
    pub step: u64,
    /// `beta1^step`, kept as a running product (reproducible without `powi`).
    pub beta1_pow: f64,
    /// `beta2^step`.
    pub beta2_pow: f64,
}

/// Adam's first-moment decay.
pub const BETA1: f64 = 0.9;
/// Adam's second-moment decay.
pub const BETA2: f64 = 0.999;
/// Adam's denominator guard.
pub const EPS: f64 = 1e-8;

impl AdamState {
    /// Zero moments for `n` parameters.
    pub fn new(n: usize) -> AdamState {
        AdamState {
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            beta1_pow: 1.0,
            beta2_pow: 1.0,
        }
    }
}

/// Sums over one mini-batch, before averaging.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum of the per-sample losses.
    pub loss_sum: f64,
    /// Samples classified correctly (logit > 0 predicts up).
    pub correct: u64,
}

/// One Adam step on the mean loss of the samples `rows` of `(x, y)`.
pub fn train_batch(
    net: &mut Mlp,
    adam: &mut AdamState,
    ws: &mut Workspace,
    samples: &super::features::Samples,
    rows: &[usize],
    lr: f64,
) -> BatchStats {
    ws.grad.iter_mut().for_each(|g| *g = 0.0);
    let mut stats = BatchStats::default();
    for &i in rows {
        let y = samples.y[i];
        let z = net.forward(samples.row(i), &mut ws.acts);
        stats.loss_sum += bce_with_logit(z, y);
        stats.correct += u64::from((z > 0.0) == (y > 0.5));
        net.backward(&ws.acts, sigmoid(z) - y, &mut ws.deltas, &mut ws.grad);
    }
    let scale = 1.0 / rows.len().max(1) as f64;
    adam.step += 1;
    adam.beta1_pow *= BETA1;
    adam.beta2_pow *= BETA2;
    let (c1, c2) = (1.0 - adam.beta1_pow, 1.0 - adam.beta2_pow);
    for (k, p) in net.params.iter_mut().enumerate() {
        let g = ws.grad[k] * scale;
        let m = BETA1 * adam.m[k] + (1.0 - BETA1) * g;
        let v = BETA2 * adam.v[k] + (1.0 - BETA2) * g * g;
        adam.m[k] = m;
        adam.v[k] = v;
        *p -= lr * (m / c1) / ((v / c2).sqrt() + EPS);
    }
    stats
}

/// Mean loss and accuracy of `net` over all of `samples` (forward only).
/// `None` for an empty set.
pub fn evaluate(
    net: &Mlp,
    ws: &mut Workspace,
    samples: &super::features::Samples,
) -> Option<(f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut stats = BatchStats::default();
    for i in 0..samples.len() {
        let y = samples.y[i];
        let z = net.forward(samples.row(i), &mut ws.acts);
        stats.loss_sum += bce_with_logit(z, y);
        stats.correct += u64::from((z > 0.0) == (y > 0.5));
    }
    let n = samples.len() as f64;
    Some((stats.loss_sum / n, stats.correct as f64 / n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::features::Samples;

    fn loss_of(net: &Mlp, x: &[f64], y: f64) -> f64 {
        let mut acts = vec![0.0; net.sizes.iter().sum()];
        bce_with_logit(net.forward(x, &mut acts), y)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(3);
        let net = Mlp::new(vec![3, 5, 4, 1], &mut rng);
        let x = [0.3, -1.2, 0.8];
        let y = 1.0;
        let mut ws = Workspace::new(&net);
        let z = net.forward(&x, &mut ws.acts);
        net.backward(&ws.acts, sigmoid(z) - y, &mut ws.deltas, &mut ws.grad);
        let h = 1e-6;
        for k in 0..net.params.len() {
            let mut plus = net.clone();
            plus.params[k] += h;
            let mut minus = net.clone();
            minus.params[k] -= h;
            let num = (loss_of(&plus, &x, y) - loss_of(&minus, &x, y)) / (2.0 * h);
            assert!(
                (num - ws.grad[k]).abs() < 1e-6,
                "param {k}: numeric {num} vs analytic {}",
                ws.grad[k]
            );
        }
    }

    #[test]
    fn loss_helpers_are_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-1000.0) >= 0.0 && sigmoid(1000.0) <= 1.0);
        assert!(bce_with_logit(1000.0, 0.0).is_finite());
        assert!((bce_with_logit(0.0, 1.0) - 2f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn adam_fits_a_separable_problem() {
        let mut rng = SplitMix64::new(9);
        let mut net = Mlp::new(vec![2, 8, 1], &mut rng);
        let mut s = Samples {
            dim: 2,
            ..Samples::default()
        };
        for _ in 0..200 {
            let (a, b) = (rng.uniform_symmetric(1.0), rng.uniform_symmetric(1.0));
            s.x.extend([a, b]);
            s.y.push(if a + b > 0.0 { 1.0 } else { 0.0 });
            s.bar_index.push(0);
        }
        let mut adam = AdamState::new(net.params.len());
        let mut ws = Workspace::new(&net);
        let rows: Vec<usize> = (0..200).collect();
        let before = evaluate(&net, &mut ws, &s).unwrap().0;
        for _ in 0..300 {
            train_batch(&mut net, &mut adam, &mut ws, &s, &rows, 0.01);
        }
        let (after, acc) = evaluate(&net, &mut ws, &s).unwrap();
        assert!(after < before * 0.5, "{before} -> {after}");
        assert!(acc > 0.95, "accuracy {acc}");
    }
}
