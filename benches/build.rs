//! Compiles the liburcu shims in `csrc/` and links the liburcu flavours they use.

const SHIMS: [&str; 3] = ["csrc/urcu_memb.c", "csrc/urcu_qsbr.c", "csrc/urcu_mb.c"];
const LIBS: [&str; 4] = ["urcu-memb", "urcu-qsbr", "urcu-mb", "urcu-common"];

fn main() {
    for shim in SHIMS {
        println!("cargo:rerun-if-changed={shim}");
        // Preprocess first so that a missing liburcu gets a clear message rather
        // than a compiler error about an unknown header.
        if let Err(err) = cc::Build::new()
            .file(shim)
            .cargo_metadata(false)
            .try_expand()
        {
            panic!(
                "liburcu-dev is required for the peer benchmarks: apt-get install liburcu-dev\n({err})"
            );
        }
    }
    cc::Build::new()
        .files(SHIMS)
        .warnings(true)
        // Only ever linked into executables: compile as a C program is, so that
        // liburcu's thread-local reader state is reached directly, not via the GOT
        // (with cc's default -fPIC, liburcu's read side is ~1 ns slower).
        .flag("-fPIE")
        .compile("urcu_shims");
    for lib in LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
