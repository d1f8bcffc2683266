#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocipush_fuzz::storage_inspect(data));
