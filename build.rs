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
//! - The light `opsd` (the quick commands, `cli::light`) is linked fully
//!   statically against glibc where the C library's static archives are
//!   installed (Debian's `libc6-dev`, which the C compiler needs anyway):
//!   no dynamic loader, no relocation, ~0.4 ms less CPU per call
//!   (BENCHMARKS.md §21). rustc's `+crt-static` cannot be given to one
//!   binary (Cargo would apply it to proc-macros too), so the link is
//!   made static from outside: `-static` for the C compiler driver (static
//!   start files, no interpreter), and a directory searched first whose
//!   `libc.so`, `libm.so`, ... are linker scripts naming the static
//!   archives, so the `-lc` rustc passes under `-Bdynamic` links
//!   `libc.a`. That is safe for this binary only: a static glibc still
//!   `dlopen`s the NSS modules of `/etc/nsswitch.conf` for user, group and
//!   host lookups, which can bring a second C library into the process
//!   (a daemon crashed that way, BENCHMARKS.md §19), and the quick commands make none
//!   (they speak to a Unix socket named by a flag or an environment
//!   variable). `opsd-full`, which does (`socket_group`, PostgreSQL host
//!   names), stays dynamic. Without the archives the link is as usual,
//!   and `OPSD_LIGHT_STATIC` tells the tests which it was.
//!
//! Tests and benches link as usual.

use std::path::{Path, PathBuf};

/// The C libraries rustc's std links on Linux with glibc (`-lc` and the
/// ones glibc 2.34 folded into it, which remain as empty archives).
const C_LIBRARIES: &[&str] = &["c", "m", "rt", "util", "pthread", "dl"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    println!("cargo:rustc-link-arg-bin=opsd=-no-pie");
    println!("cargo:rustc-link-arg-bin=opsd-full=-no-pie");
    let Some(eh) = compiler_file("libgcc_eh.a") else {
        return;
    };
    if let Some(dir) = search_dir("static-libgcc", &eh, &[]) {
        println!("cargo:rustc-link-arg-bin=opsd-full=-L{}", dir.display());
    }
    let archives = if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        C_LIBRARIES
            .iter()
            .map(|name| compiler_file(&format!("lib{name}.a")).map(|a| (*name, a)))
            .collect::<Option<Vec<_>>>()
    } else {
        None
    };
    match archives.and_then(|a| search_dir("static-libc", &eh, &a)) {
        Some(dir) => {
            println!("cargo:rustc-link-arg-bin=opsd=-L{}", dir.display());
            println!("cargo:rustc-link-arg-bin=opsd=-static");
            println!("cargo:rustc-env=OPSD_LIGHT_STATIC=1");
        }
        None => {
            if let Some(dir) = search_dir("static-libgcc", &eh, &[]) {
                println!("cargo:rustc-link-arg-bin=opsd=-L{}", dir.display());
            }
        }
    }
}

/// The absolute path of a file the C compiler links from its own
/// directories (`cc -print-file-name`), when it is installed.
fn compiler_file(name: &str) -> Option<PathBuf> {
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let out = compiler
        .to_command()
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (path.is_absolute() && path.exists()).then_some(path)
}

/// A directory under `OUT_DIR` for the linker to search first: its
/// `libgcc_s.a` is the static unwinder `eh`, so the `-lgcc_s` Rust's std
/// asks for links statically instead of loading `libgcc_s.so.1` at every
/// start; and for each `(name, archive)`, `lib<name>.so` is a linker
/// script naming that static archive.
fn search_dir(name: &str, eh: &Path, archives: &[(&str, PathBuf)]) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("OUT_DIR")?).join(name);
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::copy(eh, dir.join("libgcc_s.a")).ok()?;
    for (lib, archive) in archives {
        let script = format!("GROUP ( \"{}\" )\n", archive.display());
        std::fs::write(dir.join(format!("lib{lib}.so")), script).ok()?;
    }
    Some(dir)
}
