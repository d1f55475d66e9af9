//! Build script shared by every crate that links libtorch: it records where
//! libtorch lives in the binary's rpath, so `atelier` and the test binaries run
//! without LD_LIBRARY_PATH. `$ORIGIN/../lib` serves relocated installs (the
//! container image puts the torch libraries there).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Nothing references libtorch_cuda's symbols directly (its kernels
        // register themselves when it loads), so `--as-needed` would drop it
        // and CUDA would be invisible at run time.
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
}
