//! Static constructors (the `inventory` registrations of burn's CubeCL
//! IR) run once, when `worker/worker.js` calls `__wasm_call_ctors` after
//! instantiating the module. Without the export, wasm-ld treats the module
//! as a "command" and wraps every export to run all constructors first: a
//! few hundred microseconds on every call from JS into the wasm (each
//! object handed in allocates through an export), which made the tab's
//! shard exchange 100× slower than its memory copies.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=--export-if-defined=__wasm_call_ctors");
    }
}
