//! How the two binaries are linked. Every CLI call is a fresh process,
//! so what a start costs before `main` is paid by every `opsd submit`:
//!
//! - A position-independent executable spends much of its start
//!   relocating itself (measured: `opsd --version` 1.3-1.7 ms of CPU as
//!   PIE against 0.9-1.1 ms linked `-no-pie`; BENCHMARKS.md §15). So on
//!   Linux both binaries are fixed-address executables. The price is that
//!   their own code is not address-randomised (shared libraries, heap and
//!   stack still are); full RELRO (`-z now`) is kept. Deleting those lines
//!   restores a PIE.
//! - Each shared library costs ~0.16 ms of every start (BENCHMARKS.md
//!   §20). Rust's std asks for `-lgcc_s` (the unwinder); a directory whose
//!   `libgcc_s.a` is the C compiler's static unwinder (`libgcc_eh.a`, what
//!   `gcc -static-libgcc` links) comes first in the search, so no
//!   `libgcc_s.so.1` is loaded. Without that file the link is as usual.
//!
//! Tests and benches link as usual.

use std::path::PathBuf;

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=opsd=-no-pie");
        println!("cargo:rustc-link-arg-bin=opsd-full=-no-pie");
        if let Some(dir) = static_libgcc() {
            println!("cargo:rustc-link-arg-bin=opsd=-L{}", dir.display());
            println!("cargo:rustc-link-arg-bin=opsd-full=-L{}", dir.display());
        }
    }
}

/// A directory whose `libgcc_s.a` is the C compiler's static unwinder
/// (`libgcc_eh.a`), so that the `-lgcc_s` Rust's std asks for links it
/// statically instead of loading `libgcc_s.so.1` at every start.
fn static_libgcc() -> Option<PathBuf> {
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let out = compiler
        .to_command()
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let eh = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    if !eh.is_absolute() || !eh.exists() {
        return None;
    }
    let dir = PathBuf::from(std::env::var_os("OUT_DIR")?).join("static-libgcc");
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::copy(&eh, dir.join("libgcc_s.a")).ok()?;
    Some(dir)
}
