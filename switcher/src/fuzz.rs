//! What the agent-request fuzz target in `fuzz/` does with its input (here,
//! so `cargo test` replays the committed corpus through the same code).

use crate::host::serve::Request;

/// Reads each line as the agent reads a request: what reads, written back,
/// reads again to the same request.
pub fn agent_request(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        let Ok(text) = std::str::from_utf8(line) else { continue };
        if let Ok(request) = serde_json::from_str::<Request>(text) {
            let written = serde_json::to_string(&request).expect("a request serializes");
            let back: Request = serde_json::from_str(&written).expect("a request written back reads");
            assert_eq!(
                serde_json::to_value(&back).expect("a request serializes"),
                serde_json::to_value(&request).expect("a request serializes"),
                "a request written back reads the same"
            );
        }
    }
}
