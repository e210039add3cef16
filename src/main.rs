//! The `opsd` binary: the quick subcommands in a small program of their
//! own, everything else handed to `opsd-full` (see `cli::light`).

fn main() -> std::process::ExitCode {
    opsd::cli::light::main()
}

/// `pow` for this binary alone, from the `libm` crate (a port of musl's):
/// the only function of the C maths library the quick commands use (the
/// progress bars' rate estimate), and loading `libm.so.6` for it is about
/// 0.15 ms of every call's start. Defined here, the link needs no libm;
/// `opsd-full`, whose engines use several, keeps the system's.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
