//! Two things the `opsd` binary needs from the build:
//!
//! - `opsd-exec` (src/jobs/command/exec_helper.c), the tiny program
//!   through which `command` jobs start without forking the daemon; the
//!   daemon embeds it. Statically linked when the C library allows (no
//!   dynamic loader at each start), else dynamically. Without a working C
//!   compiler the file is left empty and the daemon forks as before.
//! - How the binary is linked. Every CLI call is a fresh process, and a
//!   position-independent executable with eager binding spends most of its
//!   start resolving symbols and relocating pages before `main` (measured:
//!   `opsd --version` 1.7 ms of CPU against 1.0 ms linked this way; see
//!   BENCHMARKS.md). So on Linux the binary is linked as a fixed-address
//!   executable (`-no-pie`: shared libraries, heap and stack are still
//!   randomised) with lazy binding. Only the `opsd` binary; tests and
//!   benches link as usual.

use std::path::PathBuf;

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=opsd=-no-pie");
        println!("cargo:rustc-link-arg-bin=opsd=-Wl,-z,lazy");
    }
    let src = "src/jobs/command/exec_helper.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("opsd-exec");
    let compiler = cc::Build::new()
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let built = [&["-static"][..], &[][..]].iter().any(|extra| {
        let mut cmd = compiler.to_command();
        cmd.args(*extra).arg("-s").arg("-o").arg(&out).arg(src);
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    });
    if !built {
        println!("cargo:warning=could not compile {src}: command jobs will fork the daemon");
        std::fs::write(&out, b"").expect("write OUT_DIR/opsd-exec");
    }
}
