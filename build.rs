//! Build script of the napi binding: sets the linker flags napi-rs needs for a Node addon, and
//! links the addon with `-z nodelete` on Linux: it installs a process-wide SIGSEGV/SIGBUS
//! handler that lives in its code, so it must never be unloaded.
fn main() {
    napi_build::setup();
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
