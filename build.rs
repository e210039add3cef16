//! Builds `opsd-exec` (src/jobs/command/exec_helper.c), the tiny program
//! through which `command` jobs start without forking the daemon; the
//! daemon embeds it. Statically linked when the C library allows (no
//! dynamic loader at each start), else dynamically. Without a working C
//! compiler the file is left empty and the daemon forks as before.

use std::path::PathBuf;

fn main() {
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
