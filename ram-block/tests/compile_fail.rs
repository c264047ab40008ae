//! The borrow checker, not a comment, keeps guest memory references inside their read
//! sections (invariant 3): each program under `tests/ui/` must fail to compile with the
//! recorded error.

#![cfg(not(miri))]

#[test]
fn references_cannot_outlive_their_read_section() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
