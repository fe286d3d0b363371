//! The sink's API is host-only by type: a device buffer does not compile, a host `Vec` does.

#[test]
fn device_buffers_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
    t.pass("tests/compile_pass/*.rs");
}
