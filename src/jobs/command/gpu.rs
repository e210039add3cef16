//! GPU utilization sampling for `progress_context.gpu_usage`: `nvidia-smi`
//! on a side thread every few seconds, so a slow driver call never delays
//! the job loop. No `nvidia-smi` is a normal case: sampling just stops.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running sampler; dropping it stops the thread.
pub struct Sampler {
    latest: Arc<Mutex<Option<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    /// Sample `gpus` (ids as in `CUDA_VISIBLE_DEVICES`) with `nvidia_smi`
    /// every `every`. None when the thread cannot start.
    pub fn start(nvidia_smi: String, gpus: Vec<String>, every: Duration) -> Option<Sampler> {
        let latest = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (latest.clone(), stop.clone());
        std::thread::Builder::new()
            .name("opsd-gpu-sampler".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    match sample(&nvidia_smi, &gpus) {
                        Ok(v) => {
                            if let Ok(mut g) = l.lock() {
                                *g = Some(v);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            tracing::debug!("{nvidia_smi} not found; no GPU usage sampling");
                            return;
                        }
                        Err(e) => tracing::debug!("sampling GPUs with {nvidia_smi} failed: {e}"),
                    }
                    let until = Instant::now() + every;
                    while Instant::now() < until && !s.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .ok()?;
        Some(Sampler { latest, stop })
    }

    /// The newest sample not yet taken.
    pub fn take(&self) -> Option<Value> {
        self.latest.lock().ok()?.take()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn sample(nvidia_smi: &str, gpus: &[String]) -> std::io::Result<Value> {
    let out = std::process::Command::new(nvidia_smi)
        .args([
            "--query-gpu=index,utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("exited with {}", out.status)));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout), gpus))
}

/// The rows of `nvidia-smi` CSV output for the given GPU indices.
pub fn parse(csv: &str, gpus: &[String]) -> Value {
    let num = |s: &str| -> Value {
        s.trim()
            .parse::<f64>()
            .map(|v| json!(v))
            .unwrap_or(Value::Null)
    };
    let rows = csv
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 4 || !gpus.iter().any(|g| g == f[0]) {
                return None;
            }
            Some(json!({
                "gpu": f[0],
                "utilization_percent": num(f[1]),
                "memory_used_mib": num(f[2]),
                "memory_total_mib": num(f[3]),
            }))
        })
        .collect();
    Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_our_gpus() {
        let v = parse("0, 35, 1024, 81559\n1, 99, 80000, 81559\n", &["1".into()]);
        assert_eq!(
            v,
            json!([{ "gpu": "1", "utilization_percent": 99.0, "memory_used_mib": 80000.0, "memory_total_mib": 81559.0 }])
        );
        assert_eq!(
            parse("0, [N/A], 1, 2\n", &["0".into()])[0]["utilization_percent"],
            Value::Null
        );
    }
}
