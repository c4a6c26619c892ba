//! Black-box tests live in `tests/`; this library holds shared helpers.
