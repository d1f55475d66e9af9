//! Build script shared by every crate that links libtorch: it records where
//! libtorch lives in the binary's rpath, so `atelier` and the test binaries run
//! without LD_LIBRARY_PATH. `$ORIGIN/../lib` serves relocated installs (the
//! container image puts the torch libraries there).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
}
