//! Each file in `tests/ui/` makes one mistake with the macros; its `.stderr` is the
//! error a user sees. Regenerate with `TRYBUILD=overwrite cargo test -p ui-tests` and
//! review the diff like code.

#[test]
fn macro_misuse_is_a_spanned_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
