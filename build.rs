//! Build script of the napi binding: sets the linker flags napi-rs needs for a Node addon.
fn main() {
    napi_build::setup();
}
