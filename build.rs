//! Two things the `opsd` binary needs from the build:
//!
//! - `opsd-exec` (src/jobs/command/exec_helper.c), the tiny program
//!   through which `command` jobs start without forking the daemon; the
//!   daemon embeds it. On x86-64 and aarch64 Linux it is built without any
//!   C library (`OPSD_EXEC_NOLIBC`: its own `_start`, raw system calls),
//!   which makes its start 0.3 ms instead of 0.9 ms for a static libc build
//!   (BENCHMARKS.md §17); else statically linked when the C library allows,
//!   else dynamically. Without a working C compiler the file is left empty
//!   and the daemon forks as before.
//! - How the binary is linked. Every CLI call is a fresh process, and a
//!   position-independent executable spends much of its start relocating
//!   itself before `main` (measured: `opsd --version` 1.3-1.7 ms of CPU
//!   as PIE against 0.9-1.1 ms linked `-no-pie`; BENCHMARKS.md §15). So
//!   on Linux the `opsd` binary is a fixed-address executable. The price is
//!   that its own code is not address-randomised (shared libraries, heap
//!   and stack still are); full RELRO (`-z now`) is kept. Deleting the
//!   line below restores a PIE. Tests and benches link as usual.

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
    let src = "src/jobs/command/exec_helper.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("opsd-exec");
    let compiler = cc::Build::new()
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let nolibc: &[&str] = &[
        "-DOPSD_EXEC_NOLIBC",
        "-static",
        "-nostdlib",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
    ];
    let mut attempts: Vec<&[&str]> = Vec::new();
    // 64-bit pointers only: x32 and aarch64 ILP32 report the same arch
    // but have other system-call numbers and 4-byte pointers.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && (arch == "x86_64" || arch == "aarch64")
        && std::env::var("CARGO_CFG_TARGET_POINTER_WIDTH").as_deref() == Ok("64")
    {
        attempts.push(nolibc);
    }
    attempts.extend([&["-static"][..], &[][..]]);
    let built = attempts.iter().any(|extra| {
        let mut cmd = compiler.to_command();
        cmd.args(*extra).arg("-s").arg("-o").arg(&out).arg(src);
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    });
    if !built {
        println!("cargo:warning=could not compile {src}: command jobs will fork the daemon");
        std::fs::write(&out, b"").expect("write OUT_DIR/opsd-exec");
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
