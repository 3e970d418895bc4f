//! With the `cuda` feature, compile src/kernels/ops.cu (which includes each kernel family's
//! .cu file) to PTX, loaded at run time by src/kernels/cuda.rs, as candle-kernels does: nvcc
//! from CUDA_ROOT/CUDA_PATH or PATH, for the compute capability in CUDA_COMPUTE_CAP (or the local GPU's, or 8.0).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Every family's .cu and the headers they share: ops.cu includes them.
    println!("cargo::rerun-if-changed=src/kernels");
    for entry in std::fs::read_dir("src/kernels").expect("src/kernels") {
        let path = entry.expect("src/kernels").path();
        if path.extension().is_some_and(|e| e == "cu" || e == "cuh") {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .or_else(local_compute_cap)
        .unwrap_or_else(|| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("ops.ptx");
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=compute_{cap}"),
            "-o",
        ])
        .arg(&out)
        .arg("src/kernels/ops.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (set CUDA_ROOT to a CUDA toolkit)",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on src/kernels/ops.cu");
}

fn local_compute_cap() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .next()
        .map(|l| l.trim().replace('.', ""))
}
