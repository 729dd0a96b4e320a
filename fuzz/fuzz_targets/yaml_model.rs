//! Arbitrary text through the control plane's YAML loader and its one validator: refused with
//! an error or accepted, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_model::{Model, loader};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(objects) = loader::parse(text, "fuzz.yaml") {
        let _ = Model::build(&objects);
    }
});
