//! Fuzzes the Kubefile parser and variable expansion: no input may panic,
//! and every error must name the file and a line inside the input.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use seaport_rootfs::kubefile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match kubefile::parse("Kubefile", text) {
        Ok(instructions) => {
            let mut vars = BTreeMap::new();
            vars.insert("ARCH".to_string(), "amd64".to_string());
            for ins in &instructions {
                assert!(ins.line >= 1);
                let _ = kubefile::expand(&ins.original, &vars);
            }
        }
        Err(e) => {
            assert_eq!(e.file, "Kubefile");
            assert!(e.line >= 1 && e.line <= text.lines().count().max(1), "{e}");
        }
    }
});
