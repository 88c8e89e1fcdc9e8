#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() <= ferry_formats::fuzz::MAX_INPUT {
        ferry_formats::fuzz::manifest_entries(data);
    }
});
